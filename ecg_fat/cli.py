"""`ecg-fat`: the command line. Flags are validated here, once, into the models of common/config.py."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from certs.make_certs import CertificateError
from common.config import AttackerConfig, ConfigError, EvalConfig, FederationConfig, PrepareConfig
from common.data import (
    TEST_FILE,
    Beats,
    DataError,
    Manifest,
    download_mitdb,
    has_rhythm,
    load_beats,
    load_training_set,
    prepare,
    up_to_date,
)
from common.metrics import evaluate, evaluate_standard, format_table
from common.model import build_model, pick_device
from common.runtime import tune_allocator
from common.train import EpochStats, train
from ecg_fat import flags
from ecg_fat.bench import FULL, QUICK, SECTIONS, BenchError, BenchOptions, bench, format_report
from ecg_fat.export import export
from ecg_fat.federate import FederateOptions, default_threads, federate, submit
from ecg_fat.flags import UsageError
from ecg_fat.launcher import APP_DIR, ControlClient, LauncherError, app_bundle_sha256, approve
from ecg_fat.predict import (
    EXPORT_MODEL,
    EXPORT_SETTINGS,
    EXPORT_WEIGHTS,
    Classifier,
    ModelError,
    export_settings,
    predict_record,
    read_beats,
    records_at,
    summary,
    write_csv,
)
from ecg_fat.report import ReportError, write_report
from server.results import ResultsError

log = logging.getLogger("ecg_fat")
DEFAULT_CACHE = Path.home() / ".cache" / "ecg-fat" / "mitdb"
# Everything a user can cause ends as one line naming the file, value or flag (main, below).
USER_ERRORS = (DataError, LauncherError, ResultsError, ReportError, ConfigError, BenchError, CertificateError)


def local_path(text: str) -> Path:
    """A path flag made absolute once, here: no command depends on the directory it is started from
    (Flower's CLI and processes run in other working directories)."""
    return Path(text).expanduser().resolve()


def remote_path(text: str) -> Path:
    """A path as another machine (the SuperLink's container) sees it: it must be absolute already."""
    path = Path(text)
    if not path.is_absolute():
        raise argparse.ArgumentTypeError(f"must be an absolute path as the SuperLink sees it (got {text!r})")
    return path


def require_output_file(path: Path | None, flag: str, *, make_parent: bool = False) -> None:
    """Checked before the work starts: a file output that cannot be written would otherwise fail only after it."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give a file path")
    if make_parent:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a file where a directory must be, or no permission
            raise UsageError(f"{flag} {path}: cannot create its directory ({error.strerror})") from error
    elif not path.parent.is_dir():
        raise UsageError(f"{flag}: directory {path.parent} does not exist")


def evaluate_and_print(model: nn.Module, test: Beats, cfg: EvalConfig) -> dict[str, dict]:
    """Evaluate on the test set, log each condition as it ends, print the table."""
    log.info("evaluating on %d test windows (batch %d)", len(test), cfg.batch_size)

    def show(condition: str, m: dict) -> None:
        log.info("  %-5s accuracy %.2f%%  (%.1f s)", condition, 100 * m["accuracy"], m["seconds"])

    results = evaluate(model, test, cfg, pick_device(), on_condition=show)
    if cfg.standard.windows:
        log.info("AutoAttack and PGD-100 on a stratified subset of %d test windows", cfg.standard.windows)
        results |= evaluate_standard(model, test, cfg, pick_device(), on_condition=show)
    print(format_table(results))
    return results


def add_attack_flags(parser: argparse.ArgumentParser, with_conditions: bool) -> list[flags.Flag]:
    group = parser.add_argument_group("attacks", "the evaluation attacks (adversarial training uses the PGD values)")
    added = [*flags.ATTACKS, *([flags.CONDITIONS] if with_conditions else [])]
    flags.add(group, FederationConfig, added)
    return added


# ----------------------------------------------------------------------------- prepare


def add_source_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--mitdb", type=local_path, metavar="DIR", help="directory of WFDB records (.hea/.dat/.atr)")
    source.add_argument("--download", action="store_true", help="fetch mitdb from PhysioNet into --cache first")
    parser.add_argument(
        "--cache", type=local_path, default=DEFAULT_CACHE, help=f"download cache (default {DEFAULT_CACHE})"
    )


# `prepare` names the data seed --seed; `federate`, whose --seed seeds the run, names it --data-seed and
# takes the number of shards from --nodes.
PREPARE_FLAGS = [*flags.PREPARE, flags.Flag("--clients", ("clients",)), flags.Flag("--seed", ("seed",))]
FEDERATE_PREPARE_FLAGS = [*flags.PREPARE, flags.Flag("--data-seed", ("seed",))]


def source_dir(args: argparse.Namespace) -> Path | None:
    return download_mitdb(args.cache) if args.download else args.mitdb


def add_prepare(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "prepare",
        help="WFDB records -> beat windows -> test set + client shards",
        description="Read MIT-BIH (or any 360 Hz WFDB records with .atr beat annotations), cut a 180-sample "
        "window around every beat of an AAMI class, scale each to [0, 1], split into a test set and "
        "training shards, and write them with manifest.json to --out.",
    )
    add_source_flags(parser, required=True)
    parser.add_argument("--out", type=local_path, required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--node-dirs",
        type=local_path,
        metavar="DIR",
        help="also give each shard a directory of its own, DIR/node-NN/shard.npz, for a SuperNode container that "
        "mounts only its own (compose.yaml); a node directory beyond the shards is left without one",
    )
    flags.add(parser, PrepareConfig, PREPARE_FLAGS)
    parser.set_defaults(run=run_prepare)


def place_shards(prepared: Path, manifest: Manifest, node_dirs: Path) -> None:
    """DIR/node-NN/shard.npz for shard NN (a hard link, else a copy), and no shard.npz in any other node-*."""
    wanted = {
        node_dirs / f"node-{i:02d}" / "shard.npz": prepared / name for i, name in enumerate(manifest.client_files)
    }
    for stale in set(node_dirs.glob("node-*/shard.npz")) - set(wanted):
        stale.unlink()
    for target, shard in wanted.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(".shard.npz.tmp")
        temporary.unlink(missing_ok=True)
        try:
            os.link(shard, temporary)
        except OSError:  # another file system
            shutil.copy2(shard, temporary)
        os.replace(temporary, target)


def run_prepare(args: argparse.Namespace) -> int:
    cfg = flags.from_args(PrepareConfig, args, PREPARE_FLAGS)
    manifest = up_to_date(args.out, args.cache if args.download else args.mitdb, cfg)
    if manifest is None:
        manifest = prepare(source_dir(args), args.out, cfg)
    else:
        log.info("%s holds this data already (same records, settings and intact files): nothing to do", args.out)
    if args.node_dirs:
        place_shards(args.out, manifest, args.node_dirs)
    print(
        f"{manifest.windows_total} windows {manifest.class_counts}: "
        f"{manifest.train_windows} in {len(manifest.client_files)} shards, "
        f"{manifest.test_windows} in {args.out / TEST_FILE}"
    )
    return 0


# ----------------------------------------------------------------------------- federate


def add_run_flags(
    parser: argparse.ArgumentParser, results: Callable[[str], Path], results_help: str
) -> list[flags.Flag]:
    """The federated run's settings, shared by `federate` (local) and `submit` (to a running SuperLink)."""
    parser.add_argument("--results", type=results, metavar="DIR", help=results_help)
    parser.add_argument("--resume", action="store_true", help="continue the run in --results from its last checkpoint")
    run_flags = [*flags.FEDERATION, *flags.TRAINING]
    flags.add(parser, FederationConfig, run_flags)
    defence = parser.add_argument_group("defence", "what the server does against a broken or malicious update")
    flags.add(defence, FederationConfig, flags.DEFENCE)
    run_flags += flags.DEFENCE
    run_flags += add_attack_flags(parser, with_conditions=False)  # a federated run evaluates all five
    flags.add(parser, FederationConfig, [flags.STANDARD_EVERY_ROUND])
    return [*run_flags, flags.STANDARD_EVERY_ROUND]


def run_config(args: argparse.Namespace, results: Path, test_path: Path) -> FederationConfig:
    """The validated run config from `add_run_flags`' flags; errors name the flag."""
    return flags.from_args(
        FederationConfig, args, args.run_flags, results_dir=str(results), test_path=str(test_path), resume=args.resume
    )


def default_results(args: argparse.Namespace, parent: Path) -> Path:
    return parent / ("baseline" if args.adversarial is False else "fat")


def add_federate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "federate",
        help="run the whole federation on this machine: SuperLink + SuperNodes over TLS gRPC",
        description="Prepare the data if needed, make certificates and node keys if missing, start a Flower "
        "SuperLink (TLS, node authentication) and one SuperNode process per client shard, run federated "
        "(adversarial) training with robust evaluation after every round, write the results directory, and "
        "stop every process. Defaults: the paper's protocol (10 nodes, 5 per round, 10 rounds, 5 local "
        "epochs, adversarial training). Exit code 0 only when the run completed.",
    )
    add_source_flags(parser, required=False)
    parser.add_argument(
        "--workdir",
        type=local_path,
        default=".ecg-fat",
        help="certificates, node keys and logs (default .ecg-fat)",
    )
    parser.add_argument(
        "--data",
        type=local_path,
        metavar="DIR",
        help="prepared data (default WORKDIR/data); "
        "prepared there from --mitdb/--download when missing or made with other settings",
    )
    run_flags = add_run_flags(
        parser, local_path, "results directory (default results/fat, or results/baseline with --no-adversarial)"
    )
    parser.add_argument(
        "--threads-per-node", type=int, help="torch threads per SuperNode (default: cores / nodes per round)"
    )
    flags.add(parser, PrepareConfig, FEDERATE_PREPARE_FLAGS)
    experiments = parser.add_argument_group(
        "experiments", "malicious participants, to measure the defences (docs/results/poisoning)"
    )
    experiments.add_argument(
        "--malicious",
        type=int,
        default=0,
        metavar="INT",
        help="the nodes with partition ids 0..INT-1 attack as --poison and --claim-examples say (default 0)",
    )
    flags.add(experiments, AttackerConfig, flags.ATTACKER)
    parser.set_defaults(run=run_federate, run_flags=run_flags)


