"""Robust evaluation: clean and under each attack, with scikit-learn's metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, recall_score
from torch import nn

from common.attacks import build_attacks, perturb
from common.config import AAMI_CLASSES, NUM_CLASSES, EvalConfig
from common.data import Beats
from common.train import to_tensors

LABELS = list(range(NUM_CLASSES))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy; macro precision, recall, F1 over the classes present (zero_division 0);
    per-class recall and the confusion matrix over all five AAMI classes."""
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    per_class = recall_score(y_true, y_pred, labels=LABELS, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "recall_per_class": {c: float(r) for c, r in zip(AAMI_CLASSES, per_class, strict=True)},
        "confusion": confusion_matrix(y_true, y_pred, labels=LABELS).tolist(),
    }


def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Predicted classes; non-finite logits are an error, never a class (argmax of NaN is class 0)."""
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(batch) for batch in x.split(batch_size)])
    if not torch.isfinite(logits).all():
        raise ValueError("the model gives non-finite logits: its predictions cannot be scored")
    return logits.argmax(1)


def evaluate(
    model: nn.Module,
    beats: Beats,
    cfg: EvalConfig,
    device: torch.device,
    on_condition: Callable[[str, dict], None] | None = None,
) -> dict[str, dict]:
    """Metrics per condition (clean and each attack), attacks in fp32 with the parameters frozen."""
    model.to(device).eval()
    x, y = to_tensors(beats, device)
    attacks = build_attacks(model, cfg.attacks)
    results: dict[str, dict] = {}
    for condition in cfg.conditions:
        torch.manual_seed(cfg.seed)  # PGD's random start: the same draw every round
        started = time.perf_counter()
        if condition == "clean":
            y_pred = predict(model, x, cfg.batch_size)
        else:
            y_pred = torch.cat(
                [
                    predict(model, perturb(attacks[condition], xb, yb), cfg.batch_size)
                    for xb, yb in zip(x.split(cfg.batch_size), y.split(cfg.batch_size), strict=True)
                ]
            )
        metrics = classification_metrics(beats.y, y_pred.cpu().numpy())
        metrics["seconds"] = time.perf_counter() - started
        results[condition] = metrics
        if on_condition:
            on_condition(condition, metrics)
    return results


def format_table(results: dict[str, dict]) -> str:
    """A plain-text table: one row per condition, metrics in percent."""
    lines = [f"{'condition':<10}{'accuracy':>10}{'precision':>11}{'recall':>9}{'f1':>8}{'seconds':>9}"]
    for condition, m in results.items():
        lines.append(
            f"{condition:<10}{100 * m['accuracy']:>10.2f}{100 * m['precision']:>11.2f}"
            f"{100 * m['recall']:>9.2f}{100 * m['f1']:>8.2f}{m['seconds']:>9.1f}"
        )
    return "\n".join(lines)


def progress_line(server_round: int, condition: str, m: dict) -> str:
    return (
        f"round {server_round:>2} {condition:<5} acc {100 * m['accuracy']:6.2f}  prec {100 * m['precision']:6.2f}"
        f"  rec {100 * m['recall']:6.2f}  f1 {100 * m['f1']:6.2f}  ({m['seconds']:.1f} s)"
    )
