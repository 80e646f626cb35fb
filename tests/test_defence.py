"""The server's defences against a broken or malicious node: every bad update is rejected with its reason and
kept out of the global model; Flower's robust aggregators are one setting away; a non-finite model is never
scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.config import parse_config_args

from client.poison import poisoned
from common.config import AttackerConfig, ConfigError, EvalConfig, FederationConfig, NodeConfig
from common.metrics import predict
from common.model import EcgCnn, build_model
from ecg_fat.cli import main
from ecg_fat.federate import FederateOptions
from server.evaluation import NonFiniteModel, RoundEvaluator
from server.results import Results
from server.strategy import make_strategy
from tests.conftest import synthetic_beats
from tests.helpers import FakeGrid

GLOBAL = build_model(0).state_dict()


DIRECTION = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(0)) for k, v in GLOBAL.items()}


def honest(seed: int) -> dict[str, torch.Tensor]:
    """The global weights moved a little, as training moves them: a shared direction plus a node's own noise."""
    generator = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * (DIRECTION[k] + 0.3 * torch.randn(v.shape, generator=generator)) for k, v in GLOBAL.items()}


def reply(
    message: Message, weights: dict[str, torch.Tensor], examples: object = 100, extra: dict | None = None
) -> Message:
    """An honest ClientApp's reply shape; `extra` metrics beside TRAIN_METRICS (class counts, for instance)."""
    metrics = {"num-examples": examples, "train-loss": 0.5, "train-accuracy": 0.5, "train-seconds": 1.0}
    metrics = MetricRecord(metrics | (extra or {}))
    return Message(RecordDict({"arrays": ArrayRecord(weights), "metrics": metrics}), reply_to=message)


def run_round(
    tmp_path: Path, attacks: list[tuple[dict, object]], nodes: int = 5, **settings
) -> tuple[ArrayRecord | None, list]:
    """One round of `nodes` (all sampled): the given (weights, num-examples) attackers first, honest nodes after."""
    cfg = FederationConfig(num_nodes=nodes, nodes_per_round=nodes, **settings)
    results = Results(tmp_path)
    results.start(cfg)
    strategy = make_strategy(cfg, results)
    messages = list(strategy.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord({}), FakeGrid(list(range(nodes)))))
    replies = [reply(m, *attacks[i]) if i < len(attacks) else reply(m, honest(i)) for i, m in enumerate(messages)]
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays, results.read_jsonl("clients")


def node(poison: str, tmp_path: Path) -> NodeConfig:
    (tmp_path / "shard.npz").touch()
    return NodeConfig(data_path=tmp_path / "shard.npz", poison=poison)


@pytest.mark.parametrize(
    ("poison", "examples", "reason"),
    [
        ("nan", 100, "non-finite values"),
        ("inf", 100, "non-finite values"),
        ("wrong-keys", 100, "other arrays than the model's"),
        ("wrong-shape", 100, "shaped"),
        ("wrong-dtype", 100, "of dtype float64"),
        ("scale", 100, "update norm"),  # x 1e6
        ("none", 10**15, "num-examples 1000000000000000 outside 1..1000000"),
        ("none", -5, "num-examples -5 outside"),
        ("none", 0, "num-examples 0 outside"),
        ("none", 2.5, "num-examples 2.5 outside"),
    ],
)
def test_a_bad_update_is_rejected_with_its_reason_and_kept_out(
    tmp_path: Path, task_identity, poison: str, examples: object, reason: str
) -> None:
    bad = poisoned(honest(99), GLOBAL, node(poison, tmp_path))
    arrays, rows = run_round(tmp_path, [(bad, examples)])
    assert rows[0]["status"] == "rejected" and reason in rows[0]["error"], rows[0]
    assert [row["status"] for row in rows[1:]] == ["ok"] * 4
    expected = {k: torch.stack([honest(i)[k] for i in range(1, 5)]).mean(0) for k in GLOBAL}  # the other four
    for name, tensor in arrays.to_torch_state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6)


def test_a_round_without_a_valid_update_keeps_the_global_model(tmp_path: Path, task_identity) -> None:
    nan = poisoned(honest(1), GLOBAL, node("nan", tmp_path))
    arrays, rows = run_round(tmp_path, [(nan, 100)] * 5)
    assert arrays is None  # Flower's strategy keeps the previous arrays
    assert [row["status"] for row in rows] == ["rejected"] * 5


