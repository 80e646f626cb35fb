"""Every committed report.md is what `ecg-fat report` makes today from the committed runs it names: a report
edited by hand, a run changed without its report, or report code whose output changed fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ecg_fat.report import write_report

ROOT = Path(__file__).resolve().parent.parent
REPORTS = sorted((ROOT / "docs" / "results").rglob("report.md"))
RUNS_LINE = 2  # "Runs: `a`, `b`": the runs, relative to the report's directory


def test_the_committed_reports_are_found() -> None:
    assert len(REPORTS) >= 6, [str(path) for path in REPORTS]


@pytest.mark.parametrize("committed", REPORTS, ids=lambda path: str(path.parent.relative_to(ROOT)))
def test_a_committed_report_is_regenerated_unchanged(committed: Path, tmp_path: Path) -> None:
    lines = committed.read_text().splitlines()
    runs = [committed.parent / name for name in re.findall(r"`([^`]+)`", lines[RUNS_LINE])]
    assert runs and all(run.is_dir() for run in runs), f"{committed}: line 3 names no committed run directory"
    # RUNS.md's command passes the discussion that lives beside the report (paper-iid's only).
    discussion = committed.parent / "discussion.md"
    fresh = write_report(runs, tmp_path, discussion.read_text() if discussion.is_file() else None)
    regenerated = fresh.read_text().splitlines()
    # The runs' names are relative to the output directory, which here is another one.
    del regenerated[RUNS_LINE], lines[RUNS_LINE]
    assert regenerated == lines, f"{committed} differs from `ecg-fat report` of its runs: regenerate and commit it"
