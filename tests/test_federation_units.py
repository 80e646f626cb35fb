"""The Flower app's pieces, called directly (no processes): config, ClientApp, results and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.config import flatten_dict

from client.app import train_round
from common.config import CLASS_COUNT_METRICS, TRAIN_METRICS, ConfigError, FederationConfig, NodeConfig
from common.data import DataError, save_beats
from common.model import EcgCnn, build_model
from ecg_fat.launcher import ControlClient
from server.results import Results, ResultsError
from server.validation import check_reply
from tests.conftest import synthetic_beats, write_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_run_config_defaults_equal_the_pydantic_defaults() -> None:
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert flatten_dict(app["config"]) == FederationConfig().to_run_config()
    assert app["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}


def test_paper_protocol_is_the_default() -> None:
    cfg = FederationConfig()
    assert (cfg.num_rounds, cfg.num_nodes, cfg.nodes_per_round, cfg.train.epochs) == (10, 10, 5, 5)
    assert cfg.train.adversarial and cfg.train.pgd.steps == 20 and cfg.train.pgd.eps == 8 / 255
    assert cfg.evaluate.attacks.cw.steps == 50 and cfg.evaluate.attacks.bim.alpha == 2 / 255


def test_run_config_round_trips_and_bad_values_name_the_key() -> None:
    cfg = FederationConfig(num_rounds=3, train={"epochs": 2})
    assert FederationConfig.from_run_config(cfg.to_run_config()) == cfg
    with pytest.raises(ConfigError, match=r"run config key 'train\.epochs'"):
        FederationConfig.from_run_config({"train.epochs": 0})
    with pytest.raises(ConfigError, match=r"run config key 'evaluate\.attacks\.cw\.steps'"):
        FederationConfig.from_run_config({"evaluate.attacks.cw.steps": "many"})
    with pytest.raises(ConfigError, match="nodes-per-round"):
        FederationConfig.from_run_config({"num-nodes": 3, "nodes-per-round": 4})
    with pytest.raises(ConfigError, match="node config key 'data-path'"):
        NodeConfig.from_node_config({"data-path": "/nowhere/shard.npz"})


def _train_message(server_round: int = 1) -> Message:
    content = RecordDict(
        {"arrays": ArrayRecord(build_model(0).state_dict()), "config": ConfigRecord({"server-round": server_round})}
    )
    return Message(content, dst_node_id=7, message_type="train")


def _context(data_path: Path, **run_config) -> Context:
    cfg = FederationConfig(train={"epochs": 1, "pgd": {"steps": 1}}, **run_config).to_run_config()
    return Context(run_id=1, node_id=7, node_config={"data-path": str(data_path)}, state=RecordDict(), run_config=cfg)


def test_with_class_weighted_head_the_client_reports_its_class_counts_and_only_then(
    tmp_path: Path, task_identity
) -> None:
    beats = synthetic_beats(30)
    save_beats(tmp_path / "shard.npz", beats)
    sent = {name: array.numpy() for name, array in _train_message().content["arrays"].items()}
    cfg = FederationConfig(class_weighted_head=True)
    reply = train_round(_train_message(), _context(tmp_path / "shard.npz", class_weighted_head=True))
    metrics = reply.content["metrics"]
    assert [metrics[name] for name in CLASS_COUNT_METRICS] == np.bincount(beats.y, minlength=5).tolist()
    assert check_reply(reply, sent, cfg.defence, cfg.reply_metrics) is None
    plain = train_round(_train_message(), _context(tmp_path / "shard.npz"))
    assert set(plain.content["metrics"]) == set(TRAIN_METRICS)  # the paper's protocol discloses no class count


def test_client_trains_on_its_shard_and_replies_weights_and_metrics(tmp_path: Path, task_identity) -> None:
    save_beats(tmp_path / "shard.npz", synthetic_beats(30))
    reply = train_round(_train_message(), _context(tmp_path / "shard.npz"))
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 30 and 0 <= metrics["train-accuracy"] <= 1
    sent = {name: array.numpy() for name, array in _train_message().content["arrays"].items()}
    cfg = FederationConfig()
    assert check_reply(reply, sent, cfg.defence, cfg.reply_metrics) is None  # the ServerApp accepts what it sends
    trained = reply.content["arrays"].to_torch_state_dict()
    assert set(trained) == set(EcgCnn().state_dict())
    assert not torch.equal(trained["classifier.5.bias"], build_model(0).state_dict()["classifier.5.bias"])


def test_client_reads_a_directory_of_wfdb_records(tmp_path: Path, task_identity) -> None:
    records = write_dataset(tmp_path / "hospital", records=2)
    reply = train_round(_train_message(), _context(records, max_train_windows=25))
    assert reply.content["metrics"]["num-examples"] == 25


def _rhythm_message() -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord(build_model(0, rhythm=True).state_dict()),
            "config": ConfigRecord({"server-round": 1}),
        }
    )
    return Message(content, dst_node_id=7, message_type="train")


def test_a_model_with_rhythm_features_trains_on_records_and_shards_prepared_with_them(
    tmp_path: Path, task_identity
) -> None:
    from common.data import read_records

    records = write_dataset(tmp_path / "hospital", records=2)
    reply = train_round(_rhythm_message(), _context(records, max_train_windows=25))  # records: windowed as sent
    assert reply.content["arrays"]["classifier.1.weight"].numpy().shape == (256, 1408 + 4)
    save_beats(tmp_path / "rhythm.npz", read_records(records, rhythm=True))
    assert train_round(_rhythm_message(), _context(tmp_path / "rhythm.npz")).content["metrics"]["num-examples"] > 0


@pytest.mark.parametrize("rhythm_model", [True, False])
def test_a_shard_prepared_otherwise_than_the_model_reads_is_named_not_trained(
    tmp_path: Path, task_identity, rhythm_model: bool
) -> None:
    from common.data import read_records

    records = write_dataset(tmp_path / "hospital", records=2)
    save_beats(tmp_path / "shard.npz", read_records(records, rhythm=not rhythm_model))
    message = _rhythm_message() if rhythm_model else _train_message()
    needed = r"--rhythm \(window \+ RR features\)" if rhythm_model else "without --rhythm"
    with pytest.raises(
        DataError,
        match=rf"shard\.npz: windows of {184 if not rhythm_model else 180} values, but "
        rf"the run's model reads {184 if rhythm_model else 180}: prepare this node's shard {needed}",
    ):
        train_round(message, _context(tmp_path / "shard.npz"))


def test_client_refuses_a_bad_shard(tmp_path: Path, task_identity) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 1, 180), np.float32), y=np.array([0, 1, 2, 3, 9]))
    with pytest.raises(DataError, match=r"bad\.npz: labels must lie in 0\.\.4"):
        train_round(_train_message(), _context(tmp_path / "bad.npz"))


def _fake_round(results: Results, server_round: int) -> None:
    results.add_clients([{"round": server_round, "node_id": 1, "status": "ok", "num-examples": 3}])
    results.add_metrics(
        server_round,
        {
            "clean": {
                "accuracy": 0.5,
                "precision": 0.5,
                "recall": 0.5,
                "f1": 0.5,
                "recall_per_class": {"N": 1.0},
                "seconds": 0.1,
            }
        },
    )
    results.save_checkpoint(server_round, EcgCnn().state_dict())


def test_results_refuse_to_overwrite_a_run_unless_resuming(tmp_path: Path) -> None:
    results = Results(tmp_path / "r")
    assert results.start(FederationConfig()) == -1
    _fake_round(results, 0)
    with pytest.raises(ResultsError, match="resume=true"):
        results.start(FederationConfig())
    assert results.start(FederationConfig(resume=True)) == 0
    # Resuming with other settings would mix two runs in one table: refused, naming what differs, nothing lost.
    rows = (results.dir / "metrics.csv").read_text()
    with pytest.raises(ResultsError, match=r"other settings \(seed, train\.epochs differ"):
        results.start(FederationConfig(resume=True, seed=1, train={"epochs": 2}))
    assert (results.dir / "metrics.csv").read_text() == rows and results.start(FederationConfig(resume=True)) == 0
    # A damaged config.json is one line naming it, and the rows stay.
    (results.dir / "config.json").write_text("{not json")
    with pytest.raises(ResultsError, match=r"config\.json: not a run config"):
        results.start(FederationConfig(resume=True))
    assert (results.dir / "metrics.csv").read_text() == rows


def test_resume_drops_rows_of_an_unfinished_round(tmp_path: Path) -> None:
    results = Results(tmp_path / "r")
    results.start(FederationConfig())
    for r in (0, 1):
        _fake_round(results, r)
    results.add_clients([{"round": 2, "node_id": 1, "status": "ok"}])  # round 2 died before its checkpoint
    assert results.start(FederationConfig(resume=True)) == 1
    assert [row["round"] for row in results.read_jsonl("clients")] == [0, 1]
    assert [row["round"] for row in results.read_jsonl("metrics")] == [0, 1]
    csv_rounds = [line.split(",")[0] for line in (tmp_path / "r" / "metrics.csv").read_text().splitlines()[1:]]
    assert csv_rounds == ["0", "1"]
    EcgCnn().load_state_dict(results.load_checkpoint(1))


def test_flower_processes_find_this_environments_executables_without_activation(tmp_path, monkeypatch):
    # SuperLink and SuperNode start `flower-superexec` from PATH; an unactivated venv must still work.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    control = ControlClient("127.0.0.1:1", tmp_path / "ca.crt", tmp_path / "home")
    assert control.env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert (Path(sys.executable).parent / "flower-superexec").exists()


def test_run_status_is_asked_rarely_until_the_run_has_probably_ended(tmp_path, monkeypatch):
    # Each status query is a `flwr` process (~1.5 s of CPU): not at every progress poll.
    control = ControlClient("127.0.0.1:1", tmp_path / "ca.crt", tmp_path / "home")
    answers = iter(["running", "running", "finished:completed"])
    queries, polls = [], []
    monkeypatch.setattr(control, "run_status", lambda run_id: queries.append(run_id) or next(answers))
    status = control.wait_run(
        7, on_poll=lambda: polls.append(1), poll=0.001, status_every=3600, ended=lambda: len(polls) >= 10
    )
    assert status == "finished:completed"
    assert queries == [7, 7, 7]  # at the start, then at every poll once ended() said so
    assert len(polls) == 12  # ten polls without a query, one after the second query, one at the end


def test_a_flwr_command_that_does_not_answer_in_time_is_a_failed_answer_and_the_run_is_still_followed(
    tmp_path, monkeypatch
):
    """On a starved machine `flwr ls` once took over 120 s and its TimeoutExpired ended `ecg-fat federate` with a
    traceback while the run went on. A late answer is now an unknown status, asked again at the next poll."""
    control = ControlClient("127.0.0.1:1", tmp_path / "ca.crt", tmp_path / "home")
    answers = iter(["late", "finished:completed"])

    def run(command, **kwargs):
        answer = next(answers)
        if answer == "late":
            raise subprocess.TimeoutExpired(command, kwargs["timeout"])
        return subprocess.CompletedProcess(command, 0, json.dumps({"runs": [{"status": answer}]}), "")

    monkeypatch.setattr(subprocess, "run", run)
    assert control.wait_run(7, poll=0.001, status_every=0) == "finished:completed"

    def never_answers(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(subprocess, "run", never_answers)
    answer = control.flwr("supernode", "register", "key.pub", timeout=5)
    assert answer == {"success": False, "error-message": "`flwr supernode` did not answer within 5 s"}
    assert control.server_log(7, timeout=5) == "(`flwr log 7` did not answer within 5 s)\n"


def test_client_reads_the_lead_its_node_config_names(tmp_path: Path) -> None:
    from client.app import load_local_data
    from common.data import read_records

    records = write_dataset(tmp_path / "hospital", records=2)  # two leads: MLII, V1
    second = load_local_data(NodeConfig(data_path=records, lead="V1"), EcgCnn())
    np.testing.assert_array_equal(second.x, read_records(records, lead="V1").x)
    assert not np.array_equal(second.x, load_local_data(NodeConfig(data_path=records), EcgCnn()).x)


def test_the_final_model_is_written_where_results_name_it(tmp_path: Path) -> None:
    from server.results import FINAL_MODEL

    results = Results(tmp_path)
    state = build_model(3).state_dict()
    results.save_final(state)
    saved = torch.load(tmp_path / FINAL_MODEL, weights_only=True)
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in state)


def test_server_paths_must_be_given_and_absolute(tmp_path: Path) -> None:
    from server.app import _required_path

    assert _required_path(str(tmp_path), "results-dir") == tmp_path
    for bad in ("", "results/run"):
        with pytest.raises(ConfigError, match=rf"key 'results-dir': needs an absolute path \(got '{bad}'\)"):
            _required_path(bad, "results-dir")


def test_the_ordered_grid_is_still_the_grid() -> None:
    from server.strategy import _InPartitionOrder
    from tests.helpers import FakeGrid

    grid = FakeGrid([30, 10, 20], {30: 0, 20: 1})
    ordered = _InPartitionOrder(grid, {30: 0, 20: 1, 10: None})
    assert ordered.get_node_ids() == [30, 20, 10]  # by partition id, a node without one last
    assert ordered.send_and_receive == grid.send_and_receive and ordered.nodes is grid.nodes


def test_download_fetches_mitdb_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common import data

    calls = []
    monkeypatch.setattr("wfdb.dl_database", lambda name, dl_dir: calls.append((name, dl_dir)))
    cache = tmp_path / "cache" / "mitdb"
    assert data.download_mitdb(cache) == cache and cache.is_dir()
    assert calls == [("mitdb", str(cache))]
    for number in range(47):
        (cache / f"{100 + number}.atr").touch()
    data.download_mitdb(cache)
    assert len(calls) == 2  # 47 records: incomplete, fetched again
    (cache / "999.atr").touch()
    assert data.download_mitdb(cache) == cache and len(calls) == 2


def test_every_bad_key_is_named_in_one_message() -> None:
    with pytest.raises(ConfigError, match=r"run config key 'num-rounds': .*; run config key 'train\.lr': "):
        FederationConfig.from_run_config({"num-rounds": 0, "train.lr": -1.0})


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("key", ["train.proximal-mu", "train.logit-adjustment-floor"])
def test_a_non_finite_setting_is_refused(key: str, value: float) -> None:
    """`ge=0` lets infinity through, and an infinite FedProx weight would turn every weight into NaN; the floor's
    `lt=1` would refuse NaN as "less than 1", the finite check says what is wrong with it."""
    with pytest.raises(ConfigError, match=rf"run config key '{key}': Input should be a finite number"):
        FederationConfig.from_run_config({key: value, "train.logit-adjustment": 1.0})


def test_a_zombie_counts_as_stopped_and_a_running_process_does_not() -> None:
    """Flower's SuperExec leaves finished ClientApps as zombies; a stop that waited for them waited its whole
    grace period for every SuperNode (a 10-node federation took about a minute to stop)."""
    from ecg_fat.launcher import _alive

    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{exited.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _alive(running.pid) and not _alive(exited.pid)
    finally:
        running.kill()
        running.wait()
        exited.wait()
    assert not _alive(exited.pid)