def test_without_validation_fedavg_takes_anything_and_the_nan_model_stops_the_run(
    tmp_path: Path, task_identity
) -> None:
    nan = poisoned(honest(1), GLOBAL, node("nan", tmp_path))
    arrays, rows = run_round(tmp_path / "run", [(nan, 100)], defence={"validate_updates": False})
    assert all(row["status"] == "ok" for row in rows)
    state = arrays.to_torch_state_dict()
    assert not torch.isfinite(state["classifier.5.bias"]).all()
    results = Results(tmp_path / "run")
    for overlap in ("off", "on"):  # refused at the call, before anything is queued
        evaluate_round = RoundEvaluator(synthetic_beats(20), EvalConfig(), results, 0, False, 10, overlap)
        with pytest.raises(NonFiniteModel, match=r"round 1: the global model holds non-finite values in features\.0"):
            evaluate_round(1, arrays)
        evaluate_round.finish()
        assert results.read_jsonl("metrics") == []  # nothing reported for it


def test_non_finite_logits_are_never_a_prediction() -> None:
    model = EcgCnn()
    with torch.no_grad():
        model.classifier[-1].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite logits"):
        predict(model, torch.zeros(4, 1, 180), 2)


@pytest.mark.parametrize(
    ("aggregation", "name"),
    [("median", "FedMedian"), ("trimmed-mean", "FedTrimmedAvg"), ("krum", "Krum"), ("bulyan", "Bulyan")],
)
def test_robust_aggregators_resist_an_update_the_checks_let_through(
    tmp_path: Path, task_identity, aggregation: str, name: str
) -> None:
    """A sign-flipped, boosted update (x 20: under a norm bar of 100) moves FedAvg's average
    far from the honest nodes'; Flower's robust aggregators stay near them."""
    flipped = {k: GLOBAL[k] - 20 * (honest(99)[k] - GLOBAL[k]) for k in GLOBAL}
    nodes = 7 if aggregation == "bulyan" else 5  # Bulyan tolerates f = 1 from 4f + 3 updates
    robust, rows = run_round(
        tmp_path / aggregation, [(flipped, 100)], nodes, defence={"aggregation": aggregation, "norm_factor": 100.0}
    )
    plain, _ = run_round(tmp_path / "fedavg", [(flipped, 100)], nodes, defence={"norm_factor": 100.0})

    target = {k: GLOBAL[k] + 0.01 * DIRECTION[k] for k in GLOBAL}  # where the honest nodes head

    def off(weights: dict[str, torch.Tensor]) -> float:
        return float(sum(((weights[k] - target[k]) ** 2).sum() for k in GLOBAL) ** 0.5)

    step = off(GLOBAL)  # the honest step's length
    assert off(robust.to_torch_state_dict()) < 0.5 * step < step < off(plain.to_torch_state_dict())
    assert all(row["status"] == "ok" for row in rows)  # nothing rejected: the aggregator did the work
    settings = {"num_nodes": nodes, "nodes_per_round": nodes, "defence": {"aggregation": aggregation}}
    assert type(make_strategy(FederationConfig(**settings), Results(tmp_path))).__name__ == f"Guarded{name}"


def test_krum_and_bulyan_need_enough_nodes_per_round() -> None:
    with pytest.raises(ConfigError, match=r"bulyan with defence.assumed-malicious 1 needs nodes-per-round >= 7"):
        FederationConfig.from_run_config({"defence.aggregation": "bulyan"})
    with pytest.raises(ConfigError, match="needs nodes-per-round >= 5"):
        FederationConfig.from_run_config({"defence.aggregation": "krum", "num-nodes": 4})
    assert FederationConfig.from_run_config({"defence.aggregation": "krum"}).defence.assumed_malicious == 1


def test_the_poisoned_node_changes_only_what_it_says(tmp_path: Path) -> None:
    trained = honest(3)
    assert poisoned(trained, GLOBAL, node("none", tmp_path)) is trained
    flipped = poisoned(trained, GLOBAL, node("sign-flip", tmp_path))
    bias = "features.0.bias"
    torch.testing.assert_close(flipped[bias] - GLOBAL[bias], GLOBAL[bias] - trained[bias])
    scaled = poisoned(trained, GLOBAL, node("scale", tmp_path))
    np.testing.assert_allclose(
        (scaled["features.0.bias"] - GLOBAL["features.0.bias"]).numpy(),
        1e6 * (trained["features.0.bias"] - GLOBAL["features.0.bias"]).numpy(),
        rtol=1e-3,
    )


