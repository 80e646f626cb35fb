"""`ecg-fat bench`: how fast the pipeline is here, measured side by side in one run.

Every speed is a ratio of two things measured in the same run on the same machine, each in a fresh
Python process so that one's allocator or thread settings cannot leak into the other:

- training step: the project's `train()` (torchattacks PGD, parameters frozen, PairMaxPool, tuned
  allocator) against a plain loop around torchattacks' PGD on the model with nn.MaxPool1d and the
  default allocator, on the same windows from the same seed; the robust accuracy each trained model
  gives on the same test windows must agree (the computations are the same: tests/test_bench.py);
- PGD-20 alone, one speed-up at a time, and with bf16 autocast, which pays only on hardware with bf16
  units (so every attack here stays in fp32);
- the full 5-condition evaluation of the test set, the project's against the library pooling with the
  default allocator;
- federation overhead: a real TLS federation (3 nodes, 2 rounds) against the same training and
  evaluation done in one process;
- scale: time per round and peak resident memory per SuperNode with 10 and 20 SuperNodes.

Real MIT-BIH records are used when present; otherwise synthetic WFDB records, and the output says so.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchattacks
import wfdb
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from common.config import EvalConfig, FederationConfig, PrepareConfig, TrainConfig
from common.data import TEST_FILE, Beats, Manifest, load_beats, prepare, up_to_date
from common.metrics import evaluate, predict
from common.model import EcgCnn, build_model
from common.train import train
from ecg_fat.federate import FederateOptions, default_threads, federate
from ecg_fat.launcher import LocalFederation, descendants
from server.results import Results

log = logging.getLogger("ecg_fat")

SECTIONS = ("train", "attack", "evaluate", "federation", "scale")


class BenchError(RuntimeError):
    """A measurement could not be made (a worker or a federation failed); the message says where to look."""


GLIBC_TUNABLES = "GLIBC_TUNABLES"


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does; `quick` keeps the whole benchmark to a few minutes."""

    train_windows: int  # windows trained in the training-step comparison
    train_epochs: int  # adversarial epochs timed in the training-step comparison
    robust_test_windows: int  # test windows for the robust accuracy of those models
    repeats: int  # alternating measurements of each training variant (best one kept)
    attack_windows: int
    eval_windows: int | None  # None: the whole test set
    federation_train_windows: int
    federation_test_windows: int
    scale_train_windows: int
    scale_test_windows: int
    scale_nodes: tuple[int, ...] = (10, 20)
    # Clean epochs before the timed adversarial ones (untimed, the same for both loops): a few hundred steps of
    # FAT from random weights leave a model that answers the majority class, whose comparison would show nothing.
    train_warmup_epochs: int = 3


# A scale round whose replies have not all come in by then counts the missing ones as failures (and says
# so), instead of Flower's default of waiting an hour.
SCALE_ROUND_TIMEOUT = 600.0
QUICK = Sizes(640, 2, 500, 1, 512, 2_000, 300, 300, 100, 200)
FULL = Sizes(3_200, 3, 2_000, 2, 2_048, None, 1_500, 1_500, 300, 1_000)


@dataclass(frozen=True)
class BenchOptions:
    mitdb: Path | None  # None: synthetic records
    workdir: Path
    sizes: Sizes = FULL
    sections: tuple[str, ...] = SECTIONS


# ---------------------------------------------------------------------------------------- data


