# CI only: a stand-in for python:3.11-slim-bookworm, built from the local Debian base image that
# ../shared/tools/docker-engine.sh makes (no registry can be reached there). Users pull the real one.
ARG LOCAL_BASE=local/bookworm:base
FROM ${LOCAL_BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
 && rm -rf /var/lib/apt/lists/*