@pytest.mark.parametrize(
    ("poison", "is_broken"),
    [
        ("nan", lambda trained, bad: all(torch.isnan(bad[k]).all() for k in trained)),
        # +inf, not NaN: the server gives both the same reason ("non-finite values")
        ("inf", lambda trained, bad: all(torch.isposinf(bad[k]).all() for k in trained)),
        ("wrong-keys", lambda trained, bad: sorted(bad) == sorted(f"{k}.evil" for k in trained)),
        ("wrong-shape", lambda trained, bad: all(bad[k].shape == (trained[k].numel() - 1,) for k in trained)),
        ("wrong-dtype", lambda trained, bad: all(bad[k].dtype == torch.float64 for k in trained)),
    ],
)
def test_each_broken_reply_is_broken_in_its_own_way(tmp_path: Path, poison: str, is_broken) -> None:
    """The rejection test above reads the server's reason; this pins the reply itself, so one poison standing in
    for another (inf sent as NaN: the same "non-finite" reason) is caught."""
    trained = honest(3)
    bad = poisoned(trained, GLOBAL, node(poison, tmp_path))
    assert is_broken(trained, bad)
    if poison in ("wrong-shape", "wrong-dtype"):  # the values are the trained ones, only their form is wrong
        for k in trained:
            torch.testing.assert_close(bad[k].float().reshape(-1), trained[k].reshape(-1)[: bad[k].numel()])


def test_the_update_norm_is_the_distance_from_the_global_model(task_identity) -> None:
    from server.validation import update_norm

    global_arrays = {"a": np.ones((2, 2)), "b": np.zeros(3)}
    sent = {"a": torch.tensor([[4.0, 1.0], [1.0, 1.0]]), "b": torch.tensor([0.0, 4.0, 0.0])}
    reply = Message(RecordDict({"arrays": ArrayRecord(sent)}), dst_node_id=1, message_type="train")
    assert update_norm(reply, global_arrays) == 5.0  # sqrt(3^2 + 4^2)


def test_federate_makes_exactly_the_first_partitions_malicious_as_flower_reads_their_node_config(
    tmp_path: Path,
) -> None:
    attacker = AttackerConfig(poison="sign-flip", poison_scale=-8.0, claim_examples=12)
    options = FederateOptions(tmp_path, None, tmp_path, threads_per_node=1, malicious=2, attacker=attacker)
    (tmp_path / "shard.npz").touch()
    for index in range(4):
        # Flower's own parser of `flower-supernode --node-config`, then the ClientApp's validation.
        parsed = parse_config_args([f'data-path="{tmp_path / "shard.npz"}" {options.node_config(index)}'])
        node = NodeConfig.from_node_config(parsed)
        assert node.partition_id == index
        assert AttackerConfig(**node.model_dump(include=set(AttackerConfig.model_fields))) == (
            attacker if index < 2 else AttackerConfig()
        )
    assert AttackerConfig().to_node_config() == ""  # an honest node's config holds no attacker key