def write_synthetic_records(directory: Path, records: int = 12, beats: int = 900, seed: int = 0) -> Path:
    """WFDB records of noisy synthetic beats, one AAMI-class shape per symbol (for machines without MIT-BIH)."""
    rng = np.random.default_rng(seed)
    symbols, shapes = ["N", "A", "V", "F", "/"], [1.0, 0.7, -1.2, 0.4, 1.6]
    probabilities = [0.8, 0.05, 0.08, 0.02, 0.05]
    directory.mkdir(parents=True, exist_ok=True)
    t = np.arange(-90, 90)
    for r in range(records):
        classes = rng.choice(len(symbols), size=beats, p=probabilities)
        samples = 200 + 300 * np.arange(beats)
        signal = 0.05 * rng.standard_normal(samples[-1] + 300)
        for sample, cls in zip(samples, classes, strict=True):
            width = 6 + 4 * cls
            signal[sample - 90 : sample + 90] += shapes[cls] * np.exp(-(t**2) / (2 * width**2))
        wfdb.wrsamp(
            str(100 + r), fs=360, units=["mV"], sig_name=["MLII"], p_signal=signal[:, None], fmt=["212"],
            write_dir=str(directory),
        )  # fmt: skip
        wfdb.wrann(str(100 + r), "atr", samples, symbol=[symbols[c] for c in classes], write_dir=str(directory))
    return directory


def source_records(options: BenchOptions) -> tuple[Path, str]:
    if options.mitdb is not None and (options.mitdb / "100.hea").is_file():
        return options.mitdb, f"MIT-BIH records in {options.mitdb}"
    log.warning(
        "no MIT-BIH records in %s: using synthetic WFDB records (speeds only, not the paper's task)", options.mitdb
    )
    return write_synthetic_records(options.workdir / "synthetic-records"), "synthetic records (no MIT-BIH found)"


def prepared(source: Path, out: Path, clients: int) -> Path:
    settings = PrepareConfig(clients=clients)
    if up_to_date(out, source, settings) is None:
        prepare(source, out, settings)
    return out


# ------------------------------------------------------------------------------ worker processes


