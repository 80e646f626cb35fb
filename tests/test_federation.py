"""The real federation: a SuperLink and SuperNodes as separate processes on 127.0.0.1, TLS on.

Small synthetic shards and few attack steps keep each run to tens of seconds; every process is stopped
at the end of its test, and the logs stay in the test's temporary directory when it fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from certs.make_certs import make_all, node_key_path
from common.config import CONDITIONS, FederationConfig, PrepareConfig
from common.data import TEST_FILE, Beats, client_file, load_beats, prepare, save_beats
from common.metrics import evaluate
from common.model import EcgCnn, reads_rhythm
from ecg_fat.cli import main
from ecg_fat.launcher import LocalFederation, descendants
from ecg_fat.supernode import NOT_REGISTERED
from server.results import Results
from tests.conftest import write_dataset

pytestmark = pytest.mark.slow
FAST = {
    "train": {"epochs": 1, "batch_size": 32, "pgd": {"steps": 2}},
    "evaluate": {"attacks": {"pgd": {"steps": 2}, "cw": {"steps": 3}, "bim": {"steps": 2}}},
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small shards (about 130 windows each) and a test set, prepared from synthetic records."""
    records = write_dataset(tmp_path_factory.mktemp("records"), records=9, beats_per_record=60)
    data = tmp_path_factory.mktemp("data")
    prepare(records, data, PrepareConfig(clients=3))
    return data


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    make_all(tmp_path / "certs", nodes=5)
    fed = LocalFederation(tmp_path / "work", tmp_path / "certs")
    fed.start_superlink()
    yield fed
    fed.stop_all()


def run_config(shards: Path, results: Path, **overrides: object) -> dict:
    settings = {
        "num_rounds": 2,
        "num_nodes": 3,
        "nodes_per_round": 2,
        "test_path": str(shards / TEST_FILE),
        "results_dir": str(results),
        "round_timeout": 120,
        **FAST,
    }
    return FederationConfig(**settings | overrides).to_run_config()


def start_nodes(fed: LocalFederation, shards: Path, indices: range = range(3)) -> None:
    for i in indices:
        fed.control.register(node_key_path(fed.certs, i).with_suffix(".pub"))
        fed.start_supernode(f"node-{i}", shards / client_file(i), node_key_path(fed.certs, i), threads=1)
    fed.wait_online(len(indices))


def metric_rounds(results: Path) -> list[tuple[int, str]]:
    return [(row["round"], row["condition"]) for row in Results(results).read_jsonl("metrics")]


def training_now(fed: LocalFederation, name: str) -> bool:
    """Whether the SuperNode `name` has received a train message and not yet sent its reply (its log says so).

    A ClientApp process is no sign: one that has sent its reply may still be exiting on a busy machine, and
    killing its node then loses nothing."""
    log = fed.log_tail(name, 400)
    return log.rfind("Receiving: train message") > log.rfind("Sent successfully")


# ----------------------------------------------------------------------------- end to end