def test_the_attack_is_recorded_before_the_run_and_never_over_a_run_that_will_be_refused(tmp_path: Path) -> None:
    """attack.json is written before submission (a failed or stopped run keeps it), but not into a results
    directory that holds a run the ServerApp will refuse to overwrite: that run's record stays its own."""
    from ecg_fat.federate import ATTACK_FILE, record_attack

    attacker = AttackerConfig(poison="scale", poison_scale=1e6)
    options = FederateOptions(tmp_path, None, tmp_path, threads_per_node=1, malicious=2, attacker=attacker)
    fresh = FederationConfig(results_dir=str(tmp_path / "fresh"))
    record_attack(options, fresh)
    recorded = json.loads((tmp_path / "fresh" / ATTACK_FILE).read_text())
    assert recorded == {"malicious-partitions": [0, 1], "poison": "scale", "poison-scale": 1e6, "claim-examples": 0}

    held = tmp_path / "held"
    (held / "checkpoints").mkdir(parents=True)
    (held / "checkpoints" / "round_003.pt").touch()
    (held / ATTACK_FILE).write_text("the earlier run's\n")
    record_attack(options, FederationConfig(results_dir=str(held)))
    assert (held / ATTACK_FILE).read_text() == "the earlier run's\n"
    record_attack(options, FederationConfig(results_dir=str(held), resume=True))  # the run continues: this attack
    assert json.loads((held / ATTACK_FILE).read_text())["malicious-partitions"] == [0, 1]

    honest = FederateOptions(tmp_path, None, tmp_path, threads_per_node=1)
    record_attack(honest, FederationConfig(results_dir=str(tmp_path / "honest")))
    assert not (tmp_path / "honest").exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--malicious", "2"], "--malicious 2: say how they attack"),
        (["--malicious", "11", "--poison", "nan"], "--malicious 11: must be between 0 and --nodes (10)"),
        (["--malicious", "-1", "--poison", "nan"], "--malicious -1"),
    ],
)
def test_bad_attacker_flags_are_named_and_nothing_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], named: str
) -> None:
    assert main(["federate", "--workdir", str(tmp_path / "w"), *flags]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_a_claimed_example_count_cannot_buy_the_round(tmp_path: Path, task_identity) -> None:
    """FedAvg weighs a reply by the num-examples it claims, which the server cannot check. A plain sign-flip has
    the honest norm, so it passes every check; claiming 10^6 windows beside four nodes of 100 it would hold 99.96%
    of the weight and walk the model backwards. Counted at examples-factor (3) x the median of the others' claims,
    it holds 3/7 and the round still moves the way the honest nodes move: by 1/7 of their step (3/5 had it
    claimed 100)."""
    flipped = {k: 2 * GLOBAL[k] - honest(99)[k] for k in GLOBAL}

    def progress(arrays: ArrayRecord) -> float:
        """How far the round moved along the honest nodes' direction, in honest steps (1: as far as they)."""
        weights = arrays.to_torch_state_dict()
        moved = sum(((weights[k] - GLOBAL[k]) * DIRECTION[k]).sum() for k in GLOBAL)
        return float(moved / sum(0.01 * (DIRECTION[k] ** 2).sum() for k in GLOBAL))

    capped, rows = run_round(tmp_path / "capped", [(flipped, 1_000_000)])
    assert rows[0]["status"] == "ok" and (rows[0]["num-examples"], rows[0]["counted-examples"]) == (1_000_000, 300)
    assert [row["counted-examples"] for row in rows[1:]] == [100] * 4
    assert 0.1 < progress(capped) < 0.2
    uncapped, _ = run_round(tmp_path / "uncapped", [(flipped, 1_000_000)], defence={"examples_factor": 1e9})
    assert progress(uncapped) < -0.9  # the check that this test can fail: counted as claimed, the flip wins


def test_honest_nodes_of_unequal_size_are_averaged_as_fedavg_averages_them(tmp_path: Path, task_identity) -> None:
    """The cap leaves honest federations alone: claims within 3x the others' median count in full (the project's
    own partitions: IID shards equal, whole-patient shards within 1.34x the round's median)."""
    claims = [100, 120, 250, 90, 130]
    arrays, rows = run_round(tmp_path, [(honest(i), claim) for i, claim in enumerate(claims)])
    assert [row["counted-examples"] for row in rows] == claims
    expected = {k: sum(c * honest(i)[k] for i, c in enumerate(claims)) / sum(claims) for k in GLOBAL}
    for name, tensor in arrays.to_torch_state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6)


def test_the_smallest_and_the_largest_allowed_claims_are_accepted(tmp_path: Path, task_identity) -> None:
    """num-examples is refused outside 1..max-examples, so a node of one window, and one at the limit, take part."""
    arrays, rows = run_round(tmp_path, [(honest(0), 1), (honest(1), 1_000_000)], defence={"examples_factor": 1e9})
    assert [(row["status"], row["counted-examples"]) for row in rows[:2]] == [("ok", 1), ("ok", 1_000_000)]
    assert arrays is not None


def test_without_validation_every_claim_is_counted_as_claimed(tmp_path: Path, task_identity) -> None:
    """With `validate-updates` off (the poisoning runs' unchecked arm) nothing is capped: the reply that claims
    10^6 windows is counted, recorded and weighted as it claims (the examples-factor cap belongs to validation)."""
    claims = [1_000_000, 100, 100, 100, 100]
    arrays, rows = run_round(
        tmp_path, [(honest(i), claim) for i, claim in enumerate(claims)], defence={"validate_updates": False}
    )
    assert [(row["num-examples"], row["counted-examples"]) for row in rows] == [(c, c) for c in claims]
    expected = {k: sum(c * honest(i)[k] for i, c in enumerate(claims)) / sum(claims) for k in GLOBAL}
    for name, tensor in arrays.to_torch_state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("value", ["1", "0.5", "inf"])
