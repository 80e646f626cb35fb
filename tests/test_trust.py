"""The trust boundary with real processes (TLS on, 127.0.0.1): a site runs only the app it approved, and no
bad update from a registered node reaches the global model or stops the run."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from certs.make_certs import make_all, node_key_path
from common.config import CONDITIONS, FederationConfig, PrepareConfig
from common.data import TEST_FILE, client_file, prepare
from ecg_fat.launcher import LocalFederation
from server.results import FINAL_MODEL, Results
from tests.conftest import write_dataset

pytestmark = pytest.mark.slow
FAST = {
    "train": {"epochs": 1, "batch_size": 32, "pgd": {"steps": 1}},
    "evaluate": {"attacks": {"pgd": {"steps": 1}, "cw": {"steps": 1}, "bim": {"steps": 1}}},
}
# Every kind of bad reply, one node each, and two honest nodes.
BAD = {
    "nan": ('poison="nan"', "non-finite values"),
    "inf": ('poison="inf"', "non-finite values"),
    "wrong-keys": ('poison="wrong-keys"', "other arrays than the model's"),
    "wrong-shape": ('poison="wrong-shape"', "shaped"),
    "wrong-dtype": ('poison="wrong-dtype"', "of dtype float64"),
    "scaled": ('poison="scale"', "update norm"),
    "huge-examples": ("claim-examples=1000000000000000", "num-examples 1000000000000000 outside"),
    "negative-examples": ("claim-examples=-5", "num-examples -5 outside"),
}
NODES = len(BAD) + 2


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    records = write_dataset(tmp_path_factory.mktemp("records"), records=NODES, beats_per_record=30)
    data = tmp_path_factory.mktemp("data")
    prepare(records, data, PrepareConfig(clients=NODES))
    return data


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    make_all(tmp_path / "certs", nodes=NODES)
    fed = LocalFederation(tmp_path / "work", tmp_path / "certs")
    fed.start_superlink()
    yield fed
    fed.stop_all()


def start(fed: LocalFederation, shards: Path, configs: list[str]) -> list[str]:
    names = []
    for i, extra in enumerate(configs):
        fed.control.register(node_key_path(fed.certs, i).with_suffix(".pub"))
        name = f"node-{i}"
        fed.start_supernode(name, shards / client_file(i), node_key_path(fed.certs, i), threads=1, node_config=extra)
        names.append(name)
    fed.wait_online(len(configs), timeout=300)
    return names


def test_every_bad_update_is_rejected_and_the_run_completes_with_a_finite_model(
    shards: Path, tmp_path: Path, federation: LocalFederation
) -> None:
    fed = federation
    start(fed, shards, [config for config, _ in BAD.values()] + ["", ""])
    results = tmp_path / "results"
    cfg = FederationConfig(
        num_rounds=1, num_nodes=NODES, nodes_per_round=NODES, test_path=str(shards / TEST_FILE),
        results_dir=str(results), round_timeout=300, **FAST,
    )  # fmt: skip
    run_id = fed.control.submit(cfg.to_run_config())
    assert fed.control.wait_run(run_id, timeout=900) == "finished:completed", fed.control.server_log(run_id)
    rows = {row["node_id"]: row for row in Results(results).read_jsonl("clients")}
    node_ids = {_node_id(fed, f"node-{i}"): name for i, name in enumerate([*BAD, "honest-1", "honest-2"])}
    for node_id, row in rows.items():
        name = node_ids[node_id]
        if name.startswith("honest"):
            assert row["status"] == "ok", row
        else:
            assert row["status"] == "rejected" and BAD[name][1] in row["error"], (name, row)
    final = torch.load(results / FINAL_MODEL, weights_only=True)
    assert all(torch.isfinite(t).all() for t in final.values())
    rounds = [(r["round"], r["condition"]) for r in Results(results).read_jsonl("metrics")]
    assert rounds == [(r, c) for r in (0, 1) for c in CONDITIONS]


ROGUE_PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "helpful-update"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "someone"

[tool.flwr.app.components]
serverapp = "rogue_server:app"
clientapp = "rogue_client:app"

[tool.flwr.app.config]
out = ""
"""
ROGUE_CLIENT = """
import os
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def steal(msg, context):
    folder = os.path.dirname(str(context.node_config["data-path"]))
    return Message(RecordDict({"loot": ConfigRecord({"files": " ".join(sorted(os.listdir(folder)))})}), reply_to=msg)
"""
ROGUE_SERVER = """
import json
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    nodes = list(grid.get_node_ids())
    asks = [Message(RecordDict({"x": ConfigRecord({})}), dst_node_id=n, message_type="query") for n in nodes]
    replies = grid.send_and_receive(asks, timeout=120)
    seen = [r.error.reason if r.has_error() else r.content["loot"]["files"] for r in replies]
    with open(context.run_config["out"], "w") as out:
        json.dump(seen, out)
"""


def test_a_site_runs_no_app_it_did_not_approve(shards: Path, tmp_path: Path, federation: LocalFederation) -> None:
    """Anyone who submits an app of their own gets every site's refusal, not its files."""
    fed = federation
    names = start(fed, shards, ["", ""])
    rogue = tmp_path / "rogue"
    rogue.mkdir()
    (rogue / "pyproject.toml").write_text(ROGUE_PYPROJECT)
    (rogue / "rogue_client.py").write_text(textwrap.dedent(ROGUE_CLIENT))
    (rogue / "rogue_server.py").write_text(textwrap.dedent(ROGUE_SERVER))
    out = tmp_path / "loot.json"
    run_id = fed.control.submit({"out": str(out)}, app_dir=rogue)
    assert fed.control.wait_run(run_id, timeout=600).startswith("finished:")
    seen = json.loads(out.read_text())
    assert len(seen) == 2 and all("is not approved at this site" in reason for reason in seen), seen
    assert not any(client_file(0) in reason or "npz" in reason for reason in seen)
    for name in names:
        assert "refused app bundle" in fed.log_tail(name, 400)
        assert fed.processes[name].poll() is None  # the SuperNode stays up
    # ... and the approved app still runs on the same nodes
    cfg = FederationConfig(
        num_rounds=1, num_nodes=2, nodes_per_round=2, test_path=str(shards / TEST_FILE),
        results_dir=str(tmp_path / "results"), round_timeout=300, **FAST,
    )  # fmt: skip
    run_id = fed.control.submit(cfg.to_run_config())
    assert fed.control.wait_run(run_id, timeout=600) == "finished:completed"
    assert all(r["status"] == "ok" for r in Results(tmp_path / "results").read_jsonl("clients"))


def _node_id(fed: LocalFederation, name: str) -> int:
    lines = [line for line in fed.log_tail(name, 2000).splitlines() if "SuperNode ID:" in line]
    return int(lines[-1].split("SuperNode ID:")[1].strip())
