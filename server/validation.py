"""Every node's update is checked before it can reach the global model.

A reply must hold exactly the two records the ClientApp sends ('arrays' and 'metrics'), the global model's arrays
(same names in the same order, shapes and dtypes) with only finite values, the ClientApp's metrics as finite
numbers, and an integer num-examples in 1..max-examples (with class-weighted-head also its class counts, integers
of at least 0 that sum to num-examples); and its update (reply minus the global model) must not be
more than norm-factor times as large as the median of the round's other updates. The first reason a reply fails is
returned; a reply that fails is dropped, never averaged in. A reply that passes is counted with at most
examples-factor times the median of the others' num-examples: no node can buy the round with a claim.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Message

from common.config import CLASS_COUNT_METRICS, DefenceConfig


def check_reply(
    reply: Message, global_arrays: dict[str, np.ndarray], cfg: DefenceConfig, metric_names: tuple[str, ...]
) -> str | None:
    """None if the reply is a well-formed update with exactly the metrics `metric_names`; else why not."""
    content = reply.content
    records = [*content.array_records, *content.metric_records, *content.config_records]
    if list(content.array_records) != ["arrays"] or list(content.metric_records) != ["metrics"] or len(records) != 2:
        return f"records other than 'arrays', 'metrics' (got {sorted(records)})"  # Flower would end the run
    try:
        arrays = {name: array.numpy() for name, array in content["arrays"].items()}
    except Exception as error:  # a payload numpy cannot read is as bad as a wrong one
        return f"arrays that cannot be read ({error})"
    if set(arrays) != set(global_arrays):
        missing, extra = sorted(set(global_arrays) - set(arrays)), sorted(set(arrays) - set(global_arrays))
        return f"other arrays than the model's (missing {missing}, unexpected {extra})"
    # Flower's Bulyan and FedAvgM pair a reply's arrays with the model's by position, and FedAvg names the new global
    # model's arrays in its first reply's order: a reply in another order would mix up layers of one shape.
    if list(arrays) != list(global_arrays):
        return "the model's arrays in another order than the model's"
    for name, expected in global_arrays.items():
        got = arrays[name]
        if got.shape != expected.shape:
            return f"{name} shaped {got.shape}, the model's is {expected.shape}"
        if got.dtype != expected.dtype:
            return f"{name} of dtype {got.dtype}, the model's is {expected.dtype}"
        if not np.all(np.isfinite(got)):
            return f"{name} holds non-finite values"
    metrics = content["metrics"]
    if set(metrics) != set(metric_names):
        missing, extra = sorted(set(metric_names) - set(metrics)), sorted(set(metrics) - set(metric_names))
        return f"metrics other than the ClientApp's (missing {missing}, unexpected {extra})"
    for name, value in metrics.items():
        if not isinstance(value, int | float) or not math.isfinite(value):
            return f"metric {name} {value!r} is not a finite number"
    examples = metrics["num-examples"]
    if not isinstance(examples, int) or isinstance(examples, bool) or not 1 <= examples <= cfg.max_examples:
        return f"num-examples {examples!r} outside 1..{cfg.max_examples}"
    counts = [metrics[name] for name in CLASS_COUNT_METRICS if name in metric_names]
    # The counts weigh the output layer's rows: a node may not hold more of a class than it claims in all.
    if counts and (any(not isinstance(count, int) or count < 0 for count in counts) or sum(counts) != examples):
        return f"class counts {counts} are not integers of at least 0 summing to num-examples {examples}"
    return None


def update_norm(reply: Message, global_arrays: dict[str, np.ndarray]) -> float:
    """The L2 norm of (reply - global) over all arrays, in float64."""
    squares = sum(
        float(np.sum((array.numpy().astype(np.float64) - global_arrays[name]) ** 2))
        for name, array in reply.content["arrays"].items()
    )
    return float(np.sqrt(squares))


def outsized(norms: dict[int, float], cfg: DefenceConfig) -> dict[int, str]:
    """The nodes whose update norm exceeds norm-factor times the median of the other nodes' norms (the
    others', so that with two replies a huge one cannot raise the bar it is measured against)."""
    found = {}
    for node, norm in norms.items():
        others = [other for peer, other in norms.items() if peer != node]
        if others and norm > cfg.norm_factor * float(np.median(others)):
            found[node] = (
                f"update norm {norm:.4g} exceeds {cfg.norm_factor:g} x the median of the others' "
                f"{float(np.median(others)):.4g}"
            )
    return found


def counted_examples(claims: dict[int, int], cfg: DefenceConfig) -> dict[int, int]:
    """Each node's weight in the aggregation: the num-examples it claims, capped at examples-factor times the
    median of the other nodes' claims (the others', as for the norms). Capped, not rejected: an honest site
    larger than the rest still contributes."""
    counted = {}
    for node, claim in claims.items():
        others = [other for peer, other in claims.items() if peer != node]
        counted[node] = min(claim, int(cfg.examples_factor * float(np.median(others)))) if others else claim
    return counted
