"""`class-weighted-head` (beyond the paper): each class's output row averaged by the nodes' windows of that class,
the rest of the model as FedAvg; the class counts a node reports are checked as its num-examples is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message

from common.config import CLASS_COUNT_METRICS, ConfigError, FederationConfig
from common.model import OUTPUT_ARRAYS, EcgCnn
from server.results import Results
from server.strategy import make_strategy
from tests.helpers import FakeGrid
from tests.test_defence import GLOBAL, honest, reply

# Three nodes: only the first holds S, none holds Q; N in all three, in unequal numbers.
COUNTS = [[60, 40, 0, 0, 0], [90, 0, 10, 0, 0], [150, 0, 30, 20, 0]]


def _reply(message: Message, weights: dict[str, torch.Tensor], counts: list, examples: object = None) -> Message:
    claimed = sum(counts) if examples is None else examples
    return reply(message, weights, claimed, dict(zip(CLASS_COUNT_METRICS, counts, strict=True)))


def _round(tmp_path: Path, counts: list, examples: list | None = None, **settings) -> tuple[ArrayRecord | None, list]:
    cfg = FederationConfig(num_nodes=len(counts), nodes_per_round=len(counts), class_weighted_head=True, **settings)
    results = Results(tmp_path)
    results.start(cfg)
    strategy = make_strategy(cfg, results)
    nodes = FakeGrid(list(range(len(counts))))
    messages = list(strategy.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord({}), nodes))
    claims = examples or [None] * len(counts)
    replies = [_reply(m, honest(i), c, e) for i, (m, c, e) in enumerate(zip(messages, counts, claims, strict=True))]
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays, results.read_jsonl("clients")


def test_each_class_row_is_averaged_by_the_windows_of_that_class(tmp_path: Path, task_identity) -> None:
    arrays, rows = _round(tmp_path, COUNTS)
    assert [row["status"] for row in rows] == ["ok"] * 3
    got = arrays.to_torch_state_dict()
    sizes = [sum(c) for c in COUNTS]
    for name in GLOBAL:  # FedAvg's average, weighted by num-examples
        fedavg = sum(n * honest(i)[name] for i, n in enumerate(sizes)) / sum(sizes)
        if name not in OUTPUT_ARRAYS:
            torch.testing.assert_close(got[name], fedavg, rtol=0, atol=1e-6)
            continue
        for c in range(5):
            held = [counts[c] for counts in COUNTS]
            # A class no node holds (Q) keeps FedAvg's row.
            expected = sum(n * honest(i)[name][c] for i, n in enumerate(held)) / sum(held) if any(held) else fedavg[c]
            torch.testing.assert_close(got[name][c], expected, rtol=0, atol=1e-6)
    # The check that this test can fail: S's row is the one S-holding node's, not FedAvg's mix of three.
    assert torch.equal(got["classifier.5.bias"][1], honest(0)["classifier.5.bias"][1])
    assert not torch.allclose(got["classifier.5.bias"][1], fedavg[1])


def test_the_output_arrays_are_the_models_class_rows() -> None:
    state = EcgCnn().state_dict()
    assert list(state)[-2:] == list(OUTPUT_ARRAYS)
    assert [state[name].shape[0] for name in OUTPUT_ARRAYS] == [5, 5]


@pytest.mark.parametrize(
    ("counts", "reason"),
    [
        ([60, 40, 0, 0, 1], "class counts [60, 40, 0, 0, 1] are not integers of at least 0 summing to"),  # 101
        ([60, 30, 0, 0, 0], "class counts"),  # fewer than claimed
        ([160, -60, 0, 0, 0], "class counts"),
        ([60, 40.0, 0, 0, 0], "class counts"),
        ([60, [40], 0, 0, 0], "metric examples-S [40] is not a finite number"),
    ],
)
def test_class_counts_that_do_not_add_up_are_rejected(tmp_path: Path, task_identity, counts: list, reason: str) -> None:
    arrays, rows = _round(tmp_path, [counts, *COUNTS[1:]], [100, None, None])
    assert rows[0]["status"] == "rejected" and reason in rows[0]["error"], rows[0]
    assert [row["status"] for row in rows[1:]] == ["ok", "ok"]
    assert arrays is not None


def test_class_counts_are_the_options_alone(tmp_path: Path, task_identity) -> None:
    """Without the option a reply with class counts is not the ClientApp's; with it, one without them is not."""
    cfg = FederationConfig(num_nodes=3, nodes_per_round=3)
    results = Results(tmp_path)
    results.start(cfg)
    strategy = make_strategy(cfg, results)
    messages = list(strategy.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord({}), FakeGrid([0, 1, 2])))
    strategy.aggregate_train(1, [_reply(m, honest(i), COUNTS[i]) for i, m in enumerate(messages)])
    assert {row["error"].split(" (")[0] for row in results.read_jsonl("clients")} == {
        "metrics other than the ClientApp's"
    }


def test_a_claim_holds_a_class_row_only_up_to_the_examples_cap(tmp_path: Path, task_identity) -> None:
    """What the counts let a liar do, and where the cap stops it: claiming 10^6 windows, all S, beside honest nodes
    of 100 windows with 10 S each, it is counted as 300 (3 x their median), so it holds 300 / 340 of S's row, not
    10^6 / (10^6 + 40). The option trusts the counts within that cap, as FedAvg trusts num-examples within it;
    the update-norm check bounds how far the row can move."""
    honest_counts = [[80, 10, 10, 0, 0]] * 4
    arrays, rows = _round(tmp_path, [[0, 1_000_000, 0, 0, 0], *honest_counts])
    assert rows[0]["status"] == "ok" and rows[0]["counted-examples"] == 300
    got = arrays.to_torch_state_dict()["classifier.5.bias"][1]
    expected = (
        300 * honest(0)["classifier.5.bias"][1] + sum(10 * honest(i)["classifier.5.bias"][1] for i in range(1, 5))
    ) / 340
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"defence.aggregation": "median"}, "needs defence.aggregation fedavg"),
        ({"server-momentum": 0.9}, "without server-momentum"),
        ({"server-lr": 0.5}, "without server-momentum or server-lr"),
        ({"defence.validate-updates": False}, "needs defence.validate-updates"),
    ],
)
def test_the_option_is_refused_where_it_would_not_be_fedavgs_or_not_checked(settings: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=f"run config: .*{match}"):
        FederationConfig.from_run_config({"class-weighted-head": True, **settings})
    FederationConfig.from_run_config(settings)  # without the option, each of these settings is valid
