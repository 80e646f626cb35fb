"""Where one PGD step of the paper's CNN spends its time on this CPU, and how fast its matrix products can be.

    python docs/results/perf/profile_step.py [--threads 1] [--batch 64] [--compile]

Prints (1) torch.profiler's self time per operator group for PGD-20 steps on a batch (the attack of every FAT
training batch: forward, then the gradient with respect to the input), (2) the rate of each layer's own product
as one plain matrix product of the same shape (the most that layer could reach as a GEMM), (3) the fp32 limit the
bench uses (a 1024 x 1024 product), and with --compile (4) the same step through torch.compile.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from common.model import build_model

GROUPS = {  # operator name -> what it is in this model
    "aten::mkldnn_convolution": "conv forward",
    "aten::convolution_backward": "conv backward (input)",
    "aten::addmm": "linear forward",
    "aten::mm": "linear backward (input)",
    "aten::clamp_min": "ReLU",
    "aten::threshold_backward": "ReLU",
}


def pgd_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xi = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xi), y), xi)
    return grad


def seconds(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def gemm_rate(m: int, k: int, n: int) -> float:
    a, b = torch.rand(m, k), torch.rand(k, n)
    return 2 * m * k * n / seconds(lambda: a @ b, 50) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a SuperNode of 5 on 2 cores: 1)")
    parser.add_argument("--batch", type=int, default=64, help="windows attacked at once (training batch: 64)")
    parser.add_argument("--compile", action="store_true", help="also time the step through torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(0)
    for p in model.parameters():
        p.requires_grad_(False)  # as while attacking
    x, y = torch.rand(args.batch, 1, 180), torch.randint(0, 5, (args.batch,))
    step = seconds(lambda: pgd_step(model, x, y), 40)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(20):
            pgd_step(model, x, y)
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        groups[GROUPS.get(event.key, "pooling and the rest")] += event.self_cpu_time_total
    total = sum(groups.values())
    print(f"PGD step, batch {args.batch}, {args.threads} thread(s): {1e3 * step:.2f} ms")
    for name, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<24} {100 * t / total:5.1f}%")
    print("each layer's product as one plain GEMM (rows x inner x columns), GFLOP/s:")
    b = args.batch
    shapes = {
        "conv 1->16, L 180": (b * 180, 3, 16),
        "conv 16->32, L 90": (b * 90, 48, 32),
        "conv 32->64, L 45": (b * 45, 96, 64),
        "conv 64->128, L 22": (b * 22, 192, 128),
        "linear 1408->256": (b, 1408, 256),
    }
    for name, shape in shapes.items():
        print(f"  {name:<20} {gemm_rate(*shape):6.1f}")
    print(f"fp32 limit (1024 x 1024 x 1024): {gemm_rate(1024, 1024, 1024):.1f} GFLOP/s")
    if args.compile:
        started = time.perf_counter()
        compiled = torch.compile(model)
        pgd_step(compiled, x, y)
        print(
            f"torch.compile: {time.perf_counter() - started:.0f} s to compile; step "
            f"{1e3 * seconds(lambda: pgd_step(compiled, x, y), 40):.2f} ms against {1e3 * step:.2f} ms eager"
        )


if __name__ == "__main__":
    main()
