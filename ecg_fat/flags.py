"""Command-line flags built from the settings models: one table, no second default.

Each flag names the settings it sets (dotted, as in Flower's run config: `train.pgd.eps`). Its type,
choices, help and shown default come from the pydantic field, and an unset flag leaves the model's own
default in place. Values are validated once, by the model; an error names the flag.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from common.config import ConfigError

Settings = TypeVar("Settings", bound=BaseModel)


class UsageError(Exception):
    """A flag's value failed validation; the message names the flag."""


@dataclass(frozen=True)
class Flag:
    name: str  # e.g. "--local-epochs"
    keys: tuple[str, ...]  # the settings it sets, e.g. ("train.pgd.eps", "evaluate.attacks.pgd.eps")
    help: str | None = None  # else the first setting's description

    @property
    def dest(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")


def _flag(name: str, *keys: str, help: str | None = None) -> Flag:
    return Flag(name, keys, help)


# How records become shards (PrepareConfig).
PREPARE = [
    _flag("--lead", "lead"),
    _flag("--split", "split"),
    _flag("--test-fraction", "test-fraction"),
    _flag("--partition", "partition"),
    _flag("--alpha", "alpha"),
    _flag("--rhythm", "rhythm"),
]

# A run's settings (FederationConfig). The PGD flags set training's attack and the evaluated one alike.
ATTACKS = [
    *(_flag(f"--pgd-{k}", f"train.pgd.{k}", f"evaluate.attacks.pgd.{k}") for k in ("eps", "alpha", "steps")),
    _flag("--fgsm-eps", "evaluate.attacks.fgsm.eps"),
    *(_flag(f"--cw-{k}", f"evaluate.attacks.cw.{k}") for k in ("c", "kappa", "steps", "lr")),
    *(_flag(f"--bim-{k}", f"evaluate.attacks.bim.{k}") for k in ("eps", "alpha", "steps")),
    _flag("--eval-batch-size", "evaluate.batch-size"),
    _flag("--standard-windows", "evaluate.standard.windows"),
]
STANDARD_EVERY_ROUND = _flag("--standard-every-round", "evaluate.standard.every-round")
CONDITIONS = _flag("--conditions", "evaluate.conditions")
SEED = _flag("--seed", "seed", "train.seed", "evaluate.seed")
MAX_TEST = _flag("--max-test-windows", "max-test-windows")
TRAINING = [
    _flag("--batch-size", "train.batch-size"),
    _flag("--lr", "train.lr"),
    _flag("--adversarial", "train.adversarial"),
    _flag("--class-weights", "train.class-weights"),
    _flag("--weighted-half", "train.weighted-half"),
    _flag("--objective", "train.objective"),
    _flag("--trades-beta", "train.trades-beta"),
    _flag("--sampling", "train.sampling"),
    _flag("--logit-adjustment", "train.logit-adjustment"),
    _flag("--logit-adjustment-floor", "train.logit-adjustment-floor"),
    _flag("--max-train-windows", "max-train-windows"),
    MAX_TEST,
    SEED,
]
FEDERATION = [
    _flag("--nodes", "num-nodes"),
    _flag("--nodes-per-round", "nodes-per-round"),
    _flag("--rounds", "num-rounds"),
    _flag("--local-epochs", "train.epochs"),
    _flag("--round-timeout", "round-timeout"),
    _flag("--overlap-evaluation", "overlap-evaluation"),
    _flag("--proximal-mu", "train.proximal-mu"),
    _flag("--server-momentum", "server-momentum"),
    _flag("--server-lr", "server-lr"),
    _flag("--class-weighted-head", "class-weighted-head"),
]
DEFENCE = [
    _flag("--aggregation", "defence.aggregation"),
    _flag("--validate-updates", "defence.validate-updates"),
    _flag("--max-examples", "defence.max-examples"),
    _flag("--norm-factor", "defence.norm-factor"),
    _flag("--examples-factor", "defence.examples-factor"),
    _flag("--trim-fraction", "defence.trim-fraction"),
    _flag("--assumed-malicious", "defence.assumed-malicious"),
]
# A reproducible attacker for experiments with the defences (AttackerConfig, given to `federate --malicious`'s nodes).
ATTACKER = [
    _flag("--poison", "poison", help="what the malicious nodes send instead of their trained weights"),
    _flag("--poison-scale", "poison-scale"),
    _flag("--claim-examples", "claim-examples"),
]
LOCAL_EPOCHS = _flag("--epochs", "train.epochs", help="epochs")


def _field(model: type[BaseModel], key: str) -> tuple[Any, Any, str]:
    """The annotation, default and description of a dotted (kebab-case) setting of `model`."""
    *parents, leaf = key.replace("-", "_").split(".")
    default: Any = model.model_validate({})
    for part in parents:
        model, default = model.model_fields[part].annotation, getattr(default, part)
    info = model.model_fields[leaf]
    return info.annotation, getattr(default, leaf), info.description or leaf


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def add(parser: argparse.ArgumentParser | argparse._ArgumentGroup, model: type[BaseModel], flags: list[Flag]) -> None:
    """Add each flag with its setting's type, choices, description and default (shown, not set)."""
    for flag in flags:
        annotation, default, description = _field(model, flag.keys[0])
        help_text = f"{flag.help or description} (default {_shown(default)})"
        kwargs: dict[str, Any] = {"dest": flag.dest, "default": None, "help": help_text}
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = args
        elif origin is tuple:
            kwargs |= {"nargs": "+", "choices": typing.get_args(args[0]) or None}
        elif origin in (types.UnionType, typing.Union):  # e.g. a lead: an index or a name, kept as text
            kwargs["metavar"] = "VALUE"
        else:
            kwargs |= {"type": annotation, "metavar": annotation.__name__.upper()}
        parser.add_argument(flag.name, **kwargs)


def from_args(model: type[Settings], args: argparse.Namespace, flags: Iterable[Flag], **fixed: object) -> Settings:
    """The model from the flags given (unset ones keep the model's default) and the settings `fixed` by the
    command itself; an invalid value is named by its flag."""
    flags = list(flags)
    given = {key: getattr(args, f.dest) for f in flags for key in f.keys if getattr(args, f.dest) is not None}
    names = {key: f.name for f in flags for key in f.keys}
    try:
        return model.from_flat(given | {k.replace("_", "-"): v for k, v in fixed.items()}, "setting", names)  # type: ignore[attr-defined]
    except ConfigError as error:
        raise UsageError(str(error)) from error
