"""The poisoning page's tables from the arms' results directories (run.sh):
python docs/results/poisoning/table.py docs/results/poisoning/runs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

WARMUP_ROUND = 8  # the honest rounds every arm starts from


def metrics(run: Path) -> dict[tuple[int, str], dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {(row["round"], row["condition"]): row for row in rows}


def clients(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "clients.jsonl").read_text().splitlines()]


def describe(run: Path) -> tuple[str, str]:
    config = json.loads((run / "config.json").read_text())
    defence = config["defence"]
    aggregation = defence["aggregation"] + ("" if defence["validate-updates"] else ", unchecked")
    attack_file = run / "attack.json"
    if not attack_file.exists():
        return "none", aggregation
    attack = json.loads(attack_file.read_text())
    how = attack["poison"] if attack["poison"] != "scale" else f"scale x{attack['poison-scale']:g}".replace("e+0", "e")
    return f"{len(attack['malicious-partitions'])} x {how}", aggregation


def main(root: Path) -> None:
    head = [
        "attack", "aggregation", "attacker replies (rejected)", "honest replies (rejected)", "clean acc",
        "clean macro-F1", "PGD-20 acc", "PGD-20 macro-F1", "clean acc, rounds 9..12", "PGD-20 acc, rounds 9..12",
    ]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for run in sorted(p for p in root.iterdir() if (p / "summary.txt").exists() and p.name != "warmup"):
        m = metrics(run)
        last = max(r for r, _ in m)
        attack, aggregation = describe(run)
        attackers = json.loads((run / "attack.json").read_text())["malicious-partitions"] if attack != "none" else []
        replies = [c for c in clients(run) if c["round"] > WARMUP_ROUND]
        attacked = [c for c in replies if c["partition"] in attackers]
        honest = [c for c in replies if c["partition"] not in attackers]
        counts = [f"{len(group)} ({sum(c['status'] == 'rejected' for c in group)})" for group in (attacked, honest)]
        curves = [
            " ".join(f"{100 * m[(r, condition)]['accuracy']:.1f}" for r in range(WARMUP_ROUND + 1, last + 1))
            for condition in ("clean", "pgd")
        ]
        cells = [f"{100 * m[(last, c)][k]:.2f}" for c in ("clean", "pgd") for k in ("accuracy", "f1")]
        print("| " + " | ".join([attack, aggregation, *counts, *cells, *curves]) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
