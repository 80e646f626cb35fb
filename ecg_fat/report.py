"""`ecg-fat report`: the paper's tables and figures from one or more results directories.

Tables like the paper's Tables 2-5 (one per metric, a row per run at its last round, the paper's rows beside
them where the paper gives the values), per-class recall, one figure per condition (four panels: accuracy,
precision, recall, F1 against the round, a line per run), and a summary of FAT's clean-accuracy cost and
robust gain per attack.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import io
import json
import os
import re
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from common.config import AAMI_CLASSES, CONDITIONS
from server.results import Results

METRICS = {"accuracy": "Accuracy", "precision": "Macro precision", "recall": "Macro recall", "f1": "Macro F1"}
CONDITION_NAMES = {"clean": "Clean", "pgd": "PGD", "fgsm": "FGSM", "cw": "CW", "bim": "BIM"}
# Round-10 values of Celik & Gullu (AITA 2025), Tables 2-5, in percent, Clean/PGD/FGSM/CW/BIM.
PAPER = {
    "accuracy": {"paper non-FAT": (98.44, 35.14, 73.87, 7.47, 35.36), "paper FAT": (97.60, 94.82, 95.44, 46.65, 94.81)},
    "precision": {
        "paper non-FAT": (93.95, 30.12, 47.05, 7.27, 30.15),
        "paper FAT": (90.55, 81.72, 83.76, 26.80, 81.55),
    },
    "recall": {"paper non-FAT": (92.80, 21.27, 47.29, 2.42, 21.05), "paper FAT": (88.79, 80.13, 81.85, 26.78, 80.06)},
    "f1": {"paper non-FAT": (92.94, 22.61, 45.46, 3.20, 22.55), "paper FAT": (89.06, 79.75, 81.70, 24.02, 79.63)},
}
DIFFERENCE_FLAG = 1.5  # points; cells further from the paper are listed for explanation
MASKING_FLAG = 2.0  # points; PGD-20 this far above AutoAttack on the same windows suggests gradient masking
STANDARD_NAMES = {
    "clean-subset": "Clean",
    "pgd-subset": "PGD-20",
    "pgd100": "PGD-100, restarts",
    "autoattack": "AutoAttack",
}


class ReportError(ValueError):
    """A results directory cannot be reported (missing or empty metrics)."""


# What may differ between the seeds of one arm: the seeds, and where each run kept its files.
PER_RUN_KEYS = (("seed",), ("train", "seed"), ("evaluate", "seed"), ("results-dir",), ("resume",), ("test-path",))


@dataclass(frozen=True)
class Run:
    """One arm of the report: a results directory, or several that differ only in their seed (mean and sample
    standard deviation over them)."""

    name: str
    adversarial: bool
    seeds: list[list[dict]]  # metrics.jsonl rows, one list per seed

    @property
    def last_round(self) -> int:
        """The last round every seed reached."""
        return min(max(row["round"] for row in rows) for rows in self.seeds)

    def rounds(self, condition: str = "clean") -> list[int]:
        """The rounds every seed measured `condition` in."""
        per_seed = [{row["round"] for row in rows if row["condition"] == condition} for rows in self.seeds]
        return sorted(set.intersection(*per_seed))

    def values(self, server_round: int, condition: str, metric: str, label: str | None = None) -> list[float]:
        """One value per seed, in percent; `label` picks a class of recall_per_class."""
        found = []
        for rows in self.seeds:
            row = next((r for r in rows if r["round"] == server_round and r["condition"] == condition), None)
            if row is None:
                raise ReportError(f"run {self.name}: no {condition} row for round {server_round}")
            found.append(100 * (row[metric] if label is None else row[metric][label]))
        return found

    def value(self, server_round: int, condition: str, metric: str) -> float:
        return statistics.fmean(self.values(server_round, condition, metric))

    def final(self, metric: str) -> list[float]:
        return [self.value(self.last_round, c, metric) for c in CONDITIONS]

    def label(self) -> str:
        seeds = f", {len(self.seeds)} seeds" if len(self.seeds) > 1 else ""
        return f"{self.name} ({'FAT' if self.adversarial else 'non-FAT'}{seeds}, round {self.last_round})"


def cell(values: list[float]) -> str:
    """A value, or mean +- sample standard deviation of several seeds."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def _read_config(directory: Path) -> dict:
    path = directory / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _without(config: dict, keys: tuple[tuple[str, ...], ...]) -> dict:
    config = json.loads(json.dumps(config))  # a deep copy
    for key in keys:
        parent = config
        for part in key[:-1]:
            parent = parent.get(part, {})
        parent.pop(key[-1], None)
    return config


