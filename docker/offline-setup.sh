#!/usr/bin/env bash
# For a Docker host that cannot pull images (no registry access): the one step before building ECG-FAT's
# images there. Run it from the repository root, once per host (again after a new torch wheel):
#
#   bash docker/offline-setup.sh LOCAL_IMAGE WHEEL_DIR
#
# LOCAL_IMAGE  a Debian bookworm image the engine already holds (`docker load`ed, or built locally)
# WHEEL_DIR    a directory holding torch's CPU wheel for Python 3.11 (torch-*+cpu-cp311-*.whl)
#
# It builds the base image ecg-fat-base:offline (Debian's Python 3.11 on LOCAL_IMAGE; its apt and pip still
# need their package registries), copies the newest wheel to docker/wheels/ (build context only: the
# Dockerfile installs it in a build stage, so it never stays in an image), and sets BASE_IMAGE,
# SERVER_TORCH_PIP_ARGS and CLIENT_TORCH_PIP_ARGS in the .env of every compose project (./.env,
# docker/server/.env, docker/site/.env, each made from its .env.example when missing). Other settings in
# those files are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 2 ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
local_image=$1 wheels=$2
if ! docker image inspect "$local_image" >/dev/null 2>&1; then
  echo "offline-setup: the Docker engine has no image $local_image (load or build a Debian bookworm image first)" >&2
  exit 1
fi
wheel=$(ls "$wheels"/torch-*+cpu-cp311-*.whl 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$wheel" ]; then
  echo "offline-setup: no torch CPU wheel for Python 3.11 (torch-*+cpu-cp311-*.whl) in $wheels" >&2
  exit 1
fi

docker build --quiet --tag ecg-fat-base:offline --build-arg "LOCAL_BASE=$local_image" \
  --file docker/standin.Dockerfile docker >/dev/null
rm -f docker/wheels/torch-*.whl
cp "$wheel" docker/wheels/
version=$(basename "$wheel" | cut -d- -f2)  # e.g. 2.13.0+cpu

set_setting() {  # set_setting FILE KEY VALUE: replace the KEY= line, or add one
  if grep -q "^$2=" "$1"; then sed -i "s|^$2=.*|$2=$3|" "$1"; else printf '%s=%s\n' "$2" "$3" >>"$1"; fi
}

for project in . docker/server docker/site; do
  env_file=$project/.env
  [ -f "$env_file" ] || cp "$project/.env.example" "$env_file"
  set_setting "$env_file" BASE_IMAGE ecg-fat-base:offline
  set_setting "$env_file" SERVER_TORCH_PIP_ARGS "\"torch==$version\""
  set_setting "$env_file" CLIENT_TORCH_PIP_ARGS "\"torch==$version\""
  echo "offline-setup: $env_file builds on ecg-fat-base:offline with torch $version from docker/wheels/"
done
