"""`ecg-fat`: the command line. Flags are validated here, once, into the models of common/config.py."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ValidationError

from common.config import CONDITIONS, EvalConfig, PrepareConfig, TrainConfig
from common.data import TEST_FILE, DataError, download_mitdb, load_beats, load_training_set, prepare
from common.metrics import evaluate, format_table
from common.model import build_model, pick_device
from common.train import EpochStats, train

log = logging.getLogger("ecg_fat")
Settings = TypeVar("Settings", bound=BaseModel)
DEFAULT_CACHE = Path.home() / ".cache" / "ecg-fat" / "mitdb"


class UsageError(Exception):
    """A flag's value failed validation; the message names the flag."""


def validated(model: type[Settings], values: dict[str, Any], flags: dict[str, str]) -> Settings:
    """Build `model` from the given values (None = default); errors name the flag, not the field."""
    nested: dict[str, Any] = {}
    for dotted, value in values.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        target = nested
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    try:
        return model.model_validate(nested)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        flag = flags.get(field, "--" + field.replace("_", "-"))
        raise UsageError(f"{flag}: {first['msg']} (got {first.get('input')!r})") from error


# ----------------------------------------------------------------------------- attack flags

ATTACK_FLAGS = {
    "pgd.eps": "--pgd-eps", "pgd.alpha": "--pgd-alpha", "pgd.steps": "--pgd-steps",
    "fgsm.eps": "--fgsm-eps",
    "cw.c": "--cw-c", "cw.kappa": "--cw-kappa", "cw.steps": "--cw-steps", "cw.lr": "--cw-lr",
    "bim.eps": "--bim-eps", "bim.alpha": "--bim-alpha", "bim.steps": "--bim-steps",
}  # fmt: skip


def add_attack_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "attacks",
        "evaluation attacks (defaults: the paper's PGD 8/255, 1/255, 20; FGSM 8/255; "
        "CW c 1, kappa 0, 50 steps, lr 0.01; BIM 8/255, 2/255, 10). Adversarial training uses the PGD values.",
    )
    for field, flag in ATTACK_FLAGS.items():
        kind = int if field.endswith("steps") else float
        group.add_argument(flag, type=kind, metavar=kind.__name__.upper(), help=f"{field} (default: paper)")
    group.add_argument("--eval-batch-size", type=int, help="evaluation batch size; CW depends on it (default 256)")
    group.add_argument("--conditions", nargs="+", choices=CONDITIONS, help="evaluation conditions (default: all five)")


def eval_config(args: argparse.Namespace) -> EvalConfig:
    values = {f"attacks.{field}": getattr(args, flag[2:].replace("-", "_")) for field, flag in ATTACK_FLAGS.items()}
    values |= {"batch_size": args.eval_batch_size, "seed": args.seed, "conditions": args.conditions}
    flags = {f"attacks.{field}": flag for field, flag in ATTACK_FLAGS.items()} | {"batch_size": "--eval-batch-size"}
    return validated(EvalConfig, values, flags)


# ----------------------------------------------------------------------------- prepare


