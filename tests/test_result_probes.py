"""The probe scripts that committed result pages quote run on the product's current code (tiny inputs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from common.data import Beats, save_beats
from common.model import EcgCnn

ROOT = Path(__file__).resolve().parent.parent


def test_rhythm_probe_runs_on_a_rhythm_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2, 3, 4] * 8, dtype=np.int64)
    save_beats(tmp_path / "test.npz", Beats(rng.random((len(y), 1, 184), dtype=np.float32), y, np.full(len(y), "r")))
    torch.manual_seed(0)
    torch.save(EcgCnn(rhythm=True).state_dict(), tmp_path / "round_010.pt")
    script = "docs/results/hospitals/rhythm_probe.py"
    run = subprocess.run(
        [sys.executable, script, str(tmp_path / "round_010.pt"), str(tmp_path / "test.npz"), "--windows", "20"],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "RR features" in run.stdout
    assert "S beats: mean P(S)" in run.stdout
    assert "20 random test windows, accuracy (%): clean" in run.stdout
    assert "cw window" in run.stdout and "pgd window" in run.stdout