def test_federate_command_end_to_end(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """As a user runs it: from a directory of their own, with relative paths and the default --workdir
    (Flower's CLI runs in another directory: every path must be made absolute at the edge)."""
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    code = main(
        [
            "federate",
            "--data",
            os.path.relpath(shards, tmp_path),
            "--nodes",
            "3",
            "--rounds",
            "2",
            "--local-epochs",
            "1",
            "--max-train-windows",
            "100",
            "--max-test-windows",
            "120",
            "--pgd-steps",
            "2",
            "--cw-steps",
            "3",
            "--bim-steps",
            "2",
            "--results",
            "results",
        ]
    )
    assert code == 0
    assert metric_rounds(results) == [(r, c) for r in (0, 1, 2) for c in CONDITIONS]
    clients = Results(results).read_jsonl("clients")
    assert [(row["round"], row["status"], row["num-examples"]) for row in clients] == [
        (r, "ok", 100) for r in (1, 1, 2, 2)
    ]  # 2 of 3 nodes per round, each capped at --max-train-windows
    assert "| results (FAT, round 2) |" in (results / "report" / "report.md").read_text()
    config = json.loads((results / "config.json").read_text())
    assert config["nodes-per-round"] == 2 and config["train"]["adversarial"] is True
    assert sorted(p.name for p in (results / "checkpoints").iterdir()) == [f"round_00{r}.pt" for r in (0, 1, 2)]
    model = EcgCnn()
    model.load_state_dict(torch.load(results / "final_model.pt", weights_only=True))
    assert torch.equal(
        model.state_dict()["classifier.5.bias"], Results(results).load_checkpoint(2)["classifier.5.bias"]
    )
    cfg = FederationConfig.from_run_config(run_config(shards, results)).evaluate
    clean = evaluate(model, load_beats(shards / TEST_FILE), cfg, torch.device("cpu"))["clean"]
    assert 0.0 <= clean["accuracy"] <= 1.0
    assert (tmp_path / ".ecg-fat" / "certs" / "ca.crt").is_file()  # the default workdir, in the current directory
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / ".ecg-fat")], capture_output=True, text=True).stdout
    assert leftovers == ""  # every process it started is gone


def test_federate_with_rhythm_from_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`federate --mitdb RECORDS --rhythm`, as the inter-patient runs use it: the shards carry the RR features,
    every node trains the rhythm model it is sent, and the final model is one."""
    write_dataset(tmp_path / "records", records=6, beats_per_record=60)
    monkeypatch.chdir(tmp_path)
    nodes = ["--nodes", "2", "--nodes-per-round", "2", "--rounds", "1", "--local-epochs", "1"]
    small = ["--max-train-windows", "80", "--max-test-windows", "80", "--pgd-steps", "2", "--cw-steps", "2"]
    paths = ["--workdir", "work", "--results", "results"]
    code = main(["federate", "--mitdb", "records", "--rhythm", *nodes, *small, "--bim-steps", "2", *paths])
    assert code == 0
    assert load_beats(tmp_path / "work" / "data" / client_file(0)).x.shape[-1] == 184
    clients = Results(tmp_path / "results").read_jsonl("clients")
    assert [row["status"] for row in clients] == ["ok", "ok"]
    final = torch.load(tmp_path / "results" / "final_model.pt", weights_only=True)
    assert reads_rhythm(final)


def test_federate_with_class_weighted_head(shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`federate --class-weighted-head` through the real SuperLink: each node's class counts reach the server
    over gRPC as the integers it checks (a float would be rejected), and are recorded beside its reply."""
    monkeypatch.chdir(tmp_path)
    nodes = ["--nodes", "3", "--nodes-per-round", "3", "--rounds", "1", "--local-epochs", "1"]
    small = ["--max-test-windows", "80", "--pgd-steps", "2", "--cw-steps", "2", "--bim-steps", "2"]
    code = main(["federate", "--data", str(shards), "--class-weighted-head", *nodes, *small, "--results", "results"])
    assert code == 0
    clients = Results(tmp_path / "results").read_jsonl("clients")
    assert [row["status"] for row in clients] == ["ok"] * 3, clients
    held = {row["partition"]: [row[f"examples-{c}"] for c in "NSVFQ"] for row in clients}
    assert held == {i: np.bincount(load_beats(shards / client_file(i)).y, minlength=5).tolist() for i in range(3)}


# ----------------------------------------------------------------------------- trust and faults