def run_worker(task: str, params: dict, tuned: bool, threads: int) -> dict:
    """Run one measurement in a fresh Python process; its JSON result is the last line it prints."""
    env = {k: v for k, v in os.environ.items() if k != GLIBC_TUNABLES}
    params = {**params, "tuned": tuned, "threads": threads}
    done = subprocess.run(
        [sys.executable, "-m", "ecg_fat.bench_worker", task, json.dumps(params)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"benchmark worker {task} failed (exit {done.returncode}): {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ sections


def bench_limit(threads: int) -> dict:
    """The machine's own limit, measured in this run: fp32 and bf16 matrix products with the bench's threads."""
    return run_worker("limit", {}, True, threads)


def bench_train(data: Path, sizes: Sizes, threads: int) -> dict:
    params = {
        "shard": str(data / "client_00.npz"), "test": str(data / TEST_FILE),
        "train_windows": sizes.train_windows, "epochs": sizes.train_epochs, "test_windows": sizes.robust_test_windows,
        "warmup_epochs": sizes.train_warmup_epochs,
    }  # fmt: skip
    models = {variant: data.parent / f"bench-model-{variant}.pt" for variant in ("reference", "project")}
    runs: dict[str, list[dict]] = {"reference": [], "project": []}
    for _ in range(sizes.repeats):  # alternate, so that drift of the machine hits both alike
        for variant, tuned in (("reference", False), ("project", True)):
            done = run_worker("train", {**params, "save": str(models[variant]), "variant": variant}, tuned, threads)
            runs[variant].append(done)
    best = {v: max(r, key=lambda row: row["windows_per_second"]) for v, r in runs.items()}
    return {
        "train_windows": sizes.train_windows,
        "epochs": sizes.train_epochs,
        "warmup_epochs": sizes.train_warmup_epochs,
        "batch_size": TrainConfig().batch_size,
        "reference": best["reference"],
        "project": best["project"],
        "speedup": best["project"]["windows_per_second"] / best["reference"]["windows_per_second"],
        "robust_accuracy_difference_points": 100
        * abs(best["project"]["robust_accuracy"] - best["reference"]["robust_accuracy"]),
        **compare_models(models["reference"], models["project"], load_beats(data / TEST_FILE), sizes),
    }


def compare_models(reference: Path, project: Path, test: Beats, sizes: Sizes) -> dict:
    """The two trained models side by side: their weights, their clean predictions on the same test windows,
    and how far the project's beats always answering the majority class (else the comparison shows nothing)."""
    states = [torch.load(path, weights_only=True) for path in (reference, project)]
    weights = max(float((states[0][k] - states[1][k]).abs().max()) for k in states[0])
    windows = test.subsample(sizes.robust_test_windows, 0)
    x = torch.from_numpy(windows.x)
    predictions = [predict(_with_state(state), x, EvalConfig().batch_size).numpy() for state in states]
    majority = np.bincount(windows.y).max() / len(windows.y)
    return {
        "weights_max_abs_difference": weights,
        "prediction_agreement": float((predictions[0] == predictions[1]).mean()),
        "majority_share": float(majority),
        "points_above_majority": 100 * (float((predictions[1] == windows.y).mean()) - float(majority)),
    }


def bench_attack(data: Path, sizes: Sizes, threads: int) -> dict:
    params = {"test": str(data / TEST_FILE), "windows": sizes.attack_windows}
    variants = {  # name: (pooling, precision, tuned allocator)
        "nn.MaxPool1d, default allocator": ("library", "fp32", False),
        "nn.MaxPool1d, tuned allocator": ("library", "fp32", True),
        "PairMaxPool, tuned (project)": ("pair-max", "fp32", True),
        "PairMaxPool, tuned, bf16 autocast": ("pair-max", "bf16", True),
    }
    rows = {
        name: run_worker("attack", {**params, "pool": pool, "precision": precision}, tuned, threads)
        for name, (pool, precision, tuned) in variants.items()
    }
    base = rows["nn.MaxPool1d, default allocator"]["windows_per_second"]
    return {name: {**row, "ratio": row["windows_per_second"] / base} for name, row in rows.items()}


def bench_evaluate(data: Path, sizes: Sizes, threads: int) -> dict:
    model = data.parent / "bench-model-project.pt"
    if not model.exists():
        torch.save(build_model(0).state_dict(), model)
    params = {"test": str(data / TEST_FILE), "windows": sizes.eval_windows, "model": str(model)}
    reference = run_worker("evaluate", {**params, "pool": "library"}, False, threads)
    project = run_worker("evaluate", {**params, "pool": "pair-max"}, True, threads)
    return {"reference": reference, "project": project, "speedup": reference["seconds"] / project["seconds"]}


def in_process_federation(data: Path, cfg: FederationConfig) -> None:
    """What the federation computes, in one process: train the sampled shards in turn, FedAvg, evaluate."""
    shards = [load_beats(data / name) for name in Manifest.read(data).client_files][: cfg.nodes_per_round]
    test = load_beats(data / TEST_FILE).subsample(cfg.max_test_windows, cfg.seed)
    state = build_model(cfg.seed).state_dict()
    evaluate(_with_state(state), test, cfg.evaluate, torch.device("cpu"))
    for server_round in range(1, cfg.num_rounds + 1):
        updates = []
        for index, shard in enumerate(shards):
            beats = shard.subsample(cfg.max_train_windows, server_round + index)
            model = _with_state(state)
            train(model, beats, cfg.train.model_copy(update={"seed": server_round + index}), torch.device("cpu"))
            updates.append(
                RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"n": len(beats)})})
            )
        state = aggregate_arrayrecords(updates, "n").to_torch_state_dict()  # Flower's FedAvg arithmetic
        evaluate(_with_state(state), test, cfg.evaluate, torch.device("cpu"))


def _with_state(state: dict[str, torch.Tensor]) -> EcgCnn:
    model = EcgCnn()
    model.load_state_dict(state)
    return model


def run_federation(
    data: Path, workdir: Path, cfg: FederationConfig, watch: Callable[[LocalFederation], None] | None = None
) -> float:
    options = FederateOptions(
        workdir=workdir, source=None, data=data, threads_per_node=default_threads(cfg.nodes_per_round)
    )
    # The results directory is scratch: a rerun measures afresh instead of refusing to overwrite a run.
    shutil.rmtree(cfg.results_dir, ignore_errors=True)
    started = time.perf_counter()
    if federate(options, PrepareConfig(clients=cfg.num_nodes), cfg, watch=watch) != 0:
        raise BenchError(f"the benchmark federation failed; logs in {workdir / 'logs'}")
    return time.perf_counter() - started


