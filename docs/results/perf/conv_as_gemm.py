"""A tried alternative, kept as a measurement: the CNN's convolutions as one GEMM each, in channels-last layout.

    python docs/results/perf/conv_as_gemm.py [--threads 1]

Each Conv1d (kernel 3, padding 1) becomes one matrix product over three shifted copies of its (N, L, C) input,
with a hand-written backward (the input gradient is the product's gradient folded back by three shifted adds);
pooling and ReLU are one function on channels-last pairs. It checks that outputs and input gradients match the
model's, then times a PGD step's work (forward, then the gradient with respect to the input) both ways.
Measured here: no gain (see README, Performance), so the model keeps mkldnn's convolutions.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from common.model import build_model


class ConvAsGemm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, length, c = h.shape
        shifted = h.new_zeros(n, length, 3 * c)  # columns: x[l-1], x[l], x[l+1]
        shifted[:, 1:, :c] = h[:, :-1]
        shifted[:, :, c : 2 * c] = h
        shifted[:, :-1, 2 * c :] = h[:, 1:]
        w = weight.permute(0, 2, 1).reshape(weight.shape[0], 3 * c)
        ctx.save_for_backward(shifted, w)
        return torch.addmm(bias, shifted.view(n * length, 3 * c), w.t()).view(n, length, -1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        shifted, w = ctx.saved_tensors
        n, length, c_out = grad.shape
        c = w.shape[1] // 3
        flat = grad.reshape(n * length, c_out)
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_shifted = (flat @ w).view(n, length, 3 * c)
            grad_h = grad_shifted[:, :, c : 2 * c].clone()
            grad_h[:, :-1] += grad_shifted[:, 1:, :c]
            grad_h[:, 1:] += grad_shifted[:, :-1, 2 * c :]
        if ctx.needs_input_grad[1]:
            grad_w = (flat.t() @ shifted.view(n * length, 3 * c)).view(c_out, 3, c).permute(0, 2, 1)
        if ctx.needs_input_grad[2]:
            grad_b = flat.sum(0)
        return grad_h, grad_w, grad_b


class PoolReLU(torch.autograd.Function):
    """relu(max_pool1d(x, 2)) on (N, L, C); ties go to the first of a pair, as in max_pool1d."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        n, length, c = y.shape
        half = length // 2
        pairs = y[:, : 2 * half].reshape(n, half, 2 * c)
        first = pairs[..., :c] >= pairs[..., c:]
        out = torch.where(first, pairs[..., :c], pairs[..., c:]).clamp_min_(0)
        ctx.save_for_backward(first, out)
        ctx.length = length
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        first, out = ctx.saved_tensors
        n, half, c = grad.shape
        grad = grad * (out > 0)
        grad_y = grad.new_zeros(n, ctx.length, c)
        pairs = grad_y[:, : 2 * half].view(n, half, 2 * c)
        torch.mul(grad, first, out=pairs[..., :c])
        torch.sub(grad, pairs[..., :c], out=pairs[..., c:])
        return grad_y


def forward_as_gemm(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = x.transpose(1, 2)  # (N, L, 1)
    for conv in (m for m in model.features if isinstance(m, nn.Conv1d)):
        h = PoolReLU.apply(ConvAsGemm.apply(h, conv.weight, conv.bias))
    fc1, fc2, fc3 = (m for m in model.classifier if isinstance(m, nn.Linear))
    n, length, c = h.shape  # fc1 expects the (C, L) flattening order
    w1 = fc1.weight.view(fc1.out_features, c, length).transpose(1, 2).reshape(fc1.out_features, -1)
    z = F.relu(F.linear(h.reshape(n, -1), w1, fc1.bias))
    return fc3(F.relu(fc2(z)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    torch.set_num_threads(parser.parse_args().threads)
    model = build_model(0)
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = (torch.rand(64, 1, 180) * 2047).round() / 2047, torch.randint(0, 5, (64,))

    def step(forward) -> tuple[torch.Tensor, torch.Tensor]:
        xi = x.clone().requires_grad_()
        out = forward(xi)
        (grad,) = torch.autograd.grad(F.cross_entropy(out, y), xi)
        return out.detach(), grad

    def ms(forward) -> float:
        for _ in range(3):
            step(forward)
        started = time.perf_counter()
        for _ in range(30):
            step(forward)
        return (time.perf_counter() - started) / 30 * 1e3

    as_gemm = lambda z: forward_as_gemm(model, z)  # noqa: E731
    (out_a, grad_a), (out_b, grad_b) = step(model), step(as_gemm)
    out_diff, grad_diff = (out_a - out_b).abs().max(), (grad_a - grad_b).abs().max()
    print(f"largest difference: outputs {out_diff:.2e}, input gradients {grad_diff:.2e}")
    for _ in range(3):
        print(f"PGD step's work, batch 64: model {ms(model):.2f} ms, convolutions as GEMMs {ms(as_gemm):.2f} ms")


if __name__ == "__main__":
    main()
