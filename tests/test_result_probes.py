"""The probe scripts that committed result pages quote run on the product's current code (tiny inputs), and
refuse a wrong file in one line naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import Beats, save_beats
from common.model import EcgCnn

ROOT = Path(__file__).resolve().parent.parent
RHYTHM_PROBE = "docs/results/hospitals/rhythm_probe.py"


def write_test_set(path: Path, length: int) -> Path:
    y = np.array([0, 1, 2, 3, 4] * 8, dtype=np.int64)
    windows = np.random.default_rng(0).random((len(y), 1, length), dtype=np.float32)
    save_beats(path, Beats(windows, y, np.full(len(y), "r")))
    return path


def write_weights(path: Path, rhythm: bool) -> Path:
    torch.manual_seed(0)
    torch.save(EcgCnn(rhythm=rhythm).state_dict(), path)
    return path


def run_probe(*args: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, RHYTHM_PROBE, *map(str, args)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_rhythm_probe_runs_on_a_rhythm_checkpoint(tmp_path: Path) -> None:
    test = write_test_set(tmp_path / "test.npz", 184)
    run = run_probe(write_weights(tmp_path / "round_010.pt", rhythm=True), test, "--windows", "20")
    assert run.returncode == 0, run.stderr
    assert "RR features" in run.stdout
    assert "S beats: mean P(S)" in run.stdout
    assert "20 random test windows, accuracy (%): clean" in run.stdout
    assert "cw window" in run.stdout and "pgd window" in run.stdout


@pytest.mark.parametrize("case", ["window-only weights", "window-only test set", "not weights", "no test set"])
def test_rhythm_probe_refuses_a_wrong_file_in_one_line(tmp_path: Path, case: str) -> None:
    weights = write_weights(tmp_path / "round_010.pt", rhythm=case != "window-only weights")
    test = write_test_set(tmp_path / "test.npz", 180 if case == "window-only test set" else 184)
    if case == "not weights":
        weights.write_bytes(b"not a checkpoint")
    if case == "no test set":
        test.unlink()
    run = run_probe(weights, test)
    named = test if case in ("window-only test set", "no test set") else weights
    assert run.returncode == 2 and run.stdout == ""
    assert "Traceback" not in run.stderr and str(named) in run.stderr.splitlines()[-1]