def run_federate(args: argparse.Namespace) -> int:
    data = args.data or args.workdir / "data"
    cfg = run_config(args, args.results or default_results(args, local_path("results")), data / TEST_FILE)
    prepare_cfg = flags.from_args(PrepareConfig, args, FEDERATE_PREPARE_FLAGS, clients=cfg.num_nodes)
    attacker = flags.from_args(AttackerConfig, args, flags.ATTACKER)
    if not 0 <= args.malicious <= cfg.num_nodes:
        raise UsageError(f"--malicious {args.malicious}: must be between 0 and --nodes ({cfg.num_nodes})")
    if args.malicious and attacker == AttackerConfig():
        raise UsageError(f"--malicious {args.malicious}: say how they attack with --poison or --claim-examples")
    options = FederateOptions(
        workdir=args.workdir,
        source=source_dir(args) if (args.mitdb or args.download) else None,
        data=data,
        threads_per_node=args.threads_per_node or default_threads(cfg.nodes_per_round),
        malicious=args.malicious,
        attacker=attacker,
    )
    return federate(options, prepare_cfg, cfg)


# ----------------------------------------------------------------------------- submit


def add_submit(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "submit",
        help="register node keys with a running SuperLink, submit a run, follow it to its end",
        description="For a SuperLink that runs already (the compose `runner`, or the server of a deployment "
        "across hospitals): register every SuperNode public key in --keys, wait until --nodes SuperNodes are "
        "connected, submit the run, print its progress round by round, write summary.txt to the results "
        "directory, and exit 0 only when the run completed. --results and --test-path are paths as the "
        "SuperLink's ServerApp sees them.",
    )
    parser.add_argument("--superlink", default="superlink:8000", help="Control API address (default superlink:8000)")
    parser.add_argument("--ca", type=local_path, required=True, help="the federation's CA certificate (ca.crt)")
    parser.add_argument("--keys", type=local_path, metavar="DIR", help="register every *.pub SuperNode key in DIR")
    parser.add_argument("--test-path", type=remote_path, required=True, help="the test set (test.npz) on the SuperLink")
    parser.add_argument(
        "--ready-file", type=local_path, help="touch this file once every key is registered (healthcheck)"
    )
    parser.add_argument("--connect-timeout", type=float, default=600.0, help="seconds to wait for the nodes")
    parser.add_argument(
        "--home", type=local_path, default=Path.home() / ".flwr", help="flwr CLI home (default ~/.flwr)"
    )
    run_flags = add_run_flags(
        parser, remote_path, "results directory on the SuperLink (default /results/fat or /results/baseline)"
    )
    parser.set_defaults(run=run_submit, run_flags=run_flags)


