"""One measurement of `ecg-fat bench`, in a fresh Python process: `python -m ecg_fat.bench_worker TASK JSON`.

Each task prints its result as JSON on its last line. A fresh process per measurement keeps one
contender's allocator or thread settings from leaking into the other.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchattacks
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from common.attacks import perturb, pgd
from common.config import EvalConfig, PgdConfig, TrainConfig
from common.data import Beats, load_beats
from common.metrics import evaluate
from common.model import EcgCnn, build_model
from common.runtime import tune_allocator
from common.train import to_tensors, train


def library_pool() -> nn.Module:
    return nn.MaxPool1d(2)


def reference_train(model: nn.Module, beats: Beats, cfg: TrainConfig) -> None:
    """The plain loop a reader of torchattacks would write: PGD, then one Adam step on concat(x, adv)."""
    torch.manual_seed(cfg.seed)
    x, y = to_tensors(beats, torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    attack = torchattacks.PGD(
        model, eps=cfg.pgd.eps, alpha=cfg.pgd.alpha, steps=cfg.pgd.steps, random_start=cfg.pgd.random_start
    )
    for _ in range(cfg.epochs):
        for batch in torch.randperm(len(y)).split(cfg.batch_size):
            xb, yb = x[batch], y[batch]
            adversarial = attack(xb, yb)
            model.train()
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(torch.cat([xb, adversarial])), torch.cat([yb, yb]))
            loss.backward()
            optimizer.step()


class _WholeProgram:
    """FlopCounterMode's per-module tracker, reduced to the one total the bench needs. The real one hooks
    autograd in a way that `torch.autograd.grad` on an input (every attack's step) refuses."""

    parents = frozenset({"Global"})

    def __enter__(self) -> None:
        pass

    def __exit__(self, *args: object) -> None:
        pass


def flops_per_window(work: Callable[[], object], windows: int) -> float:
    """Floating-point operations per window of `work`, counted by torch from the layers it runs (convolutions
    and matrix products, forward and backward), not from a constant."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _WholeProgram()  # type: ignore[assignment]
    with counter:
        work()
    return counter.get_total_flops() / windows


def task_limit(params: dict) -> dict:
    """What this machine's cores do at best with these threads: GFLOP/s of a large matrix product, best of a
    few, in fp32 and in bf16 (which only hardware with bf16 units runs fast)."""
    n, rates = 1024, {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
        a @ b  # warm-up
        times: list[float] = []
        while len(times) < 5 and sum(times) < 3.0:  # bf16 without bf16 units: slow, a few tries are enough
            started = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - started)
        rates[str(dtype).removeprefix("torch.")] = 2 * n**3 / min(times) / 1e9
    return {"matmul_gflops": rates, "matrix_size": n}


def warmed_up(variant: str, beats: Beats, epochs: int) -> nn.Module:
    """The model from seed 0 after `epochs` clean epochs (the same weights for both variants: the two poolings
    are bit-identical), so that the timed adversarial epochs start from a model that has learnt something."""
    model = build_model(0) if variant == "project" else build_model(0, pool=library_pool)
    if epochs:
        train(model, beats, TrainConfig(epochs=epochs, adversarial=False), torch.device("cpu"))
    return model


def trained(variant: str, beats: Beats, cfg: TrainConfig, model: nn.Module | None = None) -> nn.Module:
    """`model` (default: seed 0's) trained adversarially by the project's `train()` or by the reference loop."""
    model = model if model is not None else warmed_up(variant, beats, 0)
    if variant == "reference":
        reference_train(model, beats, cfg)
    else:
        train(model, beats, cfg, torch.device("cpu"))
    return model


def task_train(params: dict) -> dict:
    shard = load_beats(Path(params["shard"])).subsample(params["train_windows"], 0)
    test = load_beats(Path(params["test"])).subsample(params["test_windows"], 0)
    cfg = TrainConfig(epochs=params["epochs"])
    model = warmed_up(params["variant"], shard, params["warmup_epochs"])  # not timed
    started = time.perf_counter()
    trained(params["variant"], shard, cfg, model)
    seconds = time.perf_counter() - started
    torch.save(model.state_dict(), params["save"])
    robust = evaluate(model, test, EvalConfig(conditions=("clean", "pgd")), torch.device("cpu"))
    batch, one_epoch = shard.subsample(cfg.batch_size, 0), cfg.model_copy(update={"epochs": 1})
    flops = flops_per_window(lambda: trained(params["variant"], batch, one_epoch), len(batch))
    return {
        "windows_per_second": 2 * cfg.epochs * len(shard) / seconds,  # the optimiser sees clean + adversarial
        "seconds": seconds,
        "epochs": cfg.epochs,
        "gflops_per_second": flops * cfg.epochs * len(shard) / seconds / 1e9,
        "mflops_per_window": flops / 1e6,  # PGD-20 on the window, then a training step on it and its attack
        "clean_accuracy": robust["clean"]["accuracy"],
        "robust_accuracy": robust["pgd"]["accuracy"],
    }


class Bf16Logits(nn.Module):
    """The model under bf16 autocast, logits back in fp32 (for the attack's loss)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x).float()


def task_attack(params: dict) -> dict:
    beats = load_beats(Path(params["test"])).subsample(params["windows"], 0)
    x, y = to_tensors(beats, torch.device("cpu"))
    model = build_model(0) if params["pool"] == "pair-max" else build_model(0, pool=library_pool)
    attacked = Bf16Logits(model) if params["precision"] == "bf16" else model
    attack = pgd(attacked, PgdConfig())
    perturb(attack, x[:64], y[:64])  # warm-up
    started = time.perf_counter()
    for xb, yb in zip(x.split(64), y.split(64), strict=True):
        perturb(attack, xb, yb)
    rate = len(y) / (time.perf_counter() - started)
    flops = flops_per_window(lambda: perturb(attack, x[:64], y[:64]), len(y[:64]))
    return {"windows_per_second": rate, "gflops_per_second": rate * flops / 1e9, "mflops_per_window": flops / 1e6}


def task_evaluate(params: dict) -> dict:
    test = load_beats(Path(params["test"])).subsample(params["windows"], 0)
    model = EcgCnn() if params["pool"] == "pair-max" else EcgCnn(pool=library_pool)
    model.load_state_dict(torch.load(params["model"], weights_only=True))
    started = time.perf_counter()
    results = evaluate(model, test, EvalConfig(), torch.device("cpu"))
    seconds = time.perf_counter() - started
    # Counted on a slice: CW stops early per batch, so its count on the slice is an estimate for the rest.
    sample = test.subsample(EvalConfig().batch_size, 0)
    flops = flops_per_window(lambda: evaluate(model, sample, EvalConfig(), torch.device("cpu")), len(sample))
    return {
        "windows": len(test),
        "seconds": seconds,
        "gflops_per_second": flops * len(test) / seconds / 1e9,
        "mflops_per_window": flops / 1e6,
        "per_condition": {c: round(r["seconds"], 2) for c, r in results.items()},
        "accuracy": {c: r["accuracy"] for c, r in results.items()},
    }


TASKS: dict[str, Callable[[dict], dict]] = {
    "limit": task_limit,
    "train": task_train,
    "attack": task_attack,
    "evaluate": task_evaluate,
}


if __name__ == "__main__":
    task_params = json.loads(sys.argv[2])
    if task_params["tuned"]:
        tune_allocator()
    torch.set_num_threads(task_params["threads"])
    print(json.dumps(TASKS[sys.argv[1]](task_params)))
