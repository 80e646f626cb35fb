"""One of Flower's strategies (FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, Krum, Bulyan), with the replies checked
before they are aggregated and each sampled node's reply recorded per round.

The additions to Flower's strategy are the checks (server/validation.py: a reply that fails is dropped and
recorded as `rejected` with its reason; a round without a valid reply keeps the previous model), the cap on
the num-examples a reply is weighted with (recorded as `counted-examples`), the per-client rows, a round
offset so that a resumed run numbers its rounds on from its checkpoint, FedAvgM's momentum kept beside
the checkpoints so that a resumed run goes on with it, and (with class-weighted-head) FedAvg's output rows
re-averaged by the nodes' class counts.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, Krum

from common.config import CLASS_COUNT_METRICS, FederationConfig
from common.model import OUTPUT_ARRAYS
from server.results import Results
from server.validation import check_reply, counted_examples, outsized, update_norm

PARTITION_QUERY_TIMEOUT = 120.0  # seconds for the connected nodes to say their partition id (once per node)


class GuardedStrategy:
    """Mixed in before a Flower strategy class (see `make_strategy`)."""

    def __init__(self, cfg: FederationConfig, results: Results, round_offset: int, **strategy: Any) -> None:
        # Sample `nodes-per-round` of the connected nodes; once that many are connected a round can start,
        # so a node that dies leaves the run going on with the others.
        super().__init__(  # type: ignore[call-arg]
            fraction_train=cfg.nodes_per_round / cfg.num_nodes,
            fraction_evaluate=0.0,  # evaluation is central, on the server's test set
            min_train_nodes=cfg.nodes_per_round,
            min_evaluate_nodes=0,
            min_available_nodes=cfg.nodes_per_round,
            weighted_by_key="num-examples",
            **strategy,
        )
        self.cfg, self.results, self.round_offset = cfg, results, round_offset
        self.sampled: list[int] = []
        self.partitions: dict[int, int | None] = {}  # node id -> the partition id it reported
        self.global_arrays: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.global_arrays = {name: array.numpy() for name, array in arrays.items()}
        real_round = server_round + self.round_offset
        # Reproducible sampling: Flower samples with `random` from the grid's node list. Flower's node ids
        # are drawn anew at every launch, so the list is put in the order of the nodes' partition ids (their
        # shard or site numbers, which do not change) and `random` is seeded by the run seed and the round.
        self._learn_partitions(grid)
        random.seed(f"{self.cfg.seed}:{real_round}")
        in_order = _InPartitionOrder(grid, self.partitions)
        messages = list(super().configure_train(real_round, arrays, config, in_order))  # type: ignore[misc]
        self.sampled = [message.metadata.dst_node_id for message in messages]
        return messages

    def _learn_partitions(self, grid: Grid) -> None:
        """Ask each node not asked yet for its partition id (None: it has none)."""
        new = [node for node in grid.get_node_ids() if node not in self.partitions]
        if not new:
            return
        asks = [
            Message(RecordDict({"ask": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY) for n in new
        ]
        for reply in grid.send_and_receive(asks, timeout=PARTITION_QUERY_TIMEOUT):
            answer = None if reply.has_error() else reply.content.metric_records.get("partition")
            partition = answer.get("partition-id") if answer is not None else None
            self.partitions[reply.metadata.src_node_id] = partition if isinstance(partition, int) else None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        real_round = server_round + self.round_offset
        updates = {r.metadata.src_node_id: r for r in replies if not r.has_error()}
        errors = {r.metadata.src_node_id: r.error.reason for r in replies if r.has_error()}
        rejected = self._reject(updates) if self.cfg.defence.validate_updates else {}
        accepted = {node: reply for node, reply in updates.items() if node not in rejected}
        counted = self._count(real_round, accepted) if self.cfg.defence.validate_updates else {}
        # A node that died answers nothing; the SuperLink's error for it comes from the SuperLink's id.
        unattributed = [reason for node, reason in errors.items() if node not in self.sampled]
        rows = []
        for node in self.sampled:
            row: dict = {"round": real_round, "node_id": node, "partition": self.partitions.get(node)}
            if node in accepted:
                metrics = dict(accepted[node].content["metrics"])
                row |= {"status": "ok", **metrics, "counted-examples": counted.get(node, metrics.get("num-examples"))}
            elif node in rejected:
                row |= {"status": "rejected", "error": rejected[node]}
            else:
                reason = errors.get(node) or (unattributed.pop(0) if unattributed else "no reply")
                row |= {"status": "failed", "error": reason}
            rows.append(row)
        self.results.add_clients(rows)
        print(
            f"round {real_round}: {len(accepted)} of {len(rows)} sampled nodes replied with a valid update"
            + (f" ({len(rejected)} rejected)" if rejected else ""),
            flush=True,
        )
        if not accepted:  # Flower's strategies then return no arrays: the previous global model stays
            print(f"round {real_round}: no valid update; the global model stays as it was", flush=True)
        for node, weight in counted.items():  # the weight Flower's strategy reads
            accepted[node].content["metrics"]["num-examples"] = weight
        aggregated = super().aggregate_train(real_round, list(accepted.values()))  # type: ignore[misc]
        if self.cfg.class_weighted_head and aggregated[0] is not None:
            aggregated = (class_weighted_rows(aggregated[0], list(accepted.values())), aggregated[1])
        if isinstance(self, FedAvgM) and self.momentum_vector is not None:
            momentum = zip(self.global_arrays, self.momentum_vector, strict=True)
            self.results.save_momentum(real_round, {name: torch.from_numpy(m) for name, m in momentum})
        return aggregated

    def _count(self, real_round: int, accepted: dict[int, Message]) -> dict[int, int]:
        """The num-examples each validated reply is weighted with (check_reply made every claim an integer)."""
        claims = {node: reply.content["metrics"]["num-examples"] for node, reply in accepted.items()}
        counted = counted_examples(claims, self.cfg.defence)
        for node in (node for node in claims if counted[node] < claims[node]):
            print(
                f"round {real_round}: node {node} claims {claims[node]} windows, counted as {counted[node]} "
                f"({self.cfg.defence.examples_factor:g} x the median of the others' claims)",
                flush=True,
            )
        return counted

    def _reject(self, updates: dict[int, Message]) -> dict[int, str]:
        """Why each malformed or outsized update is refused, by node."""
        rejected = {}
        for node, reply in updates.items():
            if reason := check_reply(reply, self.global_arrays, self.cfg.defence, self.cfg.reply_metrics):
                rejected[node] = reason
        norms = {
            node: update_norm(reply, self.global_arrays) for node, reply in updates.items() if node not in rejected
        }
        return rejected | outsized(norms, self.cfg.defence)


def class_weighted_rows(averaged: ArrayRecord, replies: list[Message]) -> ArrayRecord:
    """FedAvg's average with each class's output row replaced by the replies' rows of it weighted by their windows
    of that class (a class no reply holds keeps FedAvg's row). A reply's class counts are scaled by its counted
    num-examples over its claim (the counts sum to the claim), so the claim's cap caps them too."""
    arrays = {name: array.numpy() for name, array in averaged.items()}
    weights = np.array(
        [[reply.content["metrics"][name] for name in CLASS_COUNT_METRICS] for reply in replies],
        dtype=np.float64,
    )
    claimed = weights.sum(axis=1, keepdims=True)
    weights *= np.array([[reply.content["metrics"]["num-examples"]] for reply in replies]) / claimed
    totals = weights.sum(axis=0)
    held = totals > 0
    for name in OUTPUT_ARRAYS:
        rows = np.stack([reply.content["arrays"][name].numpy().astype(np.float64) for reply in replies])
        weighted = np.einsum("kc,kc...->c...", weights[:, held], rows[:, held])
        arrays[name][held] = weighted / totals[held].reshape(-1, *[1] * (rows.ndim - 2))
    return ArrayRecord(OrderedDict((name, Array(array)) for name, array in arrays.items()))


class _InPartitionOrder:
    """The grid, with its node ids listed by partition id (nodes without one last, by node id)."""

    def __init__(self, grid: Grid, partitions: dict[int, int | None]) -> None:
        self.grid, self.partitions = grid, partitions

    def get_node_ids(self) -> list[int]:
        def key(node: int) -> tuple[bool, int, int]:
            partition = self.partitions.get(node)
            return (partition is None, partition if partition is not None else 0, node)

        return sorted(self.grid.get_node_ids(), key=key)

    def __getattr__(self, name: str) -> object:
        return getattr(self.grid, name)


def make_strategy(cfg: FederationConfig, results: Results, round_offset: int = 0) -> GuardedStrategy:
    """The aggregation the run config names, guarded and recording."""
    defence = cfg.defence
    momentum = {"server_momentum": cfg.server_momentum, "server_learning_rate": cfg.server_lr}
    server_opt = cfg.server_momentum > 0 or cfg.server_lr != 1.0
    base, options = {
        "fedavg": (FedAvgM, momentum) if server_opt else (FedAvg, {}),
        "median": (FedMedian, {}),
        "trimmed-mean": (FedTrimmedAvg, {"beta": defence.trim_fraction}),
        "krum": (Krum, {"num_malicious_nodes": defence.assumed_malicious}),
        "bulyan": (Bulyan, {"num_malicious_nodes": defence.assumed_malicious}),
    }[defence.aggregation]
    guarded = type(f"Guarded{base.__name__}", (GuardedStrategy, base), {})
    strategy = guarded(cfg, results, round_offset, **options)
    if isinstance(strategy, FedAvgM) and round_offset:
        saved = results.load_momentum(round_offset)
        strategy.momentum_vector = None if saved is None else [m.numpy() for m in saved]
    return strategy