def bench_federation(source: Path, workdir: Path, sizes: Sizes) -> dict:
    data = prepared(source, workdir / "data-3", clients=3)
    cfg = FederationConfig(
        num_rounds=2, num_nodes=3, nodes_per_round=3, train=TrainConfig(epochs=1),
        max_train_windows=sizes.federation_train_windows, max_test_windows=sizes.federation_test_windows,
        results_dir=str((workdir / "results-federation").resolve()),
    )  # fmt: skip
    federated = run_federation(data, workdir / "federation", cfg)
    started = time.perf_counter()
    in_process_federation(data, cfg)
    one_process = time.perf_counter() - started
    return {
        "nodes": 3, "rounds": 2, "train_windows_per_node": sizes.federation_train_windows,
        "test_windows": sizes.federation_test_windows, "federation_seconds": federated,
        "one_process_seconds": one_process, "overhead": federated / one_process,
    }  # fmt: skip


class MemoryWatch:
    """Peak memory of each SuperNode's process tree (SuperNode, SuperExec, ClientApp): resident (RSS, what one
    SuperNode alone on a machine needs) and proportional (PSS: pages shared between processes, torch's code
    among them, split between them; what each of several SuperNodes on one host costs)."""

    def __init__(self) -> None:
        self.peak: dict[str, int] = {}
        self.peak_pss: dict[str, int] = {}

    def __call__(self, federation: LocalFederation) -> None:
        for name, process in list(federation.processes.items()):
            if name.startswith("supernode"):
                tree = [process.pid, *descendants(process.pid)]
                self.peak[name] = max(self.peak.get(name, 0), sum(proc_kib(pid, "status", "VmRSS:") for pid in tree))
                pss = sum(proc_kib(pid, "smaps_rollup", "Pss:") for pid in tree)
                self.peak_pss[name] = max(self.peak_pss.get(name, 0), pss)


