"""Robust evaluation: clean and under each attack, with scikit-learn's metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, recall_score
from sklearn.utils import resample
from torch import nn
from torchattacks.attack import Attack

from common.attacks import autoattack, build_attacks, perturb, pgd, pgd_with_restarts
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
    model.to(device)  # first: torchattacks takes an attack's device from the model's parameters when building it
    attacks = build_attacks(model, cfg.attacks)
    chosen = {c: None if c == "clean" else attacks[c] for c in cfg.conditions}
    return _score(model, beats, chosen, cfg, device, on_condition)


def standard_subset(test: Beats, windows: int, seed: int) -> Beats:
    """A fixed, stratified subset of the test set (each class in its share): the same windows in every round."""
    if windows >= len(test):
        return test
    picked = resample(np.arange(len(test)), replace=False, n_samples=windows, random_state=seed, stratify=test.y)
    return test.take(np.sort(picked))


def evaluate_standard(
    model: nn.Module,
    test: Beats,
    cfg: EvalConfig,
    device: torch.device,
    on_condition: Callable[[str, dict], None] | None = None,
) -> dict[str, dict]:
    """The field's standard attacks on the standard subset (`cfg.standard`): PGD-100 with restarts and
    AutoAttack, beside the clean and the paper's PGD-20 results on the same windows. PGD-20 well above
    PGD-100 or AutoAttack is the sign of gradient masking."""
    std = cfg.standard
    model.to(device)  # before the attacks are built, as in `evaluate`
    attacks = {
        "clean-subset": None,
        "pgd-subset": pgd(model, cfg.attacks.pgd),
        "pgd100": pgd_with_restarts(model, std.pgd, std.pgd_restarts),
        "autoattack": autoattack(model, std.autoattack, cfg.seed),
    }
    return _score(model, standard_subset(test, std.windows, cfg.seed), attacks, cfg, device, on_condition)


def _score(
    model: nn.Module,
    beats: Beats,
    attacks: dict[str, Attack | None],
    cfg: EvalConfig,
    device: torch.device,
    on_condition: Callable[[str, dict], None] | None,
) -> dict[str, dict]:
    """Metrics per condition: the model's predictions on the windows, each attack's applied first (None: clean).
    The model is already on `device`: torchattacks fixes an attack's device from the model's when it is built."""
    model.eval()
    x, y = to_tensors(beats, device)
    results: dict[str, dict] = {}
    for condition, attack in attacks.items():
        torch.manual_seed(cfg.seed)  # PGD's random start: the same draw every round
        started = time.perf_counter()
        if attack is None:
            y_pred = predict(model, x, cfg.batch_size)
        else:
            y_pred = torch.cat(
                [
                    predict(model, perturb(attack, xb, yb), cfg.batch_size)
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
    """A plain-text table: one row per condition, metrics in percent, then each class's recall (the minority
    classes' share found, which the macro averages hide)."""
    per_class = "".join(f"{'rec ' + c:>8}" for c in AAMI_CLASSES)
    lines = [f"{'condition':<10}{'accuracy':>10}{'precision':>11}{'recall':>9}{'f1':>8}{'seconds':>9}{per_class}"]
    for condition, m in results.items():
        recalls = m.get("recall_per_class", {})
        lines.append(
            f"{condition:<10}{100 * m['accuracy']:>10.2f}{100 * m['precision']:>11.2f}"
            f"{100 * m['recall']:>9.2f}{100 * m['f1']:>8.2f}{m['seconds']:>9.1f}"
            + "".join(f"{100 * recalls[c]:>8.2f}" if c in recalls else f"{'-':>8}" for c in AAMI_CLASSES)
        )
    return "\n".join(lines)


def progress_line(server_round: int, condition: str, m: dict) -> str:
    return (
        f"round {server_round:>2} {condition:<5} acc {100 * m['accuracy']:6.2f}  prec {100 * m['precision']:6.2f}"
        f"  rec {100 * m['recall']:6.2f}  f1 {100 * m['f1']:6.2f}  ({m['seconds']:.1f} s)"
    )
