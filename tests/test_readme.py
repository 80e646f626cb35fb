"""The README, executed: every marked command block runs exactly as written.

Each flow runs in one shell (a user's terminal, with no virtual environment active and no ECG_FAT_* variable)
from the root of a fresh copy of the repository (its tracked and not-ignored files) with ../shared beside it,
as CI has it. A README change that breaks a command fails here. The `tests` flow is the one `.ci/run` runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.config import CONDITIONS
from tests.helpers import docker_engine, key_files_in_image
from tests.readme_blocks import flows, script

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def test_every_marked_flow_is_run_here_or_by_ci() -> None:
    assert set(flows()) == {"local", "offline", "docker", "docker-down", "hospitals", "hospitals-down", "tests"}
    assert "pytest" in script("tests")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "tests/readme_blocks.py tests" in ci  # CI runs the README's test command itself


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (SHARED / "data" / "mitdb" / "100.hea").is_file():
        pytest.skip(f"the README's commands read MIT-BIH from ../shared/data/mitdb, not found at {SHARED}")
    base = tmp_path_factory.mktemp("readme")
    copy = base / "ecg-fat"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():  # a tracked file deleted in the working tree is not there
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    (base / "shared").symlink_to(SHARED)
    return copy


def user_environment() -> dict[str, str]:
    """This process's environment without its virtual environment or any ECG-FAT setting."""
    venv_bin = str(Path(sys.prefix) / "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("ECG_FAT_")} | {"PATH": path}


def run_flow(flow: str, checkout: Path, timeout: float) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script(flow)], cwd=checkout, env=user_environment(),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"README flow {flow!r} failed ({done.returncode}):\n{output[-6000:]}"
    return output


def metric_rounds(results: Path) -> list[tuple[int, str]]:
    rows = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
    return [(row["round"], row["condition"]) for row in rows]


def test_without_docker(checkout: Path) -> None:
    """Install into a new virtual environment and run the small federation with the default --workdir."""
    run_flow("local", checkout, timeout=1800)
    results = checkout / "results" / "small"
    assert metric_rounds(results) == [(r, c) for r in (0, 1, 2) for c in CONDITIONS]
    assert (results / "final_model.pt").is_file() and (results / "report" / "report.md").is_file()
    assert (checkout / ".ecg-fat" / "certs" / "ca.crt").is_file()  # the default workdir, in the repository root
    rows = (results / "100.csv").read_text().splitlines()  # the model applied to record 100
    assert rows[0].startswith("record,sample,time_s,predicted") and len(rows) == 1 + 2271
    assert all((results / "export" / name).is_file() for name in ("model.pt2", "weights.pt", "settings.json"))
    assert "<table>" in (results / "page" / "report.html").read_text()


@pytest.fixture(scope="module")
def offline(checkout: Path) -> Iterator[object]:
    """The README's one step for a host without registry access (this project's machines)."""
    client = docker_engine()
    run_flow("offline", checkout, timeout=600)
    yield client


def test_docker_small_run(checkout: Path, offline: object) -> None:
    try:
        run_flow("docker", checkout, timeout=1800)
        results = checkout / "results" / "small-docker"
        assert metric_rounds(results) == [(r, c) for r in (0, 1, 2) for c in CONDITIONS]
        assert "round 2" in (results / "summary.txt").read_text()
        assert (results / "report" / "figure_cw.png").is_file()
    finally:
        run_flow("docker-down", checkout, timeout=600)
    for image in ("ecg-fat-server:latest", "ecg-fat-client:latest"):
        assert key_files_in_image(offline, image) == "", f"{image} holds keys"


def test_hospitals_on_one_host(checkout: Path, offline: object) -> None:
    """The server compose and two site composes, each site with its own name, key and records."""
    try:
        output = run_flow("hospitals", checkout, timeout=1800)
        results = checkout / "docker" / "server" / "results" / "two-sites"
        assert metric_rounds(results) == [(r, c) for r in (0, 1, 2) for c in CONDITIONS]
        clients = [json.loads(line) for line in (results / "clients.jsonl").read_text().splitlines()]
        assert len({row["node_id"] for row in clients}) == 2 and all(row["status"] == "ok" for row in clients)
        projects = offline.containers.list(all=True, filters={"label": "com.docker.compose.service=supernode"})
        assert {c.labels["com.docker.compose.project"] for c in projects} >= {
            "ecg-fat-site-hospital-a",
            "ecg-fat-site-hospital-b",
        }
        assert "round 2" in output
    finally:
        run_flow("hospitals-down", checkout, timeout=600)
