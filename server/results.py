"""A run's results directory: config, per-round metrics, client metrics, checkpoints, final model.

    config.json            the validated run config
    metrics.csv / .jsonl   one row per round (0 = initial weights) and condition
    clients.csv / .jsonl   one row per round and sampled node: its training metrics, or its failure
    checkpoints/round_NNN.pt   the global model after every round
    checkpoints/momentum_NNN.pt   FedAvgM's momentum after every round (with server-momentum; to resume with)
    final_model.pt         the global model after the last round

A round counts as complete once its checkpoint exists: the metrics are written first, the checkpoint
last, so a resumed run drops any row of a round that has no checkpoint and goes on from the last one.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import torch

from common.config import AAMI_CLASSES, FederationConfig
from common.data import write_atomically

METRIC_FIELDS = [
    "round",
    "condition",
    "accuracy",
    "precision",
    "recall",
    "f1",
    *(f"recall_{c}" for c in AAMI_CLASSES),
    "seconds",
]
CLIENT_FIELDS = [
    "round", "node_id", "partition", "status", "num-examples", "counted-examples", "train-loss", "train-accuracy",
    "train-seconds", "error",
]  # fmt: skip
FINAL_MODEL = "final_model.pt"
_CHECKPOINT = re.compile(r"round_(\d{3,})\.pt$")


class ResultsError(RuntimeError):
    """The results directory cannot be used as asked (e.g. it holds a run and resume is off)."""


class Results:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.checkpoints = directory / "checkpoints"

    # ------------------------------------------------------------------ starting and resuming

    def start(self, cfg: FederationConfig) -> int:
        """Prepare the directory; returns the last complete round to continue from (-1: start afresh)."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        last = self.last_complete_round()
        if last is not None and not cfg.resume:
            raise ResultsError(
                f"results-dir {self.dir} already holds a run (round {last} checkpointed); "
                "set resume=true to continue it, or choose another directory"
            )
        if last is None:
            for stale in ("metrics", "clients"):  # rows of a run that never completed a round
                for suffix in (".csv", ".jsonl"):
                    (self.dir / f"{stale}{suffix}").unlink(missing_ok=True)
        else:
            self._refuse_other_settings(cfg)
            self._truncate("metrics", METRIC_FIELDS, last)
            self._truncate("clients", CLIENT_FIELDS, last)
        config = json.dumps(cfg.model_dump(mode="json", by_alias=True), indent=2).encode()
        write_atomically(self.dir / "config.json", lambda f: f.write(config))
        return -1 if last is None else last

    def _refuse_other_settings(self, cfg: FederationConfig) -> None:
        """A resumed run must be the run it continues: other settings would mix two runs in one results table."""
        stored_file = self.dir / "config.json"
        if not stored_file.is_file():
            return
        try:
            stored = FederationConfig.model_validate_json(stored_file.read_bytes()).to_run_config()
        except ValueError as error:  # pydantic's ValidationError is one, for bad JSON too
            raise ResultsError(
                f"{stored_file}: not a run config ({error.__class__.__name__}); choose another directory"
            ) from error
        wanted = cfg.to_run_config()
        changed = sorted(key for key in stored if key != "resume" and stored[key] != wanted[key])
        if changed:
            raise ResultsError(
                f"results-dir {self.dir} holds a run with other settings ({', '.join(changed)} differ from its "
                "config.json); resume it with the same settings, or choose another directory"
            )

    def last_complete_round(self) -> int | None:
        rounds = [int(m.group(1)) for p in self.checkpoints.glob("round_*.pt") if (m := _CHECKPOINT.search(p.name))]
        return max(rounds, default=None)

    def load_checkpoint(self, server_round: int) -> dict[str, torch.Tensor]:
        return torch.load(self.checkpoint_path(server_round), map_location="cpu", weights_only=True)

    def load_momentum(self, server_round: int) -> list[torch.Tensor] | None:
        """FedAvgM's momentum after `server_round`, in the model's order (None: no round has aggregated yet)."""
        path = self.checkpoints / f"momentum_{server_round:03d}.pt"
        return list(torch.load(path, map_location="cpu", weights_only=True).values()) if path.exists() else None

    def _truncate(self, name: str, fields: list[str], last: int) -> None:
        rows = [row for row in self.read_jsonl(name) if row["round"] <= last]
        self._rewrite(name, fields, rows)

    # ------------------------------------------------------------------ writing

    def checkpoint_path(self, server_round: int) -> Path:
        return self.checkpoints / f"round_{server_round:03d}.pt"

    def save_checkpoint(self, server_round: int, state: dict[str, torch.Tensor]) -> None:
        write_atomically(self.checkpoint_path(server_round), lambda f: torch.save(state, f))

    def save_momentum(self, server_round: int, state: dict[str, torch.Tensor]) -> None:
        path = self.checkpoints / f"momentum_{server_round:03d}.pt"
        write_atomically(path, lambda f: torch.save(state, f))

    def save_final(self, state: dict[str, torch.Tensor]) -> None:
        write_atomically(self.dir / FINAL_MODEL, lambda f: torch.save(state, f))

    def add_metrics(self, server_round: int, results: dict[str, dict]) -> None:
        rows = [{"round": server_round, "condition": c, **m} for c, m in results.items()]
        self._append("metrics", METRIC_FIELDS, rows)

    def add_clients(self, rows: list[dict]) -> None:
        self._append("clients", CLIENT_FIELDS, rows)

    def read_jsonl(self, name: str) -> list[dict]:
        path = self.dir / f"{name}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []

    def _append(self, name: str, fields: list[str], rows: list[dict]) -> None:
        self._rewrite(name, fields, self.read_jsonl(name) + rows)

    def _rewrite(self, name: str, fields: list[str], rows: list[dict]) -> None:
        """Rewrite the JSON lines and CSV twins whole and atomically (they are small: rounds x 5 rows)."""
        jsonl = "".join(json.dumps(row) + "\n" for row in rows).encode()
        write_atomically(self.dir / f"{name}.jsonl", lambda f: f.write(jsonl))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(_csv_row(row) for row in rows)
        write_atomically(self.dir / f"{name}.csv", lambda f: f.write(text.getvalue().encode()))


def _csv_row(row: dict) -> dict:
    flat = dict(row)
    for letter, value in row.get("recall_per_class", {}).items():
        flat[f"recall_{letter}"] = value
    return flat
