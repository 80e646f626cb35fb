"""Does a beat's rhythm carry S across patients? A probe, not a product option (yet).

    python docs/results/centralised/rr_probe.py --mitdb ../shared/data/mitdb --out OUT [--seed 0]
    python docs/results/centralised/rr_probe.py ... --fat --max-train-windows 20000 --max-test-windows 5000

Inter-patient (de Chazal's DS1 records train, DS2 test), 5 epochs, the paper's CNN and the project's `train()`,
clean training (the default) or Algorithm 1 (`--fat`; the attacks then perturb the RR features too, by at most
8/255 of their [0, 1] range: about 6% of a beat's RR ratio). The paper's 180-sample window alone, against the
same window with four RR-interval features of its beat appended (previous and next RR, the mean of the last ten
RRs, each over the record's mean RR, and previous over local; halved and clipped to [0, 1], the range the
attacks clamp to). The CNN reads the window; the features join its flattened output before the dense layers
(1,024 more weights). A premature beat is what makes a beat S, and a 180-sample window (0.5 s) holds at most
part of the RR interval before it. Writes OUT/ARM/metrics.json (the metrics of `ecg-fat evaluate`, per condition;
`python docs/results/centralised/table.py OUT` tabulates them) and prints a line per arm and condition.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from common.config import AAMI_MAP, AUTO_LEAD, DS1_RECORDS, DS2_RECORDS, EvalConfig, TrainConfig, WindowConfig
from common.data import Beats, lead_index, read_annotations, read_header, read_signal, window_beats
from common.metrics import evaluate
from common.model import EcgCnn
from common.runtime import tune_allocator
from common.train import train

RR_FEATURES = 4
WINDOW = WindowConfig()


def rr_features(samples: np.ndarray) -> np.ndarray:
    """Four rhythm features per beat, from the beats' sample positions in one record."""
    rr = np.diff(samples).astype(np.float64)
    previous = np.concatenate([[rr[0]], rr])  # the first beat has no previous RR: its next one stands in
    following = np.concatenate([rr, [rr[-1]]])
    last_ten = np.minimum(np.arange(1, len(previous) + 1), 10)  # fewer at the record's start
    local = np.convolve(previous, np.ones(10))[: len(previous)] / last_ten
    mean = rr.mean()
    features = np.stack([previous / mean, following / mean, local / mean, previous / local], axis=1)
    return np.clip(features / 2, 0, 1).astype(np.float32)


def read_with_rr(record: Path) -> tuple[Beats, np.ndarray]:
    """The record's windows as `ecg-fat prepare` cuts them (auto lead), and their beats' RR features."""
    header = read_header(record)
    signal = read_signal(record, header, lead_index(header, AUTO_LEAD, record.with_suffix(".hea")))
    annotation = read_annotations(record, len(signal))
    samples, symbols = np.asarray(annotation.sample), annotation.symbol
    beats = np.array([symbol in AAMI_MAP for symbol in symbols])
    features = rr_features(samples[beats])  # neighbours are beats, whether or not their windows fit
    inside = (samples - WINDOW.before >= 0) & (samples + WINDOW.after <= len(signal))
    x, y = window_beats(signal, samples, symbols, WINDOW)
    return Beats(x, y, np.full(len(y), record.name)), features[inside[beats]]


class RrCnn(EcgCnn):
    """The paper's CNN on the window; the RR features (the last samples of the input) join before the dense
    layers. One input tensor, so the training loop and the attacks take it unchanged."""

    def __init__(self) -> None:
        super().__init__()
        first = self.classifier[1]
        self.classifier[1] = torch.nn.Linear(first.in_features + RR_FEATURES, first.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window, rhythm = x[..., : WINDOW.length], x[:, 0, WINDOW.length :]
        return self.classifier(torch.cat([self.features(window).flatten(1), rhythm], dim=1))


def load(mitdb: Path, records: tuple[str, ...]) -> tuple[Beats, Beats]:
    """The records' windows alone, and with their RR features appended (read once for every arm)."""
    parts = [read_with_rr(mitdb / name) for name in records]
    window = Beats.concat([beats for beats, _ in parts])
    rr = np.concatenate([features for _, features in parts])
    return window, Beats(np.concatenate([window.x, rr[:, None, :]], axis=2), window.y, window.record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mitdb", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--arms",
        nargs="+",
        default=["window", "window-rr", "window-rr-sqrt-balanced"],
        help="window or window-rr, then -sqrt-balanced (class weights) or -sampling (sqrt-balanced sampling)",
    )
    parser.add_argument("--fat", action="store_true", help="Algorithm 1 (PGD-20 8/255), scored clean and under PGD")
    parser.add_argument("--max-train-windows", type=int, default=0, help="a random subset of DS1 (0: all)")
    parser.add_argument("--max-test-windows", type=int, default=0, help="a random subset of DS2 (0: all)")
    args = parser.parse_args()
    tune_allocator()
    args.out.mkdir(parents=True, exist_ok=True)
    conditions = ("clean", "pgd") if args.fat else ("clean",)
    training, testing = load(args.mitdb, DS1_RECORDS), load(args.mitdb, DS2_RECORDS)
    for arm in args.arms:
        with_rr = "rr" in arm
        weights = "sqrt-balanced" if arm.endswith("sqrt-balanced") else "none"
        sampling = "sqrt-balanced" if arm.endswith("sampling") else "shuffle"
        train_set = training[with_rr].subsample(args.max_train_windows, args.seed)
        test = testing[with_rr].subsample(args.max_test_windows, 0)  # the same windows for every arm
        torch.manual_seed(args.seed)
        model = RrCnn() if with_rr else EcgCnn()
        cfg = TrainConfig(adversarial=args.fat, class_weights=weights, sampling=sampling, seed=args.seed)
        start = time.perf_counter()
        train(model, train_set, cfg, torch.device("cpu"))
        trained = time.perf_counter() - start
        metrics = evaluate(model, test, EvalConfig(conditions=conditions, seed=args.seed), torch.device("cpu"))
        name = f"{'fat' if args.fat else 'clean'}-{arm}-s{args.seed}"
        result = {"windows": len(test), "train_windows": len(train_set), "train_seconds": round(trained, 1),
                  "results": metrics}  # fmt: skip
        (args.out / name).mkdir(exist_ok=True)
        (args.out / name / "metrics.json").write_text(json.dumps(result, indent=1))  # as table.py reads them
        for condition, m in metrics.items():
            recall = " / ".join(f"{100 * r:.1f}" for r in m["recall_per_class"].values())
            print(
                f"{name} {condition}: accuracy {100 * m['accuracy']:.2f}, macro-F1 {100 * m['f1']:.2f}, "
                f"recall N/S/V/F/Q {recall} ({len(train_set)} train, {len(test)} test windows, {trained:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
