"""Helpers shared by test modules (imported explicitly; conftest.py keeps only fixtures)."""

from __future__ import annotations

import os

import pytest


def docker_engine():
    """A client of the local Docker engine; skips (or, with ECG_FAT_DOCKER=1 as in CI, fails) without one."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
        return client
    except Exception as error:
        if os.environ.get("ECG_FAT_DOCKER") == "1":
            pytest.fail(f"ECG_FAT_DOCKER=1 but no Docker engine answers: {error}")
        pytest.skip(f"no Docker engine answers ({error}); CI starts one with ../shared/tools/docker-engine.sh")


KEY_NAMES = ("ca.key", "ca.crt", "server.key", "server.pem", "node-[0-9]*")


def key_files_in_image(client, image: str) -> str:
    """Every file in `image` named like a key or certificate that make_certs writes (searched as root)."""
    pattern = [part for name in KEY_NAMES for part in ("-o", "-name", name)][1:]
    found = client.containers.run(image, ["find", "/", "-xdev", "(", *pattern, ")", "-print"], user="root", remove=True)
    return found.decode().strip()


class FakeGrid:
    """The part of Flower's Grid a strategy uses to sample: the connected nodes' ids."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes
