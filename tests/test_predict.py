"""`ecg-fat predict` and `ecg-fat export` on synthetic WFDB records (and, marked realdata, on MIT-BIH 100)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import wfdb
import wfdb.processing

from common.config import AAMI_CLASSES, AAMI_MAP, PrepareConfig, TrainConfig
from common.data import read_record
from common.model import build_model
from common.train import train
from ecg_fat.bench import write_synthetic_records
from ecg_fat.cli import main
from ecg_fat.predict import Classifier, read_beats
from server.results import Results
from tests.conftest import write_record

WINDOW = PrepareConfig().window


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_records(tmp_path_factory.mktemp("records"), records=2, beats=200)


@pytest.fixture(scope="module")
def weights(records: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained briefly on the records, saved as a run saves it (with the run's config and metrics)."""
    model = build_model(0)
    beats = read_record(records / "100", 0, WINDOW)
    train(model, beats, TrainConfig(epochs=2, lr=3e-3, batch_size=32, adversarial=False), torch.device("cpu"))
    run = tmp_path_factory.mktemp("run")
    results = Results(run)
    from common.config import FederationConfig

    results.start(FederationConfig(num_rounds=1))
    metric = {"accuracy": 0.9, "precision": 0.8, "recall": 0.7, "f1": 0.75, "seconds": 1.0}
    results.add_metrics(1, {"clean": metric | {"recall_per_class": dict.fromkeys(AAMI_CLASSES, 0.5)}})
    torch.save(model.state_dict(), run / "final_model.pt")
    return run / "final_model.pt"


def read_rows(path: Path) -> list[dict]:
    with path.open() as file:
        return list(csv.DictReader(file))


