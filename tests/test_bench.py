"""`ecg-fat bench`: the reference it is measured against, and every section on synthetic records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.config import FederationConfig, TrainConfig
from common.model import build_model
from common.train import train
from ecg_fat.bench import SECTIONS, BenchOptions, Sizes, bench, format_report, run_federation, target_rows
from ecg_fat.bench_worker import library_pool, reference_epoch
from ecg_fat.cli import main
from tests.conftest import synthetic_beats

TINY = Sizes(
    train_windows=128, robust_test_windows=64, repeats=1, attack_windows=64, eval_windows=64,
    federation_train_windows=40, federation_test_windows=40, scale_train_windows=20, scale_test_windows=40,
    scale_nodes=(4,),
)  # fmt: skip


def test_project_training_step_equals_the_plain_torchattacks_loop():
    # Same seed, same windows: the project's train() (PairMaxPool, frozen parameters) must compute what the
    # plain torchattacks loop computes on the model with nn.MaxPool1d, so that the benchmark compares speed.
    beats = synthetic_beats(192)
    cfg = TrainConfig(epochs=1, pgd={"steps": 3})
    project, reference = build_model(0), build_model(0, pool=library_pool)
    train(project, beats, cfg, torch.device("cpu"))
    reference_epoch(reference, beats, cfg)
    for name, tensor in project.state_dict().items():
        torch.testing.assert_close(tensor, reference.state_dict()[name], rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(project.state_dict()["features.0.weight"], build_model(0).state_dict()["features.0.weight"])


@pytest.mark.slow
def test_every_section_runs_on_synthetic_records_and_reports_its_targets(tmp_path: Path):
    options = BenchOptions(mitdb=tmp_path / "absent", workdir=tmp_path / "bench", sizes=TINY)
    report = bench(options)
    assert report["data"] == "synthetic records (no MIT-BIH found)"
    assert set(report["sections"]) == set(SECTIONS)
    train_section = report["sections"]["train"]
    assert train_section["reference"]["windows_per_second"] > 0 and train_section["speedup"] > 0
    # Same computation (see the test above): the robust accuracies agree.
    assert train_section["robust_accuracy_difference_points"] <= 0.5
    assert set(report["sections"]["evaluate"]["project"]["per_condition"]) == {
        "clean", "pgd", "fgsm", "cw", "bim",
    }  # fmt: skip
    assert report["sections"]["federation"]["overhead"] > 0
    scale = report["sections"]["scale"]["4"]
    assert scale["seconds_per_round"] > 0 and 50 < scale["peak_rss_mb_max"] < 4000
    assert scale["replies"] == 4 and scale["failed_replies"] == 0  # 2 rounds x 2 sampled nodes
    labels = [label for label, *_ in target_rows(report)]
    assert "federation overhead (x one process)" in labels
    text = format_report(report)
    assert "targets:" in text and "torchattacks loop" in text and "4 SuperNodes" in text


@pytest.mark.slow  # starts benchmark worker processes
def test_cli_writes_json_and_names_a_bad_json_path(tmp_path: Path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--only", "attack", "--mitdb", str(tmp_path / "none"),
                 "--workdir", str(tmp_path / "w"), "--json", str(out)]) == 0  # fmt: skip
    measured = json.loads(out.read_text())  # written after each section, complete at the end
    assert set(measured["sections"]) == {"attack"}
    assert "PairMaxPool, tuned, bf16 autocast" in measured["sections"]["attack"]
    assert main(["bench", "--only", "attack", "--json", str(tmp_path / "missing" / "b.json")]) == 2
    assert "--json" in capsys.readouterr().err


def test_a_rerun_in_the_same_workdir_starts_from_an_empty_results_directory(tmp_path: Path, monkeypatch):
    results = tmp_path / "results"
    (results / "checkpoints").mkdir(parents=True)
    (results / "checkpoints" / "round_000.pt").write_bytes(b"an earlier bench run")
    seen = []

    def fake_federate(options, prepare_cfg, cfg, watch=None) -> int:
        seen.append(Path(cfg.results_dir).exists())
        return 0

    monkeypatch.setattr("ecg_fat.bench.federate", fake_federate)
    run_federation(tmp_path / "data", tmp_path / "federation", FederationConfig(results_dir=str(results)))
    assert seen == [False]
