"""The paper's 1-D CNN for 180-sample beat windows (410,021 parameters)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from common.config import NUM_CLASSES


class EcgCnn(nn.Module):
    """4 x (Conv1d k3 p1 + ReLU + MaxPool 2) with 16/32/64/128 filters, then Linear 256, 64, 5."""

    def __init__(self, window_length: int = 180, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels = [1, 16, 32, 64, 128]
        length = window_length
        for c_in, c_out in itertools.pairwise(channels):
            blocks += [nn.Conv1d(c_in, c_out, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool1d(2)]
            length //= 2
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels[-1] * length, 256),
            nn.ReLU(),
            nn.Linear(256, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(seed: int) -> EcgCnn:
    """The model with seeded initial weights (the same seed gives the same weights everywhere)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = EcgCnn()
    torch.random.set_rng_state(generator_state)
    return model


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