def run_submit(args: argparse.Namespace) -> int:
    cfg = run_config(args, args.results or default_results(args, Path("/results")), args.test_path)
    keys = sorted(args.keys.glob("*.pub")) if args.keys else []
    return submit(ControlClient(args.superlink, args.ca, args.home), cfg, keys, args.connect_timeout, args.ready_file)


# ----------------------------------------------------------------------------- train-local


def add_train_local(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train-local",
        help="train one model on one machine (the centralised reference) and evaluate it",
        description="Train the paper's CNN on one shard or on all training shards of a prepared directory, "
        "adversarially (Algorithm 1: each batch trains on concat(x, PGD(x))) or clean, then evaluate it on "
        "the test set clean and under PGD, FGSM, CW and BIM.",
    )
    parser.add_argument("--data", type=local_path, required=True, metavar="DIR", help="output of `ecg-fat prepare`")
    parser.add_argument("--shard", metavar="FILE", help="train on this shard of DIR only (default: all shards)")
    parser.add_argument("--save", type=local_path, metavar="FILE", help="write the trained weights here (.pt)")
    local_flags = [flags.LOCAL_EPOCHS, *flags.TRAINING]
    flags.add(parser, FederationConfig, local_flags)
    local_flags += add_attack_flags(parser, with_conditions=True)
    parser.set_defaults(run=run_train_local, local_flags=local_flags)


