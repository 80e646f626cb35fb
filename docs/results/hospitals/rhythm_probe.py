"""What a `--rhythm` model does with its RR features, and what the attacks do through them.

    python docs/results/hospitals/rhythm_probe.py CHECKPOINT TEST_NPZ [--windows 5120]

CHECKPOINT is a round's weights from `federate --rhythm` (RESULTS/checkpoints/round_010.pt), TEST_NPZ the
test set it was evaluated on (WORKDIR/data/test.npz, windows of 184 values). Prints
- the column norms of the first dense layer: how much weight the four RR features get beside the CNN's
  flattened features;
- per class, the mean predicted P(S) and P(N), and the median first RR feature (previous RR over the record's
  mean, halved: 0.5 is a regular rhythm, below it a premature beat);
- S beats' mean P(S) with their own RR features and with a median N beat's;
- on a random subset (seed 0), accuracy under CW and PGD-20 (the evaluation's settings and batch of 256)
  attacking all 184 values, as `federate` evaluates, and attacking the window only (the RR features held
  clean), with the size of CW's change to the RR features against PGD's L-inf radius.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.attacks import cw, perturb, pgd
from common.config import AAMI_CLASSES, RHYTHM_FEATURES, AttackSuite, EvalConfig, WindowConfig
from common.data import DataError, load_beats
from common.metrics import predict
from ecg_fat.predict import Classifier, ModelError

WINDOW = WindowConfig().length


class WindowOnly(nn.Module):
    """The model with a batch's RR features fixed: an attack on it moves the window's samples only."""

    def __init__(self, model: nn.Module, rhythm: torch.Tensor) -> None:
        super().__init__()
        self.model, self.rhythm = model, rhythm

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([window, self.rhythm], dim=-1))


def probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x[i : i + 4096]).softmax(1) for i in range(0, len(x), 4096)])


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return int((predict(model, x, len(x)) == y).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a round's weights of a --rhythm run")
    parser.add_argument("test", help="the test set it was evaluated on (test.npz, windows of 184 values)")
    parser.add_argument("--windows", type=int, default=5120, help="random test windows attacked (default 5120)")
    args = parser.parse_args()
    torch.manual_seed(0)
    try:  # the product's loader: weights only, and a bad file is one line naming it
        model, beats = Classifier(Path(args.checkpoint)).module, load_beats(Path(args.test))
    except (ModelError, DataError) as error:
        parser.error(str(error))
    if not model.rhythm:
        parser.error(f"{args.checkpoint}: weights of a model without RR features (not a --rhythm run)")
    if beats.x.shape[-1] != model.input_length:
        parser.error(f"{args.test}: windows of {beats.x.shape[-1]} values, a --rhythm model reads {model.input_length}")
    norms = model.classifier[1].weight.detach().norm(dim=0)
    conv, rr = norms[:-RHYTHM_FEATURES], norms[-RHYTHM_FEATURES:]
    print(
        f"first dense layer column norms: CNN features mean {conv.mean():.2f} (max {conv.max():.2f}), "
        f"RR features {', '.join(f'{v:.2f}' for v in rr)}"
    )

    x, y = torch.from_numpy(beats.x), torch.as_tensor(beats.y)
    p = probabilities(model, x)
    for c, name in enumerate(AAMI_CLASSES):
        if (m := y == c).any():
            print(
                f"{name}: {int(m.sum())} beats, mean P(S) {p[m, 1].mean():.4f}, mean P(N) {p[m, 0].mean():.4f}, "
                f"median first RR feature {x[m, 0, WINDOW].median():.3f}"
            )
    s = x[y == 1].clone()
    s[:, 0, WINDOW:] = x[y == 0][:, 0, WINDOW:].median(0).values
    print(
        f"S beats: mean P(S) {p[y == 1, 1].mean():.4f} with their own RR features, "
        f"{probabilities(model, s)[:, 1].mean():.4f} with a median N beat's"
    )

    idx = torch.from_numpy(np.random.default_rng(0).choice(len(y), min(args.windows, len(y)), replace=False))
    xs, ys = x[idx], y[idx]
    suite, batch = AttackSuite(), EvalConfig().batch_size
    hits = dict.fromkeys(("clean", "cw all", "cw window", "pgd all", "pgd window"), 0)
    rr_change = []
    for i in range(0, len(ys), batch):
        xb, yb = xs[i : i + batch], ys[i : i + batch]
        window_only = WindowOnly(model, xb[..., WINDOW:]).eval()
        wb = xb[..., :WINDOW].contiguous()
        adv_cw = perturb(cw(model, suite.cw), xb, yb)
        rr_change.append((adv_cw - xb)[..., WINDOW:].abs().amax(dim=(1, 2)))
        hits["clean"] += correct(model, xb, yb)
        hits["cw all"] += correct(model, adv_cw, yb)
        hits["cw window"] += correct(window_only, perturb(cw(window_only, suite.cw), wb, yb), yb)
        hits["pgd all"] += correct(model, perturb(pgd(model, suite.pgd), xb, yb), yb)
        hits["pgd window"] += correct(window_only, perturb(pgd(window_only, suite.pgd), wb, yb), yb)
    accuracy = ", ".join(f"{k} {100 * v / len(ys):.2f}" for k, v in hits.items())
    print(f"{len(ys)} random test windows, accuracy (%): {accuracy}")
    change = torch.cat(rr_change)
    print(
        f"CW's largest change to an RR feature per window: median {change.median():.4f}, 90th percentile "
        f"{change.quantile(0.9):.4f} (PGD's radius {suite.pgd.eps:.4f})"
    )


if __name__ == "__main__":
    main()
