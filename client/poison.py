"""A malicious or broken participant, for experiments and tests of the server's defences.

Switched on by the node's own config (`poison`, a site's setting like its data path): a site that wants to
attack can change its code anyway, so this adds no power, only a reproducible attacker. "none" (the
default) returns the trained weights untouched.
"""

from __future__ import annotations

import torch

from common.config import AttackerConfig

Weights = dict[str, torch.Tensor]


def poisoned(trained: Weights, sent: Weights, node: AttackerConfig) -> Weights:
    """What this node replies instead of `trained`, given the global weights it was `sent`."""
    update = {name: trained[name] - sent[name] for name in trained}
    match node.poison:
        case "none":
            return trained
        case "scale":  # a boosted update, as in model replacement
            return {name: sent[name] + node.poison_scale * update[name] for name in trained}
        case "sign-flip":  # the update reversed: pushes the model away from what the data says
            return {name: sent[name] - update[name] for name in trained}
        case "nan":
            return {name: torch.full_like(t, float("nan")) for name, t in trained.items()}
        case "inf":
            return {name: torch.full_like(t, float("inf")) for name, t in trained.items()}
        case "wrong-keys":
            return {f"{name}.evil": t for name, t in trained.items()}
        case "wrong-shape":
            return {name: t.flatten()[:-1] for name, t in trained.items()}  # every array loses an element
        case "wrong-dtype":
            return {name: t.double() for name, t in trained.items()}
    raise AssertionError(node.poison)  # AttackerConfig admits only the cases above