def run_train_local(args: argparse.Namespace) -> int:
    cfg = flags.from_args(FederationConfig, args, args.local_flags)
    require_output_file(args.save, "--save", make_parent=True)
    train_cfg = cfg.train
    if args.shard:
        training = load_beats(args.data / args.shard).subsample(cfg.max_train_windows, cfg.seed)
    else:  # --max-train-windows is per shard, as in a federation
        training = load_training_set(args.data, cfg.max_train_windows, cfg.seed)
    test = load_beats(args.data / TEST_FILE).subsample(cfg.max_test_windows, cfg.seed)
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

    model = build_model(train_cfg.seed, rhythm=has_rhythm(training))
    train(model, training, train_cfg, device, on_epoch=show_epoch)
    if args.save:
        torch.save(model.state_dict(), args.save)
        log.info("weights written to %s", args.save)
    evaluate_and_print(model, test, cfg.evaluate)
    return 0


# ----------------------------------------------------------------------------- evaluate


def add_evaluate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="evaluate saved weights on a test set, clean and under the attacks",
        description="Load saved weights (a run's final_model.pt or checkpoints/round_NNN.pt, or train-local "
        "--save) and evaluate them on a prepared test set clean and under PGD, FGSM, CW and BIM (and, with "
        "--standard-windows, AutoAttack and PGD-100 with restarts), with any attack setting or evaluation batch "
        "size: how a result depends on them, without training again.",
    )
    parser.add_argument(
        "--model", type=local_path, required=True, metavar="FILE", help="weights (.pt, a state dict) or an export"
    )
    parser.add_argument(
        "--test", type=local_path, required=True, metavar="FILE", help="test set, e.g. WORKDIR/data/test.npz"
    )
    parser.add_argument("--json", type=local_path, metavar="PATH", help="also write the metrics as JSON")
    evaluate_flags = [flags.MAX_TEST, flags.SEED]
    flags.add(parser, FederationConfig, evaluate_flags)
    evaluate_flags += add_attack_flags(parser, with_conditions=True)
    parser.set_defaults(run=run_evaluate, evaluate_flags=evaluate_flags)


def load_classifier(path: Path) -> tuple[Classifier, dict]:
    """The weights and, for an export, the preprocessing it records; a bad file is one line naming it."""
    try:
        return Classifier(path), export_settings(path)
    except ModelError as error:
        raise UsageError(f"--model {error}") from error


def run_evaluate(args: argparse.Namespace) -> int:
    run = flags.from_args(FederationConfig, args, args.evaluate_flags)
    cfg = run.evaluate
    require_output_file(args.json, "--json")
    model = load_classifier(args.model)[0].module
    test = load_beats(args.test).subsample(run.max_test_windows, run.seed)
    if test.x.shape[-1] != model.input_length:
        raise UsageError(
            f"--test {args.test}: windows of {test.x.shape[-1]} values, but --model reads {model.input_length} "
            f"({'window + RR features: a test set prepared with --rhythm' if model.rhythm else 'the window only'})"
        )
    log.info("weights %s, test set %s", args.model, args.test)
    results = evaluate_and_print(model, test, cfg)
    if args.json:
        config = cfg.model_dump(mode="json", by_alias=True)  # as in a run's config.json
        saved = {"model": str(args.model), "windows": len(test), "config": config, "results": results}
        args.json.write_text(json.dumps(saved, indent=2) + "\n")
    return 0


