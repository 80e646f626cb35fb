"""The paper's attacks, built on torchattacks.

torchattacks clamps to [0, 1] (our windows' range) and needs gradients, so attacks never run under
no_grad. The model's parameters are frozen while attacking: CW would otherwise leave gradients on
them, and no attack needs them (1.2x faster).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torchattacks
from torch import nn

from common.config import AttackSuite, BimConfig, CwConfig, FgsmConfig, PgdConfig


def pgd(model: nn.Module, cfg: PgdConfig) -> torchattacks.Attack:
    return torchattacks.PGD(model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, random_start=cfg.random_start)


def fgsm(model: nn.Module, cfg: FgsmConfig) -> torchattacks.Attack:
    return torchattacks.FGSM(model, eps=cfg.eps)


def cw(model: nn.Module, cfg: CwConfig) -> torchattacks.Attack:
    return torchattacks.CW(model, c=cfg.c, kappa=cfg.kappa, steps=cfg.steps, lr=cfg.lr)


def bim(model: nn.Module, cfg: BimConfig) -> torchattacks.Attack:
    return torchattacks.BIM(model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps)


def build_attacks(model: nn.Module, suite: AttackSuite) -> dict[str, torchattacks.Attack]:
    """The four evaluation attacks, keyed by condition name."""
    return {
        "pgd": pgd(model, suite.pgd),
        "fgsm": fgsm(model, suite.fgsm),
        "cw": cw(model, suite.cw),
        "bim": bim(model, suite.bim),
    }


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Parameters need no gradient while an attack runs; restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def perturb(attack: torchattacks.Attack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Adversarial examples for (x, y), with the attacked model frozen and gradients enabled."""
    with torch.enable_grad(), frozen(attack.model):
        return attack(x, y).detach()
