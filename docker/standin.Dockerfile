# The base image for a host without registry access (docker/offline-setup.sh builds it as
# ecg-fat-base:offline): Debian's Python 3.11 on a Debian bookworm image the engine already holds.
# Where images can be pulled, the Dockerfile's default python:3.11-slim-bookworm is used instead.
ARG LOCAL_BASE=local/bookworm:base
FROM ${LOCAL_BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
 && rm -rf /var/lib/apt/lists/*