# ----------------------------------------------------------------------------- report


def add_report(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report",
        help="the paper's tables and figures from results directories",
        description="Read one or more results directories and write report.md (tables like the paper's Tables "
        "2-5 with the paper's values beside them, per-class recall, a summary of FAT's cost and gains, the cells "
        "more than 1.5 points from the paper) and one PNG per condition (accuracy, precision, recall, F1 against "
        "the round, a line per run). A directory of results directories that differ only in their seed is one arm: "
        "every cell is then the mean +- sample standard deviation over its seeds, and the figures shade the spread.",
    )
    parser.add_argument(
        "results",
        nargs="+",
        type=local_path,
        metavar="RESULTS_DIR",
        help="results directories, or directories of the seeds of one arm (e.g. runs/fat/seed-0, seed-1, seed-2)",
    )
    parser.add_argument("--out", type=local_path, default="report", help="output directory (default report)")
    parser.add_argument(
        "--discussion",
        type=local_path,
        metavar="FILE",
        help="Markdown explaining the differences from the paper, placed under the list of cells more than "
        "1.5 points away (kept across regenerations of the report)",
    )
    parser.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    discussion = None
    if args.discussion is not None:
        if not args.discussion.is_file():
            raise UsageError(f"--discussion {args.discussion}: no such file")
        discussion = args.discussion.read_text()
    markdown = write_report(args.results, args.out, discussion)
    print(f"report written to {markdown.with_suffix('.html')} (one self-contained page) and {markdown}")
    return 0


# ----------------------------------------------------------------------------- predict and export


def add_predict(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict",
        help="classify every beat of a WFDB record (or a directory of them) with a trained model",
        description="Read a WFDB record with wfdb, find its beats from its .atr annotations (or, without "
        "them, with wfdb's XQRS detector), resample it to 360 Hz if it is at another rate, window and scale "
        "every beat as training did, and write one row per beat (sample, time, predicted AAMI class, class "
        "probabilities) to --out, with a per-class summary; for annotated records also the agreement "
        "(confusion matrix, per-class recall).",
    )
    parser.add_argument(
        "--model", type=local_path, required=True, metavar="FILE",
        help="weights (a run's final_model.pt) or an `ecg-fat export` directory (its weights.pt and lead)",
    )  # fmt: skip
    parser.add_argument(
        "--record", type=local_path, required=True, metavar="PATH",
        help="a record (path without extension, or its .hea) or a directory of records",
    )  # fmt: skip
    parser.add_argument("--lead", help="signal name or index, or auto (default: the export's lead, else auto)")
    parser.add_argument("--out", type=local_path, metavar="CSV", help="write one row per beat here")
    parser.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    classifier, settings = load_classifier(args.model)
    given = args.lead if args.lead is not None else settings.get("lead")
    lead = PrepareConfig(**({"lead": given} if given is not None else {})).lead  # validated; unset: auto
    require_output_file(args.out, "--out")
    rows = []
    for record in records_at(args.record):
        beats = read_beats(record, lead, PrepareConfig().window)
        log.info("%s: %d beats from its %s", record, len(beats.samples), beats.source)
        rows += predict_record(classifier, beats)
    if args.out:
        write_csv(args.out, rows)
        log.info("one row per beat written to %s", args.out)
    print(summary(rows))
    return 0


def add_export(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help="the model as one torch.export program that scales raw windows itself, with settings and provenance",
        description="Write OUT/model.pt2, a torch.export program that takes raw beat windows (n, 1, 180; 184 with "
        "the beat's RR features after the window for a model trained with --rhythm) and "
        "returns class logits (it min-max scales each window itself, as training did), OUT/weights.pt (a copy "
        "of --model) and OUT/settings.json: the preprocessing (sampling rate, window, scaling, lead), the "
        "classes and the run's provenance (config, metrics at the last round, the weights' sha256, code version) "
        "when the weights lie in a results directory. Any program with torch runs model.pt2 "
        "(torch.export.load, which unpickles: load only exports you trust); `ecg-fat predict --model OUT` "
        "reads weights.pt as weights only, so an export from anyone is safe there.",
    )
    parser.add_argument("--model", type=local_path, required=True, metavar="FILE", help="weights (.pt)")
    parser.add_argument("--out", type=local_path, required=True, metavar="DIR", help="output directory")
    parser.add_argument("--lead", help="the lead the model was trained on, recorded for predict (default auto)")
    parser.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    lead = PrepareConfig(**({"lead": args.lead} if args.lead is not None else {})).lead
    try:
        out = export(args.model, args.out, lead, PrepareConfig().window)
    except ModelError as error:
        raise UsageError(f"--model {error}") from error
    print(f"exported to {out}: {EXPORT_MODEL}, {EXPORT_WEIGHTS}, {EXPORT_SETTINGS}")
    return 0


