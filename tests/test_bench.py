"""`ecg-fat bench`: the reference it is measured against, and every section on synthetic records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from common.config import FederationConfig, TrainConfig
from common.model import build_model
from common.train import train
from ecg_fat.bench import (
    QUICK,
    SECTIONS,
    BenchOptions,
    Sizes,
    bench,
    compare_models,
    format_report,
    run_federation,
    target_rows,
)
from ecg_fat.bench_worker import flops_per_window, library_pool, reference_train, trained, warmed_up
from ecg_fat.cli import main
from tests.conftest import synthetic_beats

TINY = Sizes(
    train_windows=128, train_epochs=1, robust_test_windows=64, repeats=1, attack_windows=64, eval_windows=64,
    federation_train_windows=40, federation_test_windows=40, scale_train_windows=20, scale_test_windows=40,
    scale_nodes=(4,),
)  # fmt: skip


def test_project_training_step_equals_the_plain_torchattacks_loop():
    # Same seed, same windows: the project's train() (PairMaxPool, frozen parameters) must compute what the
    # plain torchattacks loop computes on the model with nn.MaxPool1d, so that the benchmark compares speed.
    beats = synthetic_beats(192)
    cfg = TrainConfig(epochs=2, pgd={"steps": 3})
    project, reference = build_model(0), build_model(0, pool=library_pool)
    train(project, beats, cfg, torch.device("cpu"))
    reference_train(reference, beats, cfg)
    for name, tensor in project.state_dict().items():
        torch.testing.assert_close(tensor, reference.state_dict()[name], rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(project.state_dict()["features.0.weight"], build_model(0).state_dict()["features.0.weight"])


def test_both_loops_start_from_the_same_clean_warm_up():
    """The timed adversarial epochs start from one model: seed 0 after the clean warm-up, whichever pooling."""
    beats = synthetic_beats(192)
    project, reference = warmed_up("project", beats, 1), warmed_up("reference", beats, 1)
    pools = [type(model.features[2]) for model in (project, reference)]
    assert pools[0] is not pools[1] and pools[1] is torch.nn.MaxPool1d
    for name, tensor in project.state_dict().items():
        assert torch.equal(tensor, reference.state_dict()[name]), name
    initial = build_model(0).state_dict()["features.0.weight"]
    assert not torch.equal(project.state_dict()["features.0.weight"], initial)
    assert torch.equal(warmed_up("project", beats, 0).state_dict()["features.0.weight"], initial)


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
    assert 0 < scale["peak_pss_mb_max"] <= scale["peak_rss_mb_max"]  # shared pages split: never more
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


def test_flops_are_counted_from_the_layers():
    # One forward: twice the multiply-adds of every convolution and linear layer, from their shapes (2.68 MFLOP).
    model, expected, length = build_model(0), 0, 180
    for layer in model.modules():
        if isinstance(layer, nn.Conv1d):
            expected += 2 * layer.in_channels * layer.kernel_size[0] * layer.out_channels * length
            length //= 2
        elif isinstance(layer, nn.Linear):
            expected += 2 * layer.in_features * layer.out_features
    with torch.inference_mode():
        assert flops_per_window(lambda: model(torch.rand(3, 1, 180)), 3) == expected == 2_682_368


def test_the_two_trained_models_are_compared_on_weights_and_predictions(tmp_path: Path):
    test = synthetic_beats(200)
    paths = {name: tmp_path / f"{name}.pt" for name in ("a", "b", "c")}
    torch.save(build_model(0).state_dict(), paths["a"])
    torch.save(build_model(0).state_dict(), paths["b"])
    torch.save(build_model(1).state_dict(), paths["c"])
    same = compare_models(paths["a"], paths["b"], test, QUICK)
    assert same["weights_max_abs_difference"] == 0 and same["prediction_agreement"] == 1
    majority = float(torch.bincount(torch.from_numpy(test.y)).max()) / len(test.y)
    assert same["majority_share"] == pytest.approx(majority)
    other = compare_models(paths["a"], paths["c"], test, QUICK)
    assert other["weights_max_abs_difference"] > 0.01


def test_targets_include_the_share_of_the_machines_limit_and_a_check_that_can_fail():
    trained = {"windows_per_second": 100.0, "gflops_per_second": 30.0, "mflops_per_window": 120.0,
               "robust_accuracy": 0.5}  # fmt: skip
    report = {
        "mode": "quick", "data": "synthetic", "machine": {}, "sizes": {"eval_windows": 10},
        "limit": {"matrix_size": 2048, "matmul_gflops": {"float32": 100.0, "bfloat16": 50.0}},
        "sections": {"train": {
            "train_windows": 640, "epochs": 2, "batch_size": 64, "reference": trained, "project": trained,
            "speedup": 1.0, "robust_accuracy_difference_points": 0.0, "weights_max_abs_difference": 0.0,
            "prediction_agreement": 0.9, "majority_share": 0.8, "points_above_majority": 1.0,
        }},
    }  # fmt: skip
    rows = {label: (value, op, target) for label, value, op, target in target_rows(report)}
    assert rows["training step, % of the fp32 matmul rate"] == (30.0, ">=", 70.0)
    assert rows["the two trained models agree (% of predictions)"] == (90.0, ">=", 99.0)
    text = format_report(report)
    assert "fp32 100.0 GFLOP/s" in text and "30.0 GFLOP/s (30.0%)" in text
    assert "trained model above the majority class (points)" in text and "MISSED by 4.00" in text


def test_a_fat_training_window_costs_what_its_layers_add_up_to():
    # Counted through the attacks' input gradients: 20 PGD steps (forward and input backward), then a training
    # step (forward, input and weight backward) on the window and its adversarial copy. The two loops agree.
    beats = synthetic_beats(8)
    counts = {
        v: flops_per_window(lambda v=v: trained(v, beats, TrainConfig(epochs=1)), 8) for v in ("project", "reference")
    }
    assert counts == {"project": 123_354_368, "reference": 123_354_368}
