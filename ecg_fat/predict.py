"""`ecg-fat predict`: apply a trained model to a hospital's own WFDB recordings.

A record's beats come from its `.atr` annotations, or, where it has none, from wfdb's XQRS detector. A
record at another sampling rate is resampled to 360 Hz (`wfdb.processing.resample_sig`, the annotations
with `resample_ann`) and every beat is windowed and scaled exactly as for training (`common.data`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import wfdb
import wfdb.processing

from common.config import AAMI_CLASSES, AAMI_MAP, NUM_CLASSES, SAMPLING_RATE_HZ, WindowConfig
from common.data import (
    DataError,
    find_records,
    lead_index,
    minmax_scale,
    read_annotations,
    read_header,
    read_signal,
    rr_features,
    write_atomically,
)
from common.metrics import classification_metrics
from common.model import EcgCnn, reads_rhythm

log = logging.getLogger("ecg_fat")
EXPORT_SETTINGS = "settings.json"
EXPORT_MODEL = "model.pt2"
EXPORT_WEIGHTS = "weights.pt"
# Sampling rates a record may have: below 100 Hz a QRS complex (80-100 ms) spans under 10 samples; no ECG
# recorder goes above 20 kHz; and the bound keeps resampling (an FFT of the whole record) within a few times
# the record's memory: a header claiming 0.001 Hz asked for 40.8 GiB.
RECORD_RATES_HZ = (100, 20_000)


class ModelError(ValueError):
    """A model file that is not this model's weights or export; the message names the file."""


@dataclass(frozen=True)
class RecordBeats:
    """One record's beat windows, raw (not yet scaled), where they sit, and their annotated class if any."""

    record: str
    samples: np.ndarray  # beat positions at 360 Hz
    windows: np.ndarray  # (n, 1, length) float32, unscaled
    rhythm: np.ndarray  # (n, RHYTHM_FEATURES) float32: each beat's RR features, for a model that reads them
    labels: np.ndarray | None  # AAMI class index per beat, from the .atr; None: beats were detected
    source: str  # "annotations" or "XQRS detector"


# ----------------------------------------------------------------------------- the model