def test_an_examples_factor_that_would_cap_honest_nodes_is_named_and_nothing_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture, value: str
) -> None:
    """At 1 or below the cap would weigh every node below its peers' median (inf: no cap); one line names it."""
    assert main(["federate", "--workdir", str(tmp_path / "w"), "--examples-factor", value]) == 2
    assert "--examples-factor" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
    with pytest.raises(ConfigError, match=r"run config key 'defence\.examples-factor'"):
        FederationConfig.from_run_config({"defence.examples-factor": float(value)})


def _metrics(**changes: object) -> MetricRecord:
    honest_metrics = {"num-examples": 100, "train-loss": 0.5, "train-accuracy": 0.5, "train-seconds": 1.0}
    return MetricRecord({k: v for k, v in (honest_metrics | changes).items() if v is not None})


@pytest.mark.parametrize(
    ("records", "reason"),
    [
        ({"metrics": _metrics(extra=1.0)}, "metrics other than the ClientApp's (missing [], unexpected ['extra'])"),
        (
            {"metrics": _metrics(**{"train-loss": None})},
            "metrics other than the ClientApp's (missing ['train-loss'], unexpected [])",
        ),
        ({"metrics": _metrics(**{"train-loss": [0.5, 0.5]})}, "metric train-loss [0.5, 0.5] is not a finite number"),
        ({"metrics": _metrics(**{"train-accuracy": float("nan")})}, "metric train-accuracy nan is not a finite number"),
        (
            {"more": _metrics(**{"num-examples": 10**6}), "metrics": _metrics()},
            "records other than 'arrays', 'metrics'",
        ),
        ({"metrics": _metrics(), "spare": "arrays"}, "records other than 'arrays', 'metrics'"),
        ({"metrics": _metrics(), "options": ConfigRecord({"x": 1})}, "records other than 'arrays', 'metrics'"),
    ],
)
def test_a_reply_shaped_otherwise_than_the_client_app_sends_is_rejected_not_fatal(
    tmp_path: Path, task_identity, records: dict, reason: str
) -> None:
    """Flower's strategies end the whole ServerApp (InconsistentMessageReplies, an AppExitException) when the
    replies' metric keys differ or a reply holds a second record; one node could stop every hospital's run."""
    bad = honest(99)
    content = RecordDict(
        {
            name: ArrayRecord(bad) if record == "arrays" else record
            for name, record in ({"arrays": "arrays"} | records).items()
        }
    )
    cfg = FederationConfig(num_nodes=5, nodes_per_round=5)
    results = Results(tmp_path)
    results.start(cfg)
    strategy = make_strategy(cfg, results)
    messages = list(strategy.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord({}), FakeGrid(list(range(5)))))
    replies = [Message(content, reply_to=messages[0])] + [reply(m, honest(i)) for i, m in enumerate(messages) if i]
    arrays, _ = strategy.aggregate_train(1, replies)
    rows = results.read_jsonl("clients")
    assert rows[0]["status"] == "rejected" and reason in rows[0]["error"], rows[0]
    expected = {k: torch.stack([honest(i)[k] for i in range(1, 5)]).mean(0) for k in GLOBAL}
    for name, tensor in arrays.to_torch_state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6)


def test_the_operator_sees_a_capped_claim_in_the_progress_lines(
    tmp_path: Path, task_identity, caplog: pytest.LogCaptureFixture
) -> None:
    from ecg_fat.federate import Progress

    flipped = {k: 2 * GLOBAL[k] - honest(99)[k] for k in GLOBAL}
    run_round(tmp_path, [(flipped, 1_000_000)])
    with caplog.at_level("INFO", logger="ecg_fat"):
        Progress(tmp_path)()
    lines = [record.getMessage() for record in caplog.records if record.name == "ecg_fat"]
    assert "1000000 windows (counted as 300), loss 0.5000" in lines[0]
    assert all(line.endswith("100 windows, loss 0.5000") for line in lines[1:5])


def test_a_reply_with_the_models_arrays_in_another_order_is_rejected(tmp_path: Path, task_identity) -> None:
    """Flower's FedAvg names the new model's arrays in its first reply's order, Bulyan and FedAvgM pair arrays by
    position: a reply in another order would reorder the global model or mix up layers of one shape."""
    reordered = dict(reversed(list(honest(99).items())))
    arrays, rows = run_round(tmp_path, [(reordered, 100)])
    assert rows[0]["status"] == "rejected" and "another order" in rows[0]["error"], rows[0]
    assert list(arrays.keys()) == list(GLOBAL)