def _first_difference(a: object, b: object, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return f"{path} ({a!r} vs {b!r})"


def seed_dirs(directory: Path) -> list[Path]:
    """The directory itself when it is a results directory, else its subdirectories that are."""
    if (directory / "metrics.jsonl").exists() or not directory.is_dir():
        return [directory]
    return sorted(d for d in directory.iterdir() if (d / "metrics.jsonl").exists()) or [directory]


def load_run(directory: Path) -> Run:
    """A results directory, or a directory of results directories: the seeds of one arm, which must have the same
    configuration except their seeds."""
    dirs = seed_dirs(directory)
    seeds = []
    for run_dir in dirs:
        rows = Results(run_dir).read_jsonl("metrics")
        if not rows:
            raise ReportError(f"{run_dir}: no metrics.jsonl with rows (not a results directory?)")
        seeds.append(rows)
    configs = [_read_config(d) for d in dirs]
    for run_dir, config in zip(dirs[1:], configs[1:], strict=True):
        first, other = _without(configs[0], PER_RUN_KEYS), _without(config, PER_RUN_KEYS)
        if first != other:
            raise ReportError(
                f"{directory}: {dirs[0].name} and {run_dir.name} differ in more than their seed: "
                f"{_first_difference(first, other)}"
            )
    seed_values = [c.get("seed") for c in configs]
    if len(dirs) > 1 and len(set(map(str, seed_values))) < len(dirs):
        raise ReportError(f"{directory}: its runs must have different seeds, found {seed_values}")
    adversarial = configs[0].get("train", {}).get("adversarial", True)
    return Run(directory.name, adversarial, seeds)


def _row(label: str, values: list[float] | tuple[float, ...]) -> str:
    return f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + " |"


def _cells_row(label: str, cells: list[str]) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def metric_table(runs: list[Run], metric: str) -> str:
    header = "| run | " + " | ".join(CONDITION_NAMES[c] for c in CONDITIONS) + " |"
    lines = [header, "|---" * (len(CONDITIONS) + 1) + "|"]
    lines += [
        _cells_row(run.label(), [cell(run.values(run.last_round, c, metric)) for c in CONDITIONS]) for run in runs
    ]
    lines += [_row(label, values) for label, values in PAPER.get(metric, {}).items()]
    return "\n".join(lines)


def recall_table(run: Run) -> str:
    lines = ["| condition | " + " | ".join(AAMI_CLASSES) + " |", "|---" * (len(AAMI_CLASSES) + 1) + "|"]
    for condition in CONDITIONS:
        values = [run.values(run.last_round, condition, "recall_per_class", label) for label in AAMI_CLASSES]
        lines.append(_cells_row(CONDITION_NAMES[condition], [cell(v) for v in values]))
    return "\n".join(lines)


def summary(runs: list[Run]) -> list[str]:
    fat = [run for run in runs if run.adversarial]
    base = [run for run in runs if not run.adversarial]
    if not fat or not base:
        return ["(the summary needs one FAT and one non-FAT run)"]
    f, b = fat[0].final("accuracy"), base[0].final("accuracy")
    lines = [f"- Clean-accuracy cost of FAT: {b[0] - f[0]:+.2f} points ({b[0]:.2f} -> {f[0]:.2f})."]
    lines += [
        f"- Robust gain under {CONDITION_NAMES[c]}: {f[i] - b[i]:+.2f} points ({b[i]:.2f} -> {f[i]:.2f})."
        for i, c in enumerate(CONDITIONS)
        if c != "clean"
    ]
    return lines


def paper_differences(runs: list[Run]) -> list[str]:
    """Cells more than DIFFERENCE_FLAG points from the paper, for the report's discussion."""
    lines = []
    for metric, rows in PAPER.items():
        for run in runs:
            paper = rows["paper FAT" if run.adversarial else "paper non-FAT"]
            for condition, ours, theirs in zip(CONDITIONS, run.final(metric), paper, strict=True):
                if abs(ours - theirs) > DIFFERENCE_FLAG:
                    lines.append(
                        f"- {run.name} {METRICS[metric].lower()} {CONDITION_NAMES[condition]}: "
                        f"{ours:.2f} vs paper {theirs:.2f} ({ours - theirs:+.2f})"
                    )
    return lines or ["- none: every cell is within 1.5 points of the paper"]


def standard_table(runs: list[Run]) -> list[str]:
    """Accuracy under the field's standard attacks beside PGD-20 on the same windows, at each run's last round
    that has them, with the gradient-masking flag; nothing when no run measured them."""
    lines = []
    for run in runs:
        if rounds := run.rounds("autoattack"):
            values = [run.values(rounds[-1], c, "accuracy") for c in STANDARD_NAMES]
            gap = statistics.fmean(values[1]) - statistics.fmean(values[3])
            flag = f"**{gap:+.2f}: gradient masking?**" if gap > MASKING_FLAG else f"{gap:+.2f}"
            lines.append(_cells_row(f"{run.name} (round {rounds[-1]})", [*map(cell, values), flag]))
    if not lines:
        return []
    header = "| run | " + " | ".join(STANDARD_NAMES.values()) + " | PGD-20 minus AutoAttack |"
    return [header, "|---" * (len(STANDARD_NAMES) + 2) + "|", *lines]


def figure(runs: list[Run], condition: str, path: Path) -> None:
    # Imported here: the SuperNode image has no matplotlib (nor Pillow, which it brings), and its `ecg-fat`
    # commands draw nothing.
    from matplotlib.figure import Figure  # the object API: files only, no display or global state
    from matplotlib.ticker import MaxNLocator
    from PIL import Image

    fig = Figure(figsize=(10, 7))
    axes = fig.subplots(2, 2, sharex=True)
    for ax, (metric, title) in zip(axes.flat, METRICS.items(), strict=True):
        for run in runs:
            rounds = run.rounds(condition)
            values = [run.values(r, condition, metric) for r in rounds]
            mean = np.array([statistics.fmean(v) for v in values])
            seeds = f", mean of {len(run.seeds)} seeds" if len(run.seeds) > 1 else ""
            label = f"{run.name} ({'FAT' if run.adversarial else 'non-FAT'}{seeds})"
            (line,) = ax.plot(rounds, mean, marker="o", label=label)
            if len(run.seeds) > 1:  # the spread: mean +- one sample standard deviation
                sd = [statistics.stdev(v) for v in values]
                low, high = (
                    [m - d for m, d in zip(mean, sd, strict=True)],
                    [m + d for m, d in zip(mean, sd, strict=True)],
                )
                ax.fill_between(rounds, low, high, color=line.get_color(), alpha=0.2)
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("round")
    axes[0][0].legend(loc="best")
    fig.suptitle(f"Global model on the test set: {CONDITION_NAMES[condition]}")
    fig.tight_layout()
    # A line chart needs no 32-bit colour: a 256-colour palette makes the PNG a third of the size with no visible
    # change, so that report.html, which embeds every figure, stays small enough to commit for many runs.
    rgba = io.BytesIO()
    fig.savefig(rgba, format="png", dpi=110)
    Image.open(rgba).convert("RGB").quantize(colors=256).save(path, format="png", optimize=True)


def write_report(result_dirs: list[Path], out: Path, discussion: str | None = None) -> Path:
    """report.md with its figures, and report.html: the same page in one self-contained file (figures
    embedded) with each run's config and the report's provenance, readable in a browser without a server."""
    runs = [load_run(directory) for directory in result_dirs]
    out.mkdir(parents=True, exist_ok=True)
    # Relative to the report, so that a committed report names its committed runs, not this machine's paths.
    names = [os.path.relpath(directory.resolve(), out.resolve()) for directory in result_dirs]
    parts = ["# ECG-FAT results", "", "Runs: " + ", ".join(f"`{name}`" for name in names), ""]
    for number, (metric, title) in enumerate(METRICS.items(), start=2):
        parts += [f"## Table {number}: {title} (%) at the last round", "", metric_table(runs, metric), ""]
    if standard := standard_table(runs):
        parts += [
            "## Accuracy (%) under the field's standard attacks",
            "",
            "AutoAttack (APGD-CE, APGD-T, FAB-T, Square; L-inf 8/255) and PGD-100 with restarts, on a fixed "
            f"stratified subset of the test set, beside PGD-20 on the same windows; a gap over {MASKING_FLAG:g} "
            "points between PGD-20 and AutoAttack is flagged.",
            "",
            *standard,
            "",
        ]
    parts += ["## Per-class recall (%) at the last round", ""]
    for run in runs:
        parts += [f"### {run.name}", "", recall_table(run), ""]
    parts += [
        "## Summary",
        "",
        *summary(runs),
        "",
        "## Cells more than 1.5 points from the paper",
        "",
        *paper_differences(runs),
        "",
        *([discussion.strip(), ""] if discussion else []),
        "## Figures",
        "",
    ]
    for condition in CONDITIONS:
        name = f"figure_{condition}.png"
        figure(runs, condition, out / name)
        parts.append(f"![{CONDITION_NAMES[condition]}]({name})")
    path = out / "report.md"
    markdown = "\n".join(parts) + "\n"
    path.write_text(markdown)
    configs = {
        run.name if run_dir == directory else f"{run.name}/{run_dir.name}": _config_text(run_dir)
        for run, directory in zip(runs, result_dirs, strict=True)
        for run_dir in seed_dirs(directory)
    }
    (out / "report.html").write_text(html_page(markdown, out, configs))
    return path


def _config_text(directory: Path) -> str:
    config = directory / "config.json"
    return config.read_text() if config.is_file() else "(no config.json)"


# ----------------------------------------------------------------------------- the HTML page

_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"\[([^\]]+)\]\(([^)]+)\)"), r'<a href="\2">\1</a>'),
]
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eef; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
"""


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    for pattern, replacement in _INLINE:
        text = pattern.sub(replacement, text)
    return text


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _image(alt: str, file: Path) -> str:
    data = base64.b64encode(file.read_bytes()).decode() if file.is_file() else ""
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def markdown_to_html(markdown: str, images: Path) -> str:
    """The Markdown this module writes (headings, tables, lists, images, paragraphs; code, bold and links
    inside), as HTML; images from `images` are embedded, so the page stands alone."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif heading := re.match(r"^(#{1,4}) (.*)$", line):
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            i += 1
        elif image := re.match(r"^!\[([^\]]*)\]\(([^)]+)\)$", line.strip()):
            out.append(_image(image.group(1), images / image.group(2)))
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if not re.match(r"^\|(-+\|)+$", lines[i].replace(" ", "")):
                    rows.append(_cells(lines[i]))
                i += 1
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||- |!\[)", lines[i]):
                paragraph.append(lines[i])
                i += 1
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    return "\n".join(out)


def html_page(markdown: str, images: Path, configs: dict[str, str]) -> str:
    runs = "".join(
        f"<details><summary>{html.escape(name)}: config.json</summary><pre>{html.escape(text)}</pre></details>"
        for name, text in configs.items()
    )
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    version = importlib.metadata.version("ecg-fat")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>ECG-FAT results</title>'
        f"<style>{STYLE}</style></head><body>\n{markdown_to_html(markdown, images)}\n"
        f"<h2>Runs: configuration and provenance</h2>{runs}"
        f"<p>Made by ecg-fat {html.escape(version)} (<code>ecg-fat report</code>) on {made}.</p>\n</body></html>\n"
    )
