"""Local training: clean, or Algorithm 1 of the paper (each batch trains on concat(x, PGD(x)))."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import WeightedRandomSampler
from torchattacks.attack import Attack

from common.attacks import kl_pgd, perturb, pgd
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


def logit_offsets(labels: np.ndarray, tau: float, floor: float) -> torch.Tensor | None:
    """What the logit-adjusted loss adds to the logits: tau x log of the node's class frequencies, each raised
    to `floor` first, and minus infinity for a class the node holds none of, which leaves it out of the node's
    softmax (Li and Zhan's restricted softmax, 2021): its output then gets no gradient at all. Any finite offset
    would still give it a small gradient of constant sign, and Adam, which divides by the gradient's scale,
    would push that class down at its full rate (tests/test_model_attacks_training.py)."""
    if not tau:
        return None
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    frequency = np.maximum(counts / counts.sum(), floor)
    log_frequency = np.log(frequency, out=np.full(NUM_CLASSES, -np.inf), where=counts > 0)
    return torch.tensor(tau * log_frequency, dtype=torch.float32)


def to_tensors(beats: Beats, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(beats.x).to(device), torch.from_numpy(beats.y).to(device)


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_objective(
    model: nn.Module, cfg: TrainConfig, weights: torch.Tensor | None, offsets: torch.Tensor | None = None
) -> tuple[Attack | None, Loss]:
    """The attack that makes x' (none for clean training) and the loss of a batch's logits given its labels: for
    adversarial training the logits are those of concat(x, x') and the labels those of x. Algorithm 1: PGD on
    cross-entropy, then cross-entropy on both halves, class-weighted on both or on the clean half only; TRADES:
    PGD on the KL term, then cross-entropy on x + beta x KL(f(x) || f(x')). `offsets` (the logit-adjusted loss)
    are added to the logits of every cross-entropy term; the attack and TRADES' KL see the model's own logits."""

    def clean(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits if offsets is None else logits + offsets, y, weight=weights)

    def unweighted(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits if offsets is None else logits + offsets, y)

    if not cfg.adversarial:
        return None, clean
    if cfg.objective == "trades":

        def trades(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            natural, adversarial = logits.chunk(2)
            kl = F.kl_div(F.log_softmax(adversarial, 1), F.softmax(natural, 1), reduction="batchmean")
            return clean(natural, y) + cfg.trades_beta * kl

        return kl_pgd(model, cfg.pgd), trades
    if cfg.weighted_half == "clean":

        def clean_half_weighted(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            natural, adversarial = logits.chunk(2)
            return (clean(natural, y) + unweighted(adversarial, y)) / 2

        return pgd(model, cfg.pgd), clean_half_weighted
    return pgd(model, cfg.pgd), lambda logits, y: clean(logits, torch.cat([y, y]))


def epoch_order(labels: torch.Tensor, how: str) -> torch.Tensor:
    """The indices of one epoch's windows: a permutation, or as many drawn with replacement with each window's
    chance its class's weight (balanced: every class equally likely, whatever its count)."""
    if how == "shuffle":
        return torch.randperm(len(labels), device=labels.device)
    on_cpu = labels.cpu()
    chances = class_weights(on_cpu.numpy(), how)[on_cpu]  # type: ignore[index]  # how is a weighting here
    return torch.tensor(list(WeightedRandomSampler(chances, len(labels))), device=labels.device)


def proximal_distance(model: nn.Module, anchor: list[torch.Tensor]) -> torch.Tensor:
    """The squared L2 distance of the model's parameters from `anchor`: FedProx's proximal term without mu / 2,
    squared as in Li et al. (2020) (the example in Flower's FedProx docstring adds plain norms)."""
    return sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))  # type: ignore[return-value]


def train(
    model: nn.Module,
    beats: Beats,
    cfg: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> list[EpochStats]:
    """Train `model` in place for `cfg.epochs` epochs with Adam and cross-entropy."""
    torch.manual_seed(cfg.seed)  # the only generator training draws from: the epoch order, PGD's random start
    model.to(device)
    x, y = to_tensors(beats, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    weights = class_weights(beats.y, cfg.class_weights)
    offsets = logit_offsets(beats.y, cfg.logit_adjustment, cfg.logit_adjustment_floor)
    attack, loss_fn = make_objective(
        model, cfg, None if weights is None else weights.to(device), None if offsets is None else offsets.to(device)
    )
    # FedProx's anchor: the weights training starts from (in a federation, the round's global model).
    start = [p.detach().clone() for p in model.parameters()] if cfg.proximal_mu else []
    history = []
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        total_loss, correct, seen = 0.0, 0, 0
        for batch in epoch_order(y, cfg.sampling).split(cfg.batch_size):
            xb, yb = x[batch], y[batch]
            if attack is not None:
                xb = torch.cat([xb, perturb(attack, xb, yb)])
            model.train()
            optimizer.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            if cfg.proximal_mu:
                loss = loss + cfg.proximal_mu / 2 * proximal_distance(model, start)
            loss.backward()
            optimizer.step()
            seen_labels = yb.repeat(len(logits) // len(yb))  # adversarial: the labels of concat(x, x')
            total_loss += loss.item() * len(seen_labels)
            correct += int((logits.argmax(1) == seen_labels).sum())
            seen += len(seen_labels)
        stats = EpochStats(epoch, total_loss / seen, correct / seen, seen, time.perf_counter() - started)
        history.append(stats)
        if on_epoch:
            on_epoch(stats)
    return history