def test_predicts_every_annotated_beat_as_the_model_does(records: Path, weights: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "beats.csv"
    assert main(["predict", "--model", str(weights), "--record", str(records / "100"), "--out", str(out)]) == 0
    rows = read_rows(out)
    beats = read_record(records / "100", 0, WINDOW)  # the training path: the same windows, scaled
    assert len(rows) == len(beats)
    model = build_model(0)
    model.load_state_dict(torch.load(weights, weights_only=True))
    with torch.no_grad():
        expected = torch.softmax(model.eval()(torch.from_numpy(beats.x)), 1).numpy()
    got = np.array([[float(r[f"p_{c}"]) for c in AAMI_CLASSES] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [r["predicted"] for r in rows] == [AAMI_CLASSES[i] for i in expected.argmax(1)]
    assert [r["annotated"] for r in rows] == [AAMI_CLASSES[i] for i in beats.y]
    first = rows[0]
    assert float(first["time_s"]) == pytest.approx(int(first["sample"]) / 360, abs=1e-3)
    printed = capsys.readouterr().out
    agreement = (np.array([r["predicted"] for r in rows]) == np.array([r["annotated"] for r in rows])).mean()
    assert f"{len(rows)} beats; predicted: N " in printed
    assert f"agreement with the annotations: accuracy {100 * agreement:.2f}%" in printed
    assert "confusion (rows: annotated" in printed


def test_without_annotations_the_beats_are_detected(records: Path, weights: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for suffix in (".hea", ".dat"):
        shutil.copy2(records / f"100{suffix}", bare)
    beats = read_beats(bare / "100", 0, WINDOW)
    annotated = wfdb.rdann(str(records / "100"), "atr").sample
    assert beats.source == "XQRS detector" and beats.labels is None
    assert len(beats.samples) >= 0.5 * len(annotated)  # XQRS is made for real ECG; these are synthetic shapes
    assert np.abs(beats.samples[:, None] - annotated[None, :]).min(1).max() <= 10  # each on a real beat
    out = tmp_path / "bare.csv"
    assert main(["predict", "--model", str(weights), "--record", str(bare), "--out", str(out)]) == 0
    rows = read_rows(out)
    assert len(rows) == len(beats.samples) and all(r["annotated"] == "" for r in rows)


def test_a_record_at_another_rate_is_resampled_to_360_hz(records: Path, weights: Path, tmp_path: Path) -> None:
    record = wfdb.rdrecord(str(records / "100"))
    annotation = wfdb.rdann(str(records / "100"), "atr")
    signal, _ = wfdb.processing.resample_sig(record.p_signal[:, 0], 360, 250)
    samples = wfdb.processing.resample_ann(annotation.sample, 360, 250)
    slow = tmp_path / "slow"
    slow.mkdir()
    wfdb.wrsamp("200", fs=250, units=["mV"], sig_name=["MLII"], p_signal=signal[:, None], fmt=["212"],
                write_dir=str(slow))  # fmt: skip
    wfdb.wrann("200", "atr", samples, symbol=annotation.symbol, write_dir=str(slow))
    resampled = read_beats(slow / "200", 0, WINDOW)
    original = read_beats(records / "100", 0, WINDOW)
    assert len(resampled.samples) == len(original.samples)
    assert np.abs(resampled.samples - original.samples).max() <= 2
    classifier = Classifier(weights)
    slow_classes = classifier.probabilities(resampled.windows, resampled.rhythm).argmax(1)
    assert (slow_classes == classifier.probabilities(original.windows, original.rhythm).argmax(1)).mean() >= 0.95


def test_export_gives_the_state_dicts_outputs_and_carries_its_settings(
    records: Path, weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    assert main(["export", "--model", str(weights), "--out", str(out), "--lead", "MLII"]) == 0
    state = Classifier(weights)
    beats = read_beats(records / "101", 0, WINDOW)
    raw = beats.windows
    raw[3] = 0.7  # a flat window scales to zeros in both
    program = torch.export.load(str(out / "model.pt2")).module()  # no ECG-FAT code needed to use it
    with torch.no_grad():
        probabilities = torch.softmax(program(torch.from_numpy(raw)), dim=1).numpy()
    np.testing.assert_allclose(probabilities, state.probabilities(raw, beats.rhythm), atol=1e-5)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["classes"] == list(AAMI_CLASSES) and settings["aami_map"] == AAMI_MAP
    assert settings["preprocessing"]["lead"] == "MLII" and settings["preprocessing"]["sampling_rate_hz"] == 360
    assert settings["preprocessing"]["window"] == {"before": 90, "after": 90}
    provenance = settings["provenance"]
    assert provenance["run_config"]["num-rounds"] == 1 and provenance["last_round"] == 1
    assert provenance["metrics_last_round"]["clean"]["accuracy"] == 0.9
    assert provenance["sha256"] == hashlib.sha256((out / "weights.pt").read_bytes()).hexdigest()
    assert (out / "weights.pt").read_bytes() == weights.read_bytes() and provenance["code_version"].startswith("0.1.0")
    assert (
        main(["predict", "--model", str(out), "--record", str(records / "101"), "--out", str(tmp_path / "e.csv")]) == 0
    )
    assert (
        main(["predict", "--model", str(weights), "--record", str(records / "101"), "--out", str(tmp_path / "s.csv")])
        == 0
    )
    assert [r["predicted"] for r in read_rows(tmp_path / "e.csv")] == [
        r["predicted"] for r in read_rows(tmp_path / "s.csv")
    ]


def test_bad_input_is_one_line_naming_it(records: Path, weights: Path, tmp_path: Path, capsys) -> None:
    cases = [
        (["--model", str(weights), "--record", str(tmp_path / "nope")], 1, f"{tmp_path / 'nope'}: no such WFDB record"),
        (["--model", str(weights), "--record", str(records / "100"), "--lead", "V5"], 1, "no lead named 'V5'"),
        (["--model", str(weights), "--record", str(records / "100"), "--lead", "3"], 1, "lead index 3 out of range"),
        (["--model", str(tmp_path / "none.pt"), "--record", str(records / "100")], 2, "--model"),
        (["--model", str(weights), "--record", str(records / "100"), "--out", str(tmp_path)], 2, "is a directory"),
    ]
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), other)
    cases.append((["--model", str(other), "--record", str(records / "100")], 2, "not weights of this model"))
    for rate in ("0", "0.001", "1e9"):  # a broken header: a division by zero, or 40.8 GiB for 0.001 Hz
        broken = tmp_path / f"rate-{rate}"
        shutil.copytree(records, broken)
        header = (broken / "100.hea").read_text().split("\n", 1)
        fields = header[0].split()
        (broken / "100.hea").write_text(" ".join([*fields[:2], rate, *fields[3:]]) + "\n" + header[1])
        message = f"{broken / '100.hea'}: sampling rate"
        cases.append((["--model", str(weights), "--record", str(broken / "100")], 1, message))
    for args, code, message in cases:
        assert main(["predict", *args]) == code, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    export = tmp_path / "export"
    assert main(["export", "--model", str(weights), "--out", str(export)]) == 0
    assert main(["export", "--model", str(export), "--out", str(tmp_path / "again")]) == 2
    assert "an export already" in capsys.readouterr().err


class CodeInAPickle:
    """Unpickled, it creates `marker` (and returns what torch.export expects of sample inputs)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return eval, (f"open({str(self.marker)!r}, 'w').close() or ((), {{}})",)


def test_a_received_model_cannot_run_code_in_predict(
    records: Path, weights: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hospital applies models it receives. torch.export.load unpickles a .pt2's sample inputs with
    weights_only=False when weights_only fails, so a crafted export runs code when loaded; predict reads an
    export's weights.pt with weights_only=True instead and refuses a .pt2 given directly."""
    marker = tmp_path / "code-ran"
    payload = io.BytesIO()
    torch.save(CodeInAPickle(marker), payload)
    crafted = tmp_path / "crafted"
    assert main(["export", "--model", str(weights), "--out", str(crafted)]) == 0
    genuine = (crafted / "model.pt2").read_bytes()
    with zipfile.ZipFile(io.BytesIO(genuine)) as original, zipfile.ZipFile(crafted / "model.pt2", "w") as archive:
        for entry in original.infolist():
            data = payload.getvalue() if entry.filename.endswith("sample_inputs/model.pt") else original.read(entry)
            archive.writestr(entry.filename, data)
    record = str(records / "101")
    assert main(["predict", "--model", str(crafted), "--record", record]) == 0  # its weights.pt, never its .pt2
    capsys.readouterr()
    code_in_weights = tmp_path / "code-in-weights"
    code_in_weights.mkdir()
    (code_in_weights / "weights.pt").write_bytes(payload.getvalue())
    (tmp_path / "settings").mkdir()
    shutil.copy2(weights, tmp_path / "settings" / "weights.pt")
    (tmp_path / "settings" / "settings.json").write_text('{"preprocessing": ')
    for model, message in [
        (crafted / "model.pt2", "a torch.export program"),
        (code_in_weights, "not weights of this model"),
        (tmp_path / "settings", "settings.json: not an export's settings"),
    ]:
        assert main(["predict", "--model", str(model), "--record", record]) == 2, model
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not marker.exists()
    # torch's own warning on the fallback has a broken format string, which pytest's log capture raises on
    monkeypatch.setattr(logging.getLogger("torch._export.serde.serialize"), "disabled", True)
    torch.export.load(str(crafted / "model.pt2"))  # the attack is real: loading the .pt2 itself runs the code
    assert marker.exists()


@pytest.mark.realdata
def test_mit_bih_record_100(mitdb: Path, weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "100.csv"
    assert main(["predict", "--model", str(weights), "--record", str(mitdb / "100"), "--out", str(out)]) == 0
    assert len(read_rows(out)) == 2271  # its 2,273 beats of an AAMI class but two too near the record's ends
    bare = tmp_path / "bare"
    bare.mkdir()
    for suffix in (".hea", ".dat"):
        shutil.copy2(mitdb / f"100{suffix}", bare)
    detected = read_beats(bare / "100", 0, WINDOW)
    assert abs(len(detected.samples) - 2271) <= 5  # XQRS on real ECG finds every beat


@pytest.fixture(scope="module")
def rhythm_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rhythm model whose RR features weigh heavily, so that features computed otherwise than prepare
    computes them would change its probabilities far beyond the tolerance."""
    state = build_model(0, rhythm=True).state_dict()
    state["classifier.1.weight"][:, 180 // 16 * 128 :] *= 50
    path = tmp_path_factory.mktemp("rhythm") / "weights.pt"
    torch.save(state, path)
    return path


def test_a_rhythm_model_predicts_and_exports_with_the_features_prepare_gives(
    rhythm_weights: Path, tmp_path: Path
) -> None:
    samples = np.cumsum(np.random.default_rng(0).integers(150, 450, size=60))  # an irregular rhythm
    record = write_record(tmp_path, "300", samples, ["N", "A", "V", "N"] * 15, length=int(samples[-1]) + 200)
    out = tmp_path / "beats.csv"
    assert main(["predict", "--model", str(rhythm_weights), "--record", str(record), "--out", str(out)]) == 0
    training = read_record(record, 0, WINDOW, rhythm=True)  # the windows and features a shard holds
    model = build_model(0, rhythm=True)
    model.load_state_dict(torch.load(rhythm_weights, weights_only=True))
    with torch.no_grad():
        expected = torch.softmax(model.eval()(torch.from_numpy(training.x)), 1).numpy()
        without_rhythm = training.x.copy()
        without_rhythm[..., 180:] = 0.5  # a regular rhythm's features
        assert np.abs(torch.softmax(model(torch.from_numpy(without_rhythm)), 1).numpy() - expected).max() > 0.01
    got = np.array([[float(r[f"p_{c}"]) for c in AAMI_CLASSES] for r in read_rows(out)])
    np.testing.assert_allclose(got, expected, atol=1e-5)

    export = tmp_path / "export"
    assert main(["export", "--model", str(rhythm_weights), "--out", str(export)]) == 0
    settings = json.loads((export / "settings.json").read_text())
    assert "(n, 1, 184)" in settings["input"] and "4 RR features" in settings["input"]
    assert settings["preprocessing"]["rhythm"].startswith("RHYTHM_FEATURES per beat from the sorted positions")
    beats = read_beats(record, 0, WINDOW)
    program = torch.export.load(str(export / "model.pt2")).module()
    with torch.no_grad():
        raw = torch.from_numpy(np.concatenate([beats.windows, beats.rhythm[:, None, :]], axis=-1))
        np.testing.assert_allclose(torch.softmax(program(raw), 1).numpy(), expected, atol=1e-5)