def add_prepare(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "prepare",
        help="WFDB records -> beat windows -> test set + client shards",
        description="Read MIT-BIH (or any 360 Hz WFDB records with .atr beat annotations), cut a 180-sample "
        "window around every beat of an AAMI class, scale each to [0, 1], split into a test set and "
        "training shards, and write them with manifest.json to --out.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mitdb", type=Path, metavar="DIR", help="directory of WFDB records (.hea/.dat/.atr)")
    source.add_argument("--download", action="store_true", help="fetch mitdb from PhysioNet into --cache first")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"download cache (default {DEFAULT_CACHE})")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    parser.add_argument("--lead", help="signal index or name (default 0: the first signal, MLII in 45 of 48)")
    parser.add_argument(
        "--split",
        choices=["intra-patient", "inter-patient"],
        help="default intra-patient; inter-patient: de Chazal's DS1 records train, DS2 test (paced records excluded)",
    )
    parser.add_argument("--test-fraction", type=float, help="test share of an intra-patient split (default 0.2)")
    parser.add_argument("--clients", type=int, help="number of client shards (default 10)")
    parser.add_argument(
        "--partition",
        choices=["iid", "patient", "dirichlet"],
        help="iid (stratified, default), patient (whole records per shard), dirichlet (label skew)",
    )
    parser.add_argument("--alpha", type=float, help="Dirichlet concentration; smaller = more skew (default 0.5)")
    parser.add_argument("--seed", type=int, help="seed of the split and partition (default 42)")
    parser.set_defaults(run=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    lead = int(args.lead) if args.lead is not None and args.lead.isdigit() else args.lead
    cfg = validated(
        PrepareConfig,
        {
            "lead": lead,
            "split": args.split,
            "test_fraction": args.test_fraction,
            "clients": args.clients,
            "partition": args.partition,
            "alpha": args.alpha,
            "seed": args.seed,
        },
        {},
    )
    source = download_mitdb(args.cache) if args.download else args.mitdb
    manifest = prepare(source, args.out, cfg)
    print(
        f"{manifest['windows_total']} windows {manifest['class_counts']}: "
        f"{manifest['train_windows']} in {len(manifest['client_files'])} shards, "
        f"{manifest['test_windows']} in {args.out / TEST_FILE}"
    )
    return 0


# ----------------------------------------------------------------------------- train-local


def add_train_local(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train-local",
        help="train one model on one machine (the centralised reference) and evaluate it",
        description="Train the paper's CNN on one shard or on all training shards of a prepared directory, "
        "adversarially (Algorithm 1: each batch trains on concat(x, PGD(x))) or clean, then evaluate it on "
        "the test set clean and under PGD, FGSM, CW and BIM.",
    )
    parser.add_argument("--data", type=Path, required=True, metavar="DIR", help="output of `ecg-fat prepare`")
    parser.add_argument("--shard", metavar="FILE", help="train on this shard of DIR only (default: all shards)")
    parser.add_argument("--epochs", type=int, help="epochs (default 5)")
    parser.add_argument("--batch-size", type=int, help="training batch size (default 64)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    parser.add_argument(
        "--adversarial",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="adversarial training with PGD (default on; --no-adversarial trains clean)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling and attacks (default 0)")
    parser.add_argument("--max-train-windows", type=int, help="train on a random subset of this size")
    parser.add_argument("--max-test-windows", type=int, help="evaluate on a random subset of this size")
    parser.add_argument("--save", type=Path, metavar="FILE", help="write the trained weights here (.pt)")
    add_attack_flags(parser)
    parser.set_defaults(run=run_train_local)


def run_train_local(args: argparse.Namespace) -> int:
    pgd_values = {f"pgd.{k}": getattr(args, f"pgd_{k}") for k in ("eps", "alpha", "steps")}
    train_cfg = validated(
        TrainConfig,
        {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "adversarial": args.adversarial,
            "seed": args.seed,
            **pgd_values,
        },
        {f"pgd.{k}": f"--pgd-{k}" for k in ("eps", "alpha", "steps")},
    )
    eval_cfg = eval_config(args)
    for flag, value in (("--max-train-windows", args.max_train_windows), ("--max-test-windows", args.max_test_windows)):
        if value is not None and value < 1:
            raise UsageError(f"{flag}: must be at least 1 (got {value})")
    training = load_beats(args.data / args.shard) if args.shard else load_training_set(args.data)
    training = training.subsample(args.max_train_windows, args.seed)
    test = load_beats(args.data / TEST_FILE).subsample(args.max_test_windows, args.seed)
    device = pick_device()
    log.info(
        "training on %d windows (%s), %s, on %s",
        len(training),
        args.shard or "all shards",
        "adversarial (clean + PGD)" if train_cfg.adversarial else "clean",
        device,
    )

    def show_epoch(stats: EpochStats) -> None:
        log.info(
            "epoch %d/%d  loss %.4f  accuracy %.2f%%  %.0f windows/s",
            stats.epoch,
            train_cfg.epochs,
            stats.loss,
            100 * stats.accuracy,
            stats.windows / stats.seconds,
        )

    model = build_model(train_cfg.seed)
    train(model, training, train_cfg, device, on_epoch=show_epoch)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.save)
        log.info("weights written to %s", args.save)
    log.info("evaluating on %d test windows (batch %d)", len(test), eval_cfg.batch_size)
    results = evaluate(
        model,
        test,
        eval_cfg,
        device,
        on_condition=lambda c, m: log.info("  %-5s accuracy %.2f%%", c, 100 * m["accuracy"]),
    )
    print(format_table(results))
    return 0


# ----------------------------------------------------------------------------- entry point

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_prepare, add_train_local]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecg-fat",
        description="Federated adversarial training of an ECG beat classifier on MIT-BIH (Celik & Gullu, 2025).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UsageError as error:
        print(f"ecg-fat {args.command}: error: {error}", file=sys.stderr)
        return 2
    except DataError as error:
        print(f"ecg-fat {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ecg-fat {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
