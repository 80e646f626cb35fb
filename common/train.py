"""Local training: clean, or Algorithm 1 of the paper (each batch trains on concat(x, PGD(x)))."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.attacks import perturb, pgd
from common.config import NUM_CLASSES, TrainConfig
from common.data import Beats


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    accuracy: float
    windows: int  # windows the optimiser saw: 2x the shard when adversarial
    seconds: float


def class_weights(labels: np.ndarray, how: str) -> torch.Tensor | None:
    """Cross-entropy weights from the label counts: scikit-learn's "balanced" n / (classes present x count)
    (written out, so that a SuperNode does not load scikit-learn; a test keeps them equal), or its square root.
    An absent class gets weight 0: it adds no loss term anyway."""
    if how == "none":
        return None
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    present = counts > 0
    weights = np.divide(len(labels), present.sum() * counts, out=np.zeros(NUM_CLASSES), where=present)
    return torch.tensor(np.sqrt(weights) if how == "sqrt-balanced" else weights, dtype=torch.float32)


def to_tensors(beats: Beats, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(beats.x).to(device), torch.from_numpy(beats.y).to(device)


def train(
    model: nn.Module,
    beats: Beats,
    cfg: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> list[EpochStats]:
    """Train `model` in place for `cfg.epochs` epochs with Adam and cross-entropy."""
    torch.manual_seed(cfg.seed)  # the only generator training draws from: shuffling, PGD's random start
    model.to(device)
    x, y = to_tensors(beats, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    weights = class_weights(beats.y, cfg.class_weights)
    loss_fn = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device))
    attack = pgd(model, cfg.pgd) if cfg.adversarial else None
    history = []
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        total_loss, correct, seen = 0.0, 0, 0
        for batch in torch.randperm(len(y), device=device).split(cfg.batch_size):
            xb, yb = x[batch], y[batch]
            if attack is not None:
                xb = torch.cat([xb, perturb(attack, xb, yb)])
                yb = torch.cat([yb, yb])
            model.train()
            optimizer.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
        stats = EpochStats(epoch, total_loss / seen, correct / seen, seen, time.perf_counter() - started)
        history.append(stats)
        if on_epoch:
            on_epoch(stats)
    return history