def proc_kib(pid: int, file: str, key: str) -> int:
    """A size in bytes from /proc/PID/FILE's line `key ... kB` (0 for a process that has gone)."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def bench_scale(source: Path, workdir: Path, sizes: Sizes) -> dict:
    rows = {}
    for nodes in sizes.scale_nodes:
        data = prepared(source, workdir / f"data-{nodes}", clients=nodes)
        results = workdir / f"results-scale-{nodes}"
        cfg = FederationConfig(
            num_rounds=2, num_nodes=nodes, nodes_per_round=nodes // 2, train=TrainConfig(epochs=1),
            max_train_windows=sizes.scale_train_windows, max_test_windows=sizes.scale_test_windows,
            results_dir=str(results.resolve()),
        )  # fmt: skip
        memory, seen = MemoryWatch(), RoundClock(results)
        cfg = cfg.model_copy(update={"round_timeout": SCALE_ROUND_TIMEOUT})

        def watch(federation: LocalFederation, memory: MemoryWatch = memory, seen: RoundClock = seen) -> None:
            memory(federation)
            seen()

        wall = run_federation(data, workdir / f"federation-{nodes}", cfg, watch=watch)
        peaks, pss = sorted(memory.peak.values()), sorted(memory.peak_pss.values())
        replies = Results(results).read_jsonl("clients")
        rows[str(nodes)] = {
            "nodes": nodes, "nodes_per_round": nodes // 2, "train_windows_per_node": sizes.scale_train_windows,
            "wall_seconds": wall, "seconds_per_round": seen.seconds_per_round(),
            "peak_rss_mb_max": peaks[-1] / 2**20, "peak_rss_mb_median": peaks[len(peaks) // 2] / 2**20,
            "peak_pss_mb_max": pss[-1] / 2**20, "peak_pss_mb_median": pss[len(pss) // 2] / 2**20,
            "failed_replies": sum(row["status"] != "ok" for row in replies), "replies": len(replies),
        }  # fmt: skip
    return rows


class RoundClock:
    """When each round's evaluation first appears in the results (polled with the run's progress)."""

    def __init__(self, results: Path) -> None:
        self.results, self.first_seen = Results(results), {}

    def __call__(self) -> None:
        for row in self.results.read_jsonl("metrics"):
            self.first_seen.setdefault(row["round"], time.monotonic())

    def seconds_per_round(self) -> float | None:
        rounds = sorted(self.first_seen)
        if len(rounds) < 2:
            return None
        return (self.first_seen[rounds[-1]] - self.first_seen[rounds[0]]) / (rounds[-1] - rounds[0])


# ----------------------------------------------------------------------------------- the run


def bench(options: BenchOptions, on_section: Callable[[str, dict], None] | None = None) -> dict:
    """Measure the sections in order; `on_section(name, report so far)` after each (to save partial results)."""
    options.workdir.mkdir(parents=True, exist_ok=True)
    source, source_text = source_records(options)
    data = prepared(source, options.workdir / "data", clients=10)
    threads = torch.get_num_threads()
    report: dict = {
        "data": source_text,
        "mode": {QUICK: "quick", FULL: "full"}.get(options.sizes, "custom"),
        "sizes": asdict(options.sizes),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": threads,
            "torch": torch.__version__,
            "torchattacks": torchattacks.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "sections": {},
        "section_seconds": {},
    }
    log.info("bench: measuring the machine's limit (fp32 and bf16 matrix products)")
    report["limit"] = bench_limit(threads)
    runners: dict[str, Callable[[], dict]] = {
        "train": lambda: bench_train(data, options.sizes, threads),
        "attack": lambda: bench_attack(data, options.sizes, threads),
        "evaluate": lambda: bench_evaluate(data, options.sizes, threads),
        "federation": lambda: bench_federation(source, options.workdir, options.sizes),
        "scale": lambda: bench_scale(source, options.workdir, options.sizes),
    }
    for section in options.sections:
        log.info("bench: measuring %s", section)
        started = time.perf_counter()
        report["sections"][section] = runners[section]()
        report["section_seconds"][section] = time.perf_counter() - started
        if on_section:
            on_section(section, report)
    return report


# Targets of issue 5 on a 2-core machine: (label, value from the report, comparison, target).
def target_rows(report: dict) -> list[tuple[str, float, str, float]]:
    s, rows = report["sections"], []
    if "train" in s:
        t = s["train"]
        rows.append(("training step speed-up over torchattacks loop", t["speedup"], ">=", 1.3))
        rows.append(("training step, % of the fp32 matmul rate", limit_share(report, t["project"]), ">=", 70.0))
        rows.append(("trained model above the majority class (points)", t["points_above_majority"], ">=", 5.0))
        rows.append(("the two trained models agree (% of predictions)", 100 * t["prediction_agreement"], ">=", 99.0))
        rows.append(("robust accuracy difference (points)", t["robust_accuracy_difference_points"], "<=", 0.5))
    if "evaluate" in s and report["sizes"]["eval_windows"] is None:
        rows.append(("full evaluation speed-up over torchattacks", s["evaluate"]["speedup"], ">=", 3.5))
    if "federation" in s:
        rows.append(("federation overhead (x one process)", s["federation"]["overhead"], "<=", 1.10))
    for nodes, row in s.get("scale", {}).items():
        rows.append((f"peak RSS per SuperNode, {nodes} nodes (MB)", row["peak_rss_mb_max"], "<=", 600.0))
    return rows


def limit_share(report: dict, measured: dict) -> float:
    """A measurement's FLOP rate as a percentage of this run's fp32 matrix-product rate."""
    return 100 * measured["gflops_per_second"] / report["limit"]["matmul_gflops"]["float32"]


def format_report(report: dict) -> str:
    s, limit = report["sections"], report["limit"]["matmul_gflops"]
    lines = [
        f"ecg-fat bench ({report['mode']}) on {report['data']}",
        f"machine: {json.dumps(report['machine'])}",
        f"limit: {report['limit']['matrix_size']}x{report['limit']['matrix_size']} matrix product, "
        f"fp32 {limit['float32']:.1f} GFLOP/s, bf16 {limit['bfloat16']:.1f} GFLOP/s "
        "(FLOP rates below: convolutions and matrix products counted by torch, % of fp32)",
        "",
    ]

    def flop_rate(measured: dict) -> str:
        return f"{measured['gflops_per_second']:6.1f} GFLOP/s ({limit_share(report, measured):4.1f}%)"

    if "train" in s:
        t = s["train"]
        lines += [
            f"training step, {t['train_windows']} windows x {t['epochs']} epoch(s) after {t.get('warmup_epochs', 0)} "
            f"clean, batch {t['batch_size']}, "
            f"{t['project']['mflops_per_window']:.0f} MFLOP per window (trained windows/s):",
            f"  torchattacks loop  {t['reference']['windows_per_second']:8.1f}   {flop_rate(t['reference'])}   "
            f"robust acc {100 * t['reference']['robust_accuracy']:.2f}%",
            f"  project train()    {t['project']['windows_per_second']:8.1f}   {flop_rate(t['project'])}   "
            f"robust acc {100 * t['project']['robust_accuracy']:.2f}%   speed-up {t['speedup']:.2f}x",
            f"  the two models: weights differ by at most {t['weights_max_abs_difference']:.2e}, "
            f"{100 * t['prediction_agreement']:.2f}% of clean predictions agree; clean accuracy "
            f"{t['points_above_majority']:+.2f} points over always answering the majority class "
            f"({100 * t['majority_share']:.2f}%)",
        ]
    if "attack" in s:
        lines.append("PGD-20 alone, batch 64 (windows/s):")
        lines += [
            f"  {n:34s} {r['windows_per_second']:8.1f}   {r['ratio']:.2f}x   {flop_rate(r)}"
            for n, r in s["attack"].items()
        ]
    if "evaluate" in s:
        e = s["evaluate"]
        lines.append(f"evaluation, 5 conditions, {e['project']['windows']} windows (s):")
        for name, label in (("reference", "nn.MaxPool1d, default allocator"), ("project", "project")):
            per = "  ".join(f"{c} {v:.1f}" for c, v in e[name]["per_condition"].items())
            lines.append(f"  {label:32s} {e[name]['seconds']:7.1f}   {flop_rate(e[name])}   ({per})")
        lines.append(f"  speed-up {e['speedup']:.2f}x")
    if "federation" in s:
        f = s["federation"]
        lines.append(
            f"federation, {f['nodes']} nodes x {f['rounds']} rounds over TLS: {f['federation_seconds']:.1f} s; "
            f"one process: {f['one_process_seconds']:.1f} s; overhead {f['overhead']:.2f}x"
        )
    for nodes, row in s.get("scale", {}).items():
        per_round = row["seconds_per_round"]
        lines.append(
            f"scale, {nodes} SuperNodes ({row['nodes_per_round']} per round): "
            f"{'n/a' if per_round is None else f'{per_round:.1f}'} s per round, peak RSS per SuperNode "
            f"{row['peak_rss_mb_median']:.0f} MB median, {row['peak_rss_mb_max']:.0f} MB max; peak PSS "
            f"{row['peak_pss_mb_median']:.0f} MB median, {row['peak_pss_mb_max']:.0f} MB max"
            + (f"; {row['failed_replies']} of {row['replies']} replies FAILED" if row["failed_replies"] else "")
        )
    lines += ["", "targets:"]
    for label, value, op, target in target_rows(report):
        met = value >= target if op == ">=" else value <= target
        gap = "met" if met else f"MISSED by {abs(value - target):.2f}"
        lines.append(f"  {label:48s} {value:9.2f}  target {op} {target:g}: {gap}")
    return "\n".join(lines)
