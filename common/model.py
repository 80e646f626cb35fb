"""The paper's 1-D CNN for 180-sample beat windows (410,021 parameters), and beyond the paper the same CNN with
its beat's RR features joined to its convolutional features (411,045)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from common.config import NUM_CLASSES, RHYTHM_FEATURES


class _PairMax(torch.autograd.Function):
    """max_pool1d(x, 2), with the gradient computed from x instead of from saved indices.

    With gradients on, PyTorch's max_pool1d takes its max_pool2d_with_indices path, about ten times
    slower on CPU than the plain forward (27% of a PGD step here). Each output's gradient goes to the
    first of its two inputs unless the second is larger: the element max_pool1d's indices pick, ties
    included, so outputs and gradients are bit-identical (tests/test_model_attacks_training.py).
    The backward writes both halves of each pair into one buffer: building them with torch.where and
    torch.stack took 35% of a PGD step.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.max_pool1d(x, 2)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        n = grad.shape[-1]
        first = x[..., 0 : 2 * n : 2] >= x[..., 1 : 2 * n : 2]
        # An odd length's last sample is dropped by the pooling: it gets no gradient.
        grad_x = grad.new_empty(*grad.shape[:-1], x.shape[-1])
        grad_x[..., 2 * n :] = 0
        pairs = grad_x[..., : 2 * n].unflatten(-1, (n, 2))
        torch.mul(grad, first, out=pairs[..., 0])
        torch.sub(grad, pairs[..., 0], out=pairs[..., 1])
        return grad_x


class PairMaxPool(nn.Module):
    """nn.MaxPool1d(2), faster where gradients flow (training and every attack)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PairMax.apply(x)


CHANNELS = (1, 16, 32, 64, 128)


def flat_features(window_length: int) -> int:
    """What the convolutions leave of a window, flattened: the last block's channels x the pooled length."""
    return CHANNELS[-1] * (window_length // 2 ** (len(CHANNELS) - 1))


class EcgCnn(nn.Module):
    """4 x (Conv1d k3 p1 + ReLU + MaxPool 2) with 16/32/64/128 filters, then Linear 256, 64, 5.

    `pool` makes the pooling layer: PairMaxPool by default, nn.MaxPool1d(2) for the library reference. With
    `rhythm` the input is the window followed by its beat's RHYTHM_FEATURES (`prepare --rhythm`), which join
    the flattened convolutional features before the dense layers: one input tensor, so training and every
    attack take it unchanged.
    """

    def __init__(
        self,
        window_length: int = 180,
        num_classes: int = NUM_CLASSES,
        pool: Callable[[], nn.Module] = PairMaxPool,
        rhythm: bool = False,
    ) -> None:
        super().__init__()
        self.window_length, self.rhythm = window_length, rhythm
        blocks: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(CHANNELS):
            blocks += [nn.Conv1d(c_in, c_out, kernel_size=3, padding=1), nn.ReLU(), pool()]
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat_features(window_length), 256),
            nn.ReLU(),
            nn.Linear(256, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )
        if rhythm:  # replaced once built, as docs/results/centralised/rr_probe.py did: the same seed, its weights
            self.classifier[1] = nn.Linear(flat_features(window_length) + RHYTHM_FEATURES, 256)

    @property
    def input_length(self) -> int:
        return self.window_length + (RHYTHM_FEATURES if self.rhythm else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Windows of another length would pass the convolutions (184 samples pool to 11 as 180 do): never
        # silently, since the RR features read as samples are a wrong model, not an error.
        if x.shape[-1] != self.input_length:
            raise ValueError(
                f"the model reads inputs of {self.input_length} values "
                f"({'window + RR features' if self.rhythm else 'window only'}), got {x.shape[-1]}"
            )
        if not self.rhythm:
            return self.classifier(self.features(x))
        window, rhythm = x[..., : self.window_length], x[:, 0, self.window_length :]
        return self.classifier(torch.cat([self.features(window).flatten(1), rhythm], dim=1))


# The output layer's arrays (EcgCnn.classifier[5]): row c of each is class c's.
OUTPUT_ARRAYS = ("classifier.5.weight", "classifier.5.bias")


def reads_rhythm(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether weights are those of the model with rhythm features: its first dense layer has more inputs."""
    return state["classifier.1.weight"].shape[1] == flat_features(180) + RHYTHM_FEATURES


def build_model(seed: int, pool: Callable[[], nn.Module] = PairMaxPool, rhythm: bool = False) -> EcgCnn:
    """The model with seeded initial weights (the same seed gives the same weights everywhere)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = EcgCnn(pool=pool, rhythm=rhythm)
    torch.random.set_rng_state(generator_state)
    return model


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