def test_refused_nodes_dropout_and_rejoin(shards: Path, tmp_path: Path, federation: LocalFederation) -> None:
    fed = federation
    start_nodes(fed, shards)
    ids_before = {n: _node_id(fed, n) for n in ("node-0", "node-1", "node-2")}

    # Three intruders: no TLS, a CA the SuperLink's certificate is not from, an unregistered key.
    make_all(tmp_path / "other-ca", nodes=0)
    fed.spawn("no-tls", [*fed.supernode_command(shards / client_file(0), max_wait=20), "--insecure"])
    fed.start_supernode(
        "wrong-ca",
        shards / client_file(0),
        node_key_path(fed.certs, 3),
        root_certificates=tmp_path / "other-ca" / "ca.crt",
        max_wait=20,
    )
    fed.start_supernode("unregistered", shards / client_file(0), node_key_path(fed.certs, 4), max_wait=20)

    results = tmp_path / "results"
    run_id = fed.control.submit(run_config(shards, results, num_rounds=3))
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:  # kill a node while it trains in round 2
        if any(r == 1 for r, _ in metric_rounds(results)):
            victim = next((n for n in ids_before if training_now(fed, n)), None)
        time.sleep(0.2)
    assert victim is not None, "no node was seen training in round 2"
    fed.kill(victim)
    assert fed.control.wait_run(run_id, timeout=600) == "finished:completed"

    for intruder in ("no-tls", "wrong-ca", "unregistered"):
        assert fed.processes[intruder].wait(60) != 0, f"{intruder} was not refused:\n{fed.log_tail(intruder)}"
    refused = fed.log_tail("unregistered", 200)
    assert "key is not registered at the server yet" in refused and NOT_REGISTERED in refused, refused
    assert "could not establish a connection" not in refused  # Flower's words send IT to the network
    for intruder in ("no-tls", "wrong-ca", "unregistered"):
        fed.stop(intruder)
    assert metric_rounds(results) == [(r, c) for r in range(4) for c in CONDITIONS]
    clients = Results(results).read_jsonl("clients")
    assert {row["node_id"] for row in clients} <= {int(i) for i in ids_before.values()}
    assert any(row["status"] == "failed" and row["round"] == 2 for row in clients), clients

    # The killed node restarts with its key and rejoins under the same identity.
    index = int(victim.split("-")[1])
    fed.start_supernode(victim, shards / client_file(index), node_key_path(fed.certs, index), threads=1)
    fed.wait_online(3)
    assert _node_id(fed, victim) == ids_before[victim]


def _node_id(fed: LocalFederation, name: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in fed.log_tail(name, 400).splitlines() if "SuperNode ID:" in line]
        if lines:
            return lines[-1].split("SuperNode ID:")[1].strip()
        time.sleep(0.5)
    raise AssertionError(f"{name} logged no node id:\n{fed.log_tail(name)}")


def test_resume_after_the_superlink_stops(shards: Path, tmp_path: Path) -> None:
    make_all(tmp_path / "certs", nodes=3)
    results = tmp_path / "results"
    first = LocalFederation(tmp_path / "work", tmp_path / "certs")
    try:
        first.start_superlink()
        start_nodes(first, shards)
        first.control.submit(run_config(shards, results, num_rounds=3))
        deadline = time.monotonic() + 300
        while Results(results).last_complete_round() != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        first.kill("superlink")  # mid-run, right after round 1 was checkpointed
    finally:
        first.stop_all()
    done = Results(results).last_complete_round()
    assert done is not None and done >= 1
    round_1 = Results(results).load_checkpoint(1)

    second = LocalFederation(tmp_path / "work", tmp_path / "certs")  # same state database and keys
    try:
        second.start_superlink()
        start_nodes(second, shards)
        run_id = second.control.submit(run_config(shards, results, num_rounds=3, resume=True))
        assert second.control.wait_run(run_id, timeout=600) == "finished:completed", second.control.server_log(run_id)
        assert f"resuming from the round {done} checkpoint" in second.control.server_log(run_id)
    finally:
        second.stop_all()
    assert metric_rounds(results) == [(r, c) for r in range(4) for c in CONDITIONS]  # no gap, no duplicate
    assert all(torch.equal(v, round_1[k]) for k, v in Results(results).load_checkpoint(1).items())
    assert [row["round"] for row in Results(results).read_jsonl("clients")] == [1, 1, 2, 2, 3, 3]


