"""Shared fixtures: small synthetic WFDB records written with wfdb itself."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import wfdb
from flwr.supercore.task_identity import TaskIdentity

from common.config import PrepareConfig
from common.data import Beats

MITDB_ENV = "ECG_FAT_MITDB"


def write_record(
    directory: Path,
    name: str,
    samples: Sequence[int],
    symbols: Sequence[str],
    length: int = 2000,
    fs: int = 360,
    flat: tuple[int, int] | None = None,
    seed: int = 0,
) -> Path:
    """A two-lead record (MLII, V1) of `length` samples with beat annotations; `flat` zeroes a stretch."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / fs
    signal = np.stack([np.sin(2 * np.pi * 1.2 * t), np.cos(2 * np.pi * 0.7 * t)], axis=1)
    signal += 0.05 * rng.standard_normal(signal.shape)
    if flat:
        signal[flat[0] : flat[1]] = 0.0
    wfdb.wrsamp(
        name,
        fs=fs,
        units=["mV", "mV"],
        sig_name=["MLII", "V1"],
        p_signal=signal,
        fmt=["212", "212"],
        write_dir=str(directory),
    )
    wfdb.wrann(name, "atr", np.asarray(samples), symbol=list(symbols), write_dir=str(directory))
    return directory / name


def write_dataset(directory: Path, records: int = 6, beats_per_record: int = 40) -> Path:
    """`records` records whose beats cycle through every AAMI class (and one unknown symbol)."""
    directory.mkdir(parents=True, exist_ok=True)
    cycle = ["N", "N", "L", "A", "V", "N", "F", "/", "R", "S", "E", "f", "+"]
    for r in range(records):
        samples = np.arange(beats_per_record) * 100 + 150
        symbols = [cycle[(i + r) % len(cycle)] for i in range(beats_per_record)]
        write_record(directory, f"{100 + r}", samples, symbols, length=int(samples[-1]) + 200, seed=r)
    return directory


@pytest.fixture
def record_dir(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "records")


def synthetic_beats(n: int = 600, records: int = 12, seed: int = 0) -> Beats:
    """Random windows with a realistic class imbalance and record names, for split/partition tests."""
    rng = np.random.default_rng(seed)
    y = rng.choice(5, size=n, p=[0.6, 0.1, 0.15, 0.05, 0.1]).astype(np.int64)
    record = np.array([f"r{i % records:02d}" for i in rng.permutation(n)])
    return Beats(rng.random((n, 1, 180), dtype=np.float32), y, record)


@pytest.fixture
def small_config() -> PrepareConfig:
    return PrepareConfig(clients=3)


@pytest.fixture
def mitdb() -> Path:
    """The real MIT-BIH records, named by $ECG_FAT_MITDB (.ci/run points it at ../shared/data/mitdb)."""
    path = os.environ.get(MITDB_ENV)
    if not path or not Path(path, "100.hea").is_file():
        pytest.skip(f"real MIT-BIH records not available: set {MITDB_ENV} to a directory holding them")
    return Path(path)


@pytest.fixture
def task_identity():
    """What Flower sets in a ClientApp process before it calls the app."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 7
    yield
    TaskIdentity._task_id = TaskIdentity._run_id = TaskIdentity._node_id = None
