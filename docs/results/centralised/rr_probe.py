"""Does a beat's rhythm carry S across patients? The probe that made `prepare --rhythm` a product option.

    python docs/results/centralised/rr_probe.py --mitdb ../shared/data/mitdb --out OUT [--seed 0]
    python docs/results/centralised/rr_probe.py ... --fat --max-train-windows 20000 --max-test-windows 5000

Inter-patient (de Chazal's DS1 records train, DS2 test), 5 epochs, the paper's CNN and the project's `train()`,
clean training (the default) or Algorithm 1 (`--fat`; the attacks then perturb the RR features too, by at most
8/255 of their [0, 1] range: about 6% of a beat's RR ratio). The paper's 180-sample window alone, against the
same window with four RR-interval features of its beat appended (previous and next RR, the mean of the last ten
RRs, each over the record's mean RR, and previous over local; halved and clipped to [0, 1], the range the
attacks clamp to). The CNN reads the window; the features join its flattened output before the dense layers
(1,024 more weights). A premature beat is what makes a beat S, and a 180-sample window (0.5 s) holds at most
part of the RR interval before it. The features and the model are now the product's (`common.data.rr_features`,
`EcgCnn(rhythm=True)`, `prepare --rhythm`), built as this probe built them. Writes OUT/ARM/metrics.json (the
metrics of `ecg-fat evaluate`, per condition; `python docs/results/centralised/table.py OUT` tabulates them) and
prints a line per arm and condition.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common.config import DS1_RECORDS, DS2_RECORDS, EvalConfig, TrainConfig, WindowConfig
from common.data import Beats, read_records
from common.metrics import evaluate
from common.model import EcgCnn
from common.runtime import tune_allocator
from common.train import train

WINDOW = WindowConfig()


def load(mitdb: Path, records: tuple[str, ...]) -> tuple[Beats, Beats]:
    """The records' windows alone, and with their RR features appended (`prepare --rhythm`'s windows)."""
    with_rr = read_records(mitdb, names=records, rhythm=True)
    return Beats(with_rr.x[..., : WINDOW.length].copy(), with_rr.y, with_rr.record), with_rr


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
        model = EcgCnn(rhythm=with_rr)
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
