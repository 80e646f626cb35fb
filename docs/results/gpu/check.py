"""What the GPU machine must show before its timings mean anything: python docs/results/gpu/check.py DATA

DATA is an `ecg-fat prepare` output. On CUDA: PairMaxPool against nn.MaxPool1d (outputs and input gradients), the
model's logits against the CPU's from the same weights, three clean epochs on client shard 0, the paper's five
conditions on 2,000 test windows on CUDA and on the CPU from that model, then one FAT epoch (trained windows/s).
The CPU and CUDA draw different random numbers (PGD's start), so their results are compared as numbers, not bits,
and only for a model that beats always answering the majority class (from random weights one FAT epoch leaves a
model that answers N for every window, and two such models agree under every condition whatever the devices
do). Exits 1 where a check fails.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.config import EvalConfig, TrainConfig
from common.data import Beats, load_beats
from common.metrics import evaluate
from common.model import PairMaxPool, build_model
from common.train import train


def pooling_matches(device: torch.device) -> None:
    x = torch.randn(64, 16, 181, device=device).round(decimals=1)  # rounding makes ties, odd length a leftover
    grad = torch.randn(64, 16, 90, device=device)
    outputs, gradients = [], []
    for pool in (PairMaxPool(), nn.MaxPool1d(2)):
        leaf = x.clone().requires_grad_()
        out = pool(leaf)
        out.backward(grad)
        outputs.append(out)
        gradients.append(leaf.grad)
    same = torch.equal(outputs[0], outputs[1]) and torch.equal(gradients[0], gradients[1])
    print(f"PairMaxPool == nn.MaxPool1d on {device} (outputs, input gradients, ties included): {same}")
    if not same:
        sys.exit(1)


def main(data: Path) -> None:
    cuda = torch.device("cuda")
    print(
        f"torch {torch.__version__}, {torch.cuda.get_device_name()}, TF32 in convolutions: "
        f"{torch.backends.cudnn.allow_tf32}, in matmuls: {torch.backends.cuda.matmul.allow_tf32}"
    )
    pooling_matches(cuda)

    model = build_model(0)
    x = load_beats(data / "test.npz").subsample(2000, 0)
    windows = torch.from_numpy(x.x)
    with torch.inference_mode():
        on_cpu = model(windows)
    model.to(cuda)  # outside inference mode: parameters made there could not be trained
    with torch.inference_mode():
        on_cuda = model(windows.to(cuda)).cpu()
    print(f"logits of the initial model, CUDA vs CPU: largest difference {(on_cpu - on_cuda).abs().max():.2e}")

    shard = load_beats(data / "client_00.npz")
    train(model, shard, TrainConfig(epochs=3, adversarial=False), cuda)
    devices_agree(model, x)

    torch.cuda.synchronize()
    started = time.perf_counter()
    (stats,) = train(model, shard, TrainConfig(epochs=1), cuda)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    print(
        f"one FAT epoch on {len(shard)} windows (batch 64, PGD-20): {seconds:.1f} s, "
        f"{stats.windows / seconds:.0f} trained windows/s, loss {stats.loss:.4f}"
    )


def devices_agree(model: nn.Module, x: Beats) -> None:
    """The five conditions on CUDA and on the CPU, for a model that beats the majority class by 5 points."""
    cfg = EvalConfig()
    results = {device: evaluate(model, x, cfg, torch.device(device)) for device in ("cuda", "cpu")}
    worst = 0.0
    for condition in cfg.conditions:
        a, b = (100 * results[d][condition]["accuracy"] for d in ("cuda", "cpu"))
        seconds = [results[d][condition]["seconds"] for d in ("cuda", "cpu")]
        worst = max(worst, abs(a - b))
        print(f"{condition:<5} accuracy CUDA {a:6.2f}  CPU {b:6.2f}", end="   ")
        print(f"seconds CUDA {seconds[0]:6.2f}  CPU {seconds[1]:6.2f}")
    above = 100 * (results["cpu"]["clean"]["accuracy"] - np.bincount(x.y).max() / len(x))
    print(f"after 3 clean epochs: {above:.2f} points above the majority class; CUDA vs CPU at most {worst:.2f} apart")
    if above < 5 or worst > 2:
        sys.exit("check failed: the comparison needs a model 5 points above the majority class, and agreement to 2")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