# ----------------------------------------------------------------------------- approve


def add_approve(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "approve",
        help="approve an app version at this site: its bundle's sha256 into the site's approved list",
        description="A site's SuperNode (ecg-fat-supernode --approved-apps FILE) runs only the app bundles "
        "whose sha256 is in FILE. Without --sha256 this approves the app of this installation (the bundle "
        "`flwr run` sends for it, as built from this checkout) and prints its sha256, to compare with the "
        "one the consortium announces for a release; --sha256 approves an announced one as given.",
    )
    parser.add_argument("--file", type=local_path, required=True, metavar="FILE", help="the site's approved list")
    parser.add_argument("--sha256", help="approve this bundle sha256 (default: this installation's app)")
    parser.set_defaults(run=run_approve)


def run_approve(args: argparse.Namespace) -> int:
    digest = (args.sha256 or app_bundle_sha256()).lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise UsageError(f"--sha256: not a sha256 sum (64 hex digits): {args.sha256!r}")
    label = "announced" if args.sha256 else f"ecg-fat {importlib.metadata.version('ecg-fat')} from {APP_DIR}"
    added = approve(args.file, digest, label)
    print(f"{digest} {'approved' if added else 'was approved already'} in {args.file}")
    return 0


# ----------------------------------------------------------------------------- bench


def add_bench(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure speed side by side: training step, attacks, evaluation, federation overhead, scale",
        description="Measure, in one run and each in a fresh process, the project's adversarial training step "
        "against a plain torchattacks loop (speed and robust accuracy), PGD-20 with and without the tuned "
        "allocator and bf16, the full 5-condition evaluation, a 3-node TLS federation against the same work "
        "in one process, and time per round and memory per SuperNode with 10 and 20 SuperNodes. Prints "
        "ratios and the targets they meet or miss; the full run takes about half an hour on 2 cores.",
    )
    parser.add_argument(
        "--mitdb", type=local_path, metavar="DIR",
        help="MIT-BIH records; without them (or where they are missing) synthetic WFDB records are used, and said",
    )  # fmt: skip
    parser.add_argument("--workdir", type=local_path, default=".ecg-fat/bench", help="scratch (default .ecg-fat/bench)")
    parser.add_argument("--quick", action="store_true", help="smaller workloads: a few minutes in all")
    parser.add_argument("--json", type=local_path, metavar="PATH", help="also write the measurements as JSON")
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="SECTION",
        help=f"measure only these sections ({', '.join(SECTIONS)})",
    )  # fmt: skip
    parser.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    require_output_file(args.json, "--json")
    sections = tuple(s for s in SECTIONS if s in args.only)
    options = BenchOptions(args.mitdb, args.workdir, QUICK if args.quick else FULL, sections)

    def section_done(name: str, report: dict) -> None:
        log.info("bench: %s measured in %.0f s", name, report["section_seconds"][name])
        if args.json:  # after every section: a later failure or Ctrl-C keeps what was measured
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    report = bench(options, on_section=section_done)
    print(format_report(report))
    if args.json:
        print(f"measurements written to {args.json}")
    return 0


# ----------------------------------------------------------------------------- entry point

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_prepare,
    add_train_local,
    add_federate,
    add_submit,
    add_evaluate,
    add_report,
    add_predict,
    add_export,
    add_approve,
    add_bench,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecg-fat",
        description="Federated adversarial training of an ECG beat classifier on MIT-BIH (Celik & Gullu, 2025).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), raised like Ctrl-C so that every started process is stopped."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    tune_allocator()
    # Python's default for SIGTERM ends the process at once, skipping the `finally` that stops the SuperLink,
    # the SuperNodes and a running ServerApp: they would train on, orphaned.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.run(args)
    except Terminated:
        print(f"ecg-fat {args.command}: terminated", file=sys.stderr)
        return 143
    except UsageError as error:
        print(f"ecg-fat {args.command}: error: {error}", file=sys.stderr)
        return 2
    except USER_ERRORS as error:
        print(f"ecg-fat {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ecg-fat {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