class Classifier:
    """Probabilities per beat from raw windows (scaled here as for training), with the weights read by
    `torch.load(weights_only=True)`: a state dict, or the copy of it an export directory holds. An export's
    model.pt2 is never loaded here: `torch.export.load` unpickles parts of the archive with weights_only=False
    (its sample inputs, pickled weights or constants), so a crafted .pt2 runs code when loaded."""

    def __init__(self, path: Path) -> None:
        if path.suffix == ".pt2":
            raise ModelError(
                f"{path}: a torch.export program, which torch.export.load unpickles (a crafted one runs code); "
                f"give its export directory, whose {EXPORT_WEIGHTS} is read as weights only"
            )
        file = path / EXPORT_WEIGHTS if path.is_dir() else path
        if not file.is_file():
            missing = f"no {EXPORT_WEIGHTS} in this directory" if path.is_dir() else "no such model file or directory"
            raise ModelError(f"{path}: {missing}")
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
            model = EcgCnn(rhythm=reads_rhythm(state))
            model.load_state_dict(state)
        except (RuntimeError, pickle.UnpicklingError, AttributeError, TypeError, ValueError, KeyError) as error:
            first_line = next(iter(str(error).splitlines()), "")
            raise ModelError(f"{file}: not weights of this model ({error.__class__.__name__}: {first_line})") from error
        self.module = model.eval()

    def probabilities(self, raw_windows: np.ndarray, rhythm: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        windows = minmax_scale(raw_windows)
        if self.module.rhythm:
            windows = np.concatenate([windows, rhythm[:, None, :]], axis=-1)
        with torch.inference_mode():
            logits = [
                self.module(torch.from_numpy(b)) for b in np.array_split(windows, max(1, len(windows) // batch_size))
            ]
        return torch.softmax(torch.cat(logits), dim=1).numpy()


def export_settings(path: Path) -> dict:
    """The preprocessing an export was made with (its lead and window); {} for a state dict."""
    settings = (path if path.is_dir() else path.parent) / EXPORT_SETTINGS
    if not settings.is_file():
        return {}
    try:
        return dict(json.loads(settings.read_text())["preprocessing"])
    except (ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{settings}: not an export's settings ({type(error).__name__}: {error})") from error


# ----------------------------------------------------------------------------- records


def read_beats(record: Path, lead: int | str, window: WindowConfig) -> RecordBeats:
    """A record's beat windows at 360 Hz: around its annotated beats, or around detected QRS complexes."""
    hea = record.with_suffix(".hea")
    if not hea.is_file():
        raise DataError(f"{hea}: no such WFDB record (a .hea header is needed)")
    header = read_header(record)
    low, high = RECORD_RATES_HZ
    if not low <= header.fs <= high:
        raise DataError(f"{hea}: sampling rate {header.fs} Hz, outside the {low}-{high} Hz an ECG is recorded at")
    channel = lead_index(header, lead, hea)
    signal = read_signal(record, header, channel)
    annotated = record.with_suffix(".atr").is_file()
    if annotated:
        annotation = read_annotations(record, len(signal))
        keep = np.array([symbol in AAMI_MAP for symbol in annotation.symbol], dtype=bool)
        samples = np.asarray(annotation.sample)[keep]
        labels = np.array([AAMI_CLASSES.index(AAMI_MAP[s]) for s, k in zip(annotation.symbol, keep, strict=True) if k])
    if header.fs != SAMPLING_RATE_HZ:
        signal, _ = wfdb.processing.resample_sig(signal, header.fs, SAMPLING_RATE_HZ)
        if annotated:
            samples = wfdb.processing.resample_ann(samples, header.fs, SAMPLING_RATE_HZ)
    if not annotated:
        samples = np.asarray(wfdb.processing.xqrs_detect(signal, SAMPLING_RATE_HZ, verbose=False), dtype=np.int64)
        labels = None
    inside = (samples - window.before >= 0) & (samples + window.after <= len(signal))
    rhythm = rr_features(samples)[inside]  # from every beat, as `prepare --rhythm` computes them
    samples = samples[inside]
    windows = signal[samples[:, None] + np.arange(-window.before, window.after)][:, None, :].astype(np.float32)
    return RecordBeats(
        record.name, samples, windows, rhythm, labels[inside] if annotated else None,
        "annotations" if annotated else "XQRS detector",
    )  # fmt: skip


def records_at(path: Path) -> list[Path]:
    """One record (given with or without its extension) or every record of a directory."""
    if path.is_dir():
        return find_records(path)
    record = path.with_suffix("") if path.suffix in (".hea", ".dat", ".atr") else path
    if not record.with_suffix(".hea").is_file():
        raise DataError(f"{path}: no such WFDB record or directory of records")
    return [record]


# ----------------------------------------------------------------------------- prediction


def predict_record(classifier: Classifier, beats: RecordBeats) -> list[dict]:
    probabilities = (
        classifier.probabilities(beats.windows, beats.rhythm) if len(beats.samples) else np.zeros((0, NUM_CLASSES))
    )
    rows = []
    for i, sample in enumerate(beats.samples):
        row = {
            "record": beats.record,
            "sample": int(sample),
            "time_s": round(sample / SAMPLING_RATE_HZ, 3),
            "predicted": AAMI_CLASSES[int(probabilities[i].argmax())],
            **{f"p_{c}": round(float(p), 6) for c, p in zip(AAMI_CLASSES, probabilities[i], strict=True)},
        }
        if beats.labels is not None:
            row["annotated"] = AAMI_CLASSES[int(beats.labels[i])]
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = ["record", "sample", "time_s", "predicted", *(f"p_{c}" for c in AAMI_CLASSES), "annotated"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, lambda file: file.write(text.getvalue().encode()))


def summary(rows: list[dict]) -> str:
    """Beats per predicted class; where beats are annotated, the agreement (confusion matrix, recall)."""
    predicted = np.array([AAMI_CLASSES.index(r["predicted"]) for r in rows], dtype=np.int64)
    counts = np.bincount(predicted, minlength=NUM_CLASSES)
    lines = [
        f"{len(rows)} beats; predicted: " + ", ".join(f"{c} {n}" for c, n in zip(AAMI_CLASSES, counts, strict=True))
    ]
    annotated = [r for r in rows if "annotated" in r]
    if annotated:
        truth = np.array([AAMI_CLASSES.index(r["annotated"]) for r in annotated], dtype=np.int64)
        guess = np.array([AAMI_CLASSES.index(r["predicted"]) for r in annotated], dtype=np.int64)
        metrics = classification_metrics(truth, guess)
        lines.append(f"agreement with the annotations: accuracy {100 * metrics['accuracy']:.2f}%")
        lines.append("recall: " + ", ".join(f"{c} {100 * r:.1f}%" for c, r in metrics["recall_per_class"].items()))
        lines.append("confusion (rows: annotated, columns: predicted " + " ".join(AAMI_CLASSES) + "):")
        lines += [
            f"  {c}  " + " ".join(f"{n:6d}" for n in row)
            for c, row in zip(AAMI_CLASSES, metrics["confusion"], strict=True)
        ]
    return "\n".join(lines)
