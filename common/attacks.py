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
from torchattacks.attack import Attack

from common.config import NUM_CLASSES, AttackSuite, AutoAttackConfig, BimConfig, CwConfig, FgsmConfig, PgdConfig


def pgd(model: nn.Module, cfg: PgdConfig) -> Attack:
    return torchattacks.PGD(model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, random_start=cfg.random_start)


def kl_pgd(model: nn.Module, cfg: PgdConfig) -> Attack:
    """TRADES' inner maximisation: PGD on KL(f(x) || f(x')), labels unused (torchattacks' TPGD)."""
    return torchattacks.TPGD(model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps)


def fgsm(model: nn.Module, cfg: FgsmConfig) -> Attack:
    return torchattacks.FGSM(model, eps=cfg.eps)


def cw(model: nn.Module, cfg: CwConfig) -> Attack:
    return torchattacks.CW(model, c=cfg.c, kappa=cfg.kappa, steps=cfg.steps, lr=cfg.lr)


def bim(model: nn.Module, cfg: BimConfig) -> Attack:
    return torchattacks.BIM(model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps)


def build_attacks(model: nn.Module, suite: AttackSuite) -> dict[str, Attack]:
    """The four evaluation attacks, keyed by condition name."""
    return {
        "pgd": pgd(model, suite.pgd),
        "fgsm": fgsm(model, suite.fgsm),
        "cw": cw(model, suite.cw),
        "bim": bim(model, suite.bim),
    }


def pgd_with_restarts(model: nn.Module, cfg: PgdConfig, restarts: int) -> Attack:
    """PGD from `restarts` random starts: each restart attacks the windows the ones before left unbroken."""
    if restarts == 1:
        return pgd(model, cfg)
    return torchattacks.MultiAttack([pgd(model, cfg) for _ in range(restarts)])


def image_shape(length: int) -> tuple[int, int]:
    """The most nearly square h x w = length (180: 12 x 15)."""
    h = max(d for d in range(1, int(length**0.5) + 1) if length % d == 0)
    return h, length // h


class _AsImage(nn.Module):
    """The model, fed (N, 1, h, w) images that are its (N, 1, length) windows reshaped."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.flatten(1).unsqueeze(1))


class OnWindowsAsImages(Attack):
    """An attack written for images (Square draws square patches) run on windows seen as h x w images.
    Reshaping changes no element, so the L-inf ball, and what any other attack does, stay the same."""

    def __init__(self, attack: Attack, model: nn.Module) -> None:
        super().__init__("OnWindowsAsImages", model)
        self.attack = attack

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h, w = image_shape(images[0].numel())
        return self.attack(images.reshape(len(images), 1, h, w), labels).reshape(images.shape)


def autoattack(model: nn.Module, cfg: AutoAttackConfig, seed: int) -> Attack:
    """AutoAttack's standard L-inf ensemble from torchattacks' components, with the reference step counts (see
    AutoAttackConfig); APGD-T and FAB-T target the other 4 classes."""
    image = _AsImage(model)
    common = {"norm": "Linf", "eps": cfg.eps, "n_restarts": 1, "seed": seed}
    ensemble = torchattacks.MultiAttack(
        [
            torchattacks.APGD(image, steps=cfg.apgd_steps, loss="ce", **common),
            torchattacks.APGDT(image, steps=cfg.apgd_t_steps, n_classes=NUM_CLASSES, **common),
            torchattacks.FAB(image, steps=cfg.fab_steps, multi_targeted=True, n_classes=NUM_CLASSES, **common),
            torchattacks.Square(image, n_queries=cfg.square_queries, **common),
        ]
    )
    return OnWindowsAsImages(ensemble, model)


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


def perturb(attack: Attack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Adversarial examples for (x, y), with the attacked model frozen and gradients enabled."""
    with torch.enable_grad(), frozen(attack.model):
        return attack(x, y).detach()