def test_bad_run_config_and_bad_shard(shards: Path, tmp_path: Path, federation: LocalFederation) -> None:
    fed = federation
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 1, 180), np.float32), y=np.full(10, 7, np.int64))
    good = load_beats(shards / client_file(0))
    save_beats(tmp_path / "good.npz", Beats(good.x[:60], good.y[:60], good.record[:60]))
    for i, path in enumerate((tmp_path / "good.npz", bad)):
        fed.control.register(node_key_path(fed.certs, i).with_suffix(".pub"))
        fed.start_supernode(f"node-{i}", path, node_key_path(fed.certs, i), threads=1)
    fed.wait_online(2)

    run_id = fed.control.submit(run_config(shards, tmp_path / "r1", num_nodes=2) | {"train.epochs": 0})
    assert fed.control.wait_run(run_id, timeout=600) == "finished:failed"
    assert "run config key 'train.epochs'" in fed.control.server_log(run_id)

    run_id = fed.control.submit(run_config(shards, tmp_path / "r2", num_nodes=2, num_rounds=1))
    assert fed.control.wait_run(run_id, timeout=600) == "finished:completed"
    rows = Results(tmp_path / "r2").read_jsonl("clients")
    assert sorted(row["status"] for row in rows) == ["failed", "ok"]
    failed = next(row for row in rows if row["status"] == "failed")
    assert f"{bad}: labels must lie in 0..4" in failed["error"]
    assert any(f"{bad}: labels must lie in 0..4" in fed.log_tail(n, 400) for n in ("node-0", "node-1"))


def test_two_launches_of_the_same_command_give_the_same_results(shards: Path, tmp_path: Path) -> None:
    """Node ids are drawn anew at each launch; seeds and sampling follow the partitions, so the metrics and the
    per-node rows repeat exactly (all but the seconds and the node ids)."""
    args = [
        "federate", "--data", str(shards), "--nodes", "3", "--rounds", "2", "--local-epochs", "1",
        "--max-train-windows", "60", "--max-test-windows", "80", "--pgd-steps", "2", "--cw-steps", "2",
        "--bim-steps", "2", "--threads-per-node", "1",
    ]  # fmt: skip
    for launch in ("a", "b"):
        assert main([*args, "--workdir", str(tmp_path / f"work-{launch}"), "--results", str(tmp_path / launch)]) == 0

    def rows(launch: str, name: str, drop: set[str]) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in drop} for row in Results(tmp_path / launch).read_jsonl(name)]

    assert rows("a", "metrics", {"seconds"}) == rows("b", "metrics", {"seconds"})
    clients = {"node_id", "train-seconds"}
    assert rows("a", "clients", clients) == rows("b", "clients", clients)
    assert [row["partition"] for row in rows("a", "clients", set())] != [None] * 4


def _state(pid: int) -> str:
    """A process's state letter and command line, to say what was left behind."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return "gone"
    return f"{state} {command[:200]}"


def test_federate_stopped_by_sigterm_stops_every_process_it_started(shards: Path, tmp_path: Path) -> None:
    """A scheduler or `kill` stops a run with SIGTERM: nothing it started may train on, orphaned."""
    work = tmp_path / "work"
    command = [
        sys.executable, "-m", "ecg_fat.cli", "federate", "--data", str(shards), "--workdir", str(work),
        "--nodes", "3", "--rounds", "50", "--results", str(tmp_path / "results"), "--max-test-windows", "50",
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:  # type: ignore[union-attr]
            if "submitted" in line:
                break
        time.sleep(5)  # the ServerApp is running now
        assert process.poll() is None
        started = descendants(process.pid)
        assert len(started) >= 5  # SuperLink, 3 SuperNodes, the ServerApp, ...
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 143
        assert "ecg-fat federate: terminated" in process.stderr.read()  # type: ignore[union-attr]
    finally:
        process.kill()
    # A killed grandchild is collected by init a moment later; until then it is a zombie, which runs nothing.
    left = {pid: _state(pid) for pid in started}
    assert {pid: state for pid, state in left.items() if state != "gone" and not state.startswith("Z")} == {}
