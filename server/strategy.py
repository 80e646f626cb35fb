"""Flower's FedAvg, recording each sampled node's training reply (or failure) per round.

The only additions to FedAvg are bookkeeping: the per-client rows, and a round offset so that a
resumed run numbers its rounds on from the checkpoint it continues from.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common.config import FederationConfig
from server.results import Results


class RecordingFedAvg(FedAvg):
    def __init__(self, cfg: FederationConfig, results: Results, round_offset: int = 0) -> None:
        # Sample `nodes-per-round` of the connected nodes; once that many are connected a round can start,
        # so a node that dies leaves the run going on with the others.
        super().__init__(
            fraction_train=cfg.nodes_per_round / cfg.num_nodes,
            fraction_evaluate=0.0,  # evaluation is central, on the server's test set
            min_train_nodes=cfg.nodes_per_round,
            min_evaluate_nodes=0,
            min_available_nodes=cfg.nodes_per_round,
            weighted_by_key="num-examples",
        )
        self.results = results
        self.round_offset = round_offset
        self.sampled: list[int] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round + self.round_offset, arrays, config, grid))
        self.sampled = [message.metadata.dst_node_id for message in messages]
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        real_round = server_round + self.round_offset
        updates = {r.metadata.src_node_id: r for r in replies if not r.has_error()}
        errors = {r.metadata.src_node_id: r.error.reason for r in replies if r.has_error()}
        # A node that died answers nothing; the SuperLink's error for it comes from the SuperLink's id.
        unattributed = [reason for node, reason in errors.items() if node not in self.sampled]
        rows = []
        for node in self.sampled:
            row: dict = {"round": real_round, "node_id": node}
            if node in updates:
                row |= {"status": "ok", **dict(updates[node].content["metrics"])}
            else:
                reason = errors.get(node) or (unattributed.pop(0) if unattributed else "no reply")
                row |= {"status": "failed", "error": reason}
            rows.append(row)
        self.results.add_clients(rows)
        print(f"round {real_round}: {len(updates)} of {len(rows)} sampled nodes replied with an update", flush=True)
        return super().aggregate_train(real_round, replies)
