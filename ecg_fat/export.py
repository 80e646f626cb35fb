"""`ecg-fat export`: the trained model as one `torch.export` program that takes raw beat windows (it scales
them itself), the weights it was made from, and its preprocessing settings and the run's provenance in a JSON
file beside them.

The program runs anywhere torch runs (`torch.export.load(path).module()`), with no ECG-FAT code; any batch
size. (TorchScript, torch.jit, is deprecated in torch 2.13.) Its pooling is nn.MaxPool1d, whose outputs
equal PairMaxPool's bit for bit (tests/test_model_attacks_training.py). `torch.export.load` unpickles, so
`ecg-fat predict` reads the weights copy instead (weights only): a received export cannot run code there.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
from pathlib import Path

import torch
from torch import nn

from common.config import AAMI_CLASSES, AAMI_MAP, RHYTHM_FEATURES, SAMPLING_RATE_HZ, WindowConfig
from common.data import rr_features, write_atomically
from common.model import EcgCnn
from ecg_fat.predict import EXPORT_MODEL, EXPORT_SETTINGS, EXPORT_WEIGHTS, Classifier, ModelError
from server.results import Results

ROOT = Path(__file__).resolve().parents[1]


class ScaledClassifier(nn.Module):
    """Raw windows (n, 1, length) in, logits out: each window min-max scaled to [0, 1] (a flat one to zeros),
    exactly as `common.data.minmax_scale` does for training, then the CNN. For a model with rhythm features
    each raw window is followed by its beat's RR features, which pass unscaled."""

    def __init__(self, model: EcgCnn) -> None:
        super().__init__()
        self.model = model

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        raw = windows[..., : self.model.window_length]
        low = raw.amin(dim=-1, keepdim=True)
        span = raw.amax(dim=-1, keepdim=True) - low
        scaled = torch.where(span > 0, (raw - low) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
        if self.model.rhythm:
            scaled = torch.cat([scaled, windows[..., self.model.window_length :]], dim=-1)
        return self.model(scaled)


def code_version() -> str:
    version = importlib.metadata.version("ecg-fat")
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except OSError:
        commit = ""
    return f"{version} ({commit})" if commit else version


def provenance(model_file: Path) -> dict:
    """What the weights came from: the run's config and last-round metrics when they lie in a results
    directory (final_model.pt beside config.json, or checkpoints/round_NNN.pt below it)."""
    found: dict = {
        "model_file": str(model_file),
        "sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
        "code_version": code_version(),
    }
    for directory in (model_file.parent, model_file.parent.parent):
        if (directory / "config.json").is_file():
            rows = Results(directory).read_jsonl("metrics")
            last = max((row["round"] for row in rows), default=None)
            found["run_config"] = json.loads((directory / "config.json").read_text())
            found["last_round"] = last
            found["metrics_last_round"] = {
                row["condition"]: {k: row[k] for k in ("accuracy", "precision", "recall", "f1", "recall_per_class")}
                for row in rows
                if row["round"] == last
            }
            break
    return found


def export(model_file: Path, out: Path, lead: int | str, window: WindowConfig) -> Path:
    """Write OUT/model.pt2 (a torch.export program), OUT/weights.pt (model_file's bytes, so provenance's
    sha256 is its hash) and OUT/settings.json; returns OUT."""
    if model_file.is_dir():
        raise ModelError(f"{model_file}: an export already; export the weights it was made from")
    weights = Classifier(model_file)
    rhythm = weights.module.rhythm
    model = EcgCnn(window_length=window.length, pool=lambda: nn.MaxPool1d(2), rhythm=rhythm)
    model.load_state_dict(weights.module.state_dict())
    example = torch.rand(2, 1, model.input_length)
    program = torch.export.export(
        ScaledClassifier(model.eval()), (example,), dynamic_shapes={"windows": {0: torch.export.Dim("batch", min=1)}}
    )
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / EXPORT_MODEL, lambda file: torch.export.save(program, file))
    write_atomically(out / EXPORT_WEIGHTS, lambda file: file.write(model_file.read_bytes()))
    features = f", then the beat's {RHYTHM_FEATURES} RR features (preprocessing.rhythm)" if rhythm else ""
    settings = {
        "input": f"raw beat windows shaped (n, 1, {model.input_length}), float32: {window.length} samples in the "
        f"record's physical units (mV), {window.before} before the beat and {window.after} from it on, at "
        f"{SAMPLING_RATE_HZ} Hz{features}",
        "output": "logits over the classes, in their order (softmax for probabilities)",
        "classes": list(AAMI_CLASSES),
        "aami_map": AAMI_MAP,
        "preprocessing": {
            "sampling_rate_hz": SAMPLING_RATE_HZ,
            "window": window.model_dump(),
            "scaling": "min-max per window to [0, 1] (a flat window to zeros), done inside the model",
            "lead": lead,
            "rhythm": " ".join((rr_features.__doc__ or "").split()) if rhythm else None,  # how to compute them
        },
        "provenance": provenance(model_file),
    }
    write_atomically(out / EXPORT_SETTINGS, lambda file: file.write(json.dumps(settings, indent=2).encode()))
    return out
