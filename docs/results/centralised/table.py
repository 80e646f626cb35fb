"""The table of docs/results/centralised/README.md from the arms' metrics.json:
    python docs/results/centralised/table.py OUT
One row per arm and condition: accuracy, macro-F1 and each class's recall (%)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

CLASSES = ("N", "S", "V", "F", "Q")
STANDARD = ("clean-subset", "pgd-subset", "pgd100", "autoattack")  # on the stratified subset


def main(out: Path) -> None:
    print("| arm | condition | windows | accuracy | macro-F1 | " + " | ".join(f"recall {c}" for c in CLASSES) + " |")
    print("|---" * (5 + len(CLASSES)) + "|")
    for path in sorted(out.glob("*/metrics.json")):
        measured = json.loads(path.read_text())
        for condition, m in measured["results"].items():
            recalls = m.get("recall_per_class", {})
            cells = [f"{100 * recalls[c]:.1f}" if c in recalls else "-" for c in CLASSES]
            windows = measured["config"]["standard"]["windows"] if condition in STANDARD else measured["windows"]
            print(
                f"| {path.parent.name} | {condition} | {windows} | {100 * m['accuracy']:.2f} "
                f"| {100 * m['f1']:.2f} | " + " | ".join(cells) + " |"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
