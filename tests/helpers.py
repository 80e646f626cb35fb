"""Helpers shared by test modules (imported explicitly; conftest.py keeps only fixtures)."""

from __future__ import annotations

import os
from pathlib import Path

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
    """The part of Flower's Grid a strategy uses before a round: the connected nodes' ids, and their answers
    to the partition-id query (`partitions`: node id -> partition id, a node left out has none; a node in
    `failing` answers with an error). It keeps the timeout each query was sent with."""

    def __init__(
        self, nodes: list[int], partitions: dict[int, object] | None = None, failing: set[int] | None = None
    ) -> None:
        self.nodes, self.partitions, self.failing = nodes, partitions or {}, failing or set()
        self.timeouts: list[float] = []

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def send_and_receive(self, messages: list, timeout: float) -> list:
        from flwr.app import Error, Message, MetricRecord, RecordDict

        self.timeouts.append(timeout)

        def answer(node: int) -> MetricRecord:
            return MetricRecord({"partition-id": self.partitions[node]} if node in self.partitions else {})

        return [
            Message(Error(code=0, reason="ClientApp failed"), reply_to=m)
            if m.metadata.dst_node_id in self.failing
            else Message(RecordDict({"partition": answer(m.metadata.dst_node_id)}), reply_to=m)
            for m in messages
        ]


class WritesAFileWhenUnpickled:
    """Pickled into a file that should hold only data: unpickling it creates `path`, so a test can tell."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))
