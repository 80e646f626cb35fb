"""Reading WFDB records, windowing, splitting, partitioning and writing shards."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import wfdb

from common.config import PrepareConfig, WindowConfig
from common.data import (
    TEST_FILE,
    Beats,
    DataError,
    Manifest,
    lead_index,
    load_beats,
    minmax_scale,
    partition,
    prepare,
    read_record,
    read_records,
    rr_features,
    save_beats,
    sha256_of,
    split_train_test,
)
from ecg_fat.cli import main
from tests.conftest import synthetic_beats, write_dataset, write_record

# ----------------------------------------------------------------------------- windows


def test_windows_cover_mapped_beats_inside_the_signal(tmp_path: Path) -> None:
    samples = [50, 100, 400, 700, 1000, 1300, 1910, 1950]
    symbols = ["N", "V", "A", "+", "F", "/", "L", "N"]  # 50 and 1950 leave the signal; '+' is no beat
    path = write_record(tmp_path, "200", samples, symbols, length=2000)
    beats = read_record(path, lead=0, window=WindowConfig())
    assert beats.x.shape == (5, 1, 180) and beats.x.dtype == np.float32
    assert beats.y.tolist() == [2, 1, 3, 4, 0]  # V, S, F, Q, N
    signal = wfdb.rdrecord(str(path), channels=[0]).p_signal[:, 0]
    expected = signal[1000 - 90 : 1000 + 90]
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(beats.x[2, 0], expected, atol=1e-6)


def test_window_at_the_very_end_is_kept(tmp_path: Path) -> None:
    path = write_record(tmp_path, "201", [90, 1910, 1911], ["N", "N", "N"], length=2000)
    assert len(read_record(path, 0, WindowConfig())) == 2  # [0, 180) and [1820, 2000) fit; 1911 does not


def test_windows_scaled_to_unit_range_and_flat_window_is_zeros(tmp_path: Path) -> None:
    path = write_record(tmp_path, "202", [300, 1000], ["N", "V"], length=2000, flat=(800, 1200))
    beats = read_record(path, 0, WindowConfig())
    assert not np.isnan(beats.x).any()
    assert beats.x[0].min() == 0.0 and beats.x[0].max() == pytest.approx(1.0)
    assert np.all(beats.x[1] == 0.0)


def test_rr_features_mark_a_premature_beat_and_a_regular_rhythm_is_one_half() -> None:
    samples = np.array([0, 300, 600, 900, 1050, 1500, 1800])  # the beat at 1050 comes 150 samples early
    features = rr_features(samples)
    assert features.shape == (7, 4) and features.dtype == np.float32 and np.all((features >= 0) & (features <= 1))
    mean, local = 300.0, (300 * 4 + 150) / 5  # 1800 / 6 intervals; the previous RRs of beats 0-4 (0: its next)
    np.testing.assert_allclose(features[1], [0.5, 0.5, 0.5, 0.5])  # regular so far: every ratio 1
    early = features[4]
    assert early[0] == pytest.approx(150 / mean / 2) and early[1] == pytest.approx(450 / mean / 2)
    assert early[2] == pytest.approx(local / mean / 2) and early[3] == pytest.approx(150 / local / 2)
    assert features[0][0] == features[0][1] == pytest.approx(0.5)  # no previous RR: the next one stands in
    np.testing.assert_allclose(rr_features(np.array([500])), [[0.5] * 4])  # one beat: no rhythm to tell
    assert np.isfinite(rr_features(np.array([7, 7, 7]))).all()  # beats at one sample (a crafted .atr): no NaN


def test_with_rhythm_a_window_carries_its_beats_rr_features_computed_over_every_beat(tmp_path: Path) -> None:
    samples = [50, 400, 700, 1000, 1300, 1910]
    symbols = ["N", "N", "A", "+", "V", "N"]  # 50 leaves the signal but is a neighbour; '+' is no beat
    path = write_record(tmp_path, "203", samples, symbols, length=2000)
    plain = read_record(path, 0, WindowConfig())
    rhythm = read_record(path, 0, WindowConfig(), rhythm=True)
    assert rhythm.x.shape == (4, 1, 184) and rhythm.y.tolist() == plain.y.tolist()
    np.testing.assert_array_equal(rhythm.x[..., :180], plain.x)
    np.testing.assert_array_equal(rhythm.x[:, 0, 180:], rr_features(np.array([50, 400, 700, 1300, 1910]))[1:])


def test_minmax_scale_is_per_window() -> None:
    windows = np.array([[[2.0, 4.0, 3.0]], [[5.0, 5.0, 5.0]]])
    np.testing.assert_allclose(minmax_scale(windows), [[[0.0, 1.0, 0.5]], [[0.0, 0.0, 0.0]]])


def test_auto_lead_is_mlii_where_there_is_one_else_the_first(tmp_path: Path) -> None:
    write_record(tmp_path, "201", [500], ["N"])  # MLII first
    header = wfdb.rdheader(str(tmp_path / "201"))
    header.sig_name = ["V1", "MLII"]
    assert lead_index(header, "auto", tmp_path / "201.hea") == 1
    header.sig_name = ["V5", "V2"]
    assert lead_index(header, "auto", tmp_path / "201.hea") == 0


def test_lead_by_name_and_index(tmp_path: Path) -> None:
    path = write_record(tmp_path, "203", [500], ["N"])
    by_name = read_record(path, "V1", WindowConfig())
    by_index = read_record(path, 1, WindowConfig())
    np.testing.assert_array_equal(by_name.x, by_index.x)
    assert not np.array_equal(by_name.x, read_record(path, 0, WindowConfig()).x)
    with pytest.raises(DataError, match=r"203\.hea.*no lead named 'V5'"):
        read_record(path, "V5", WindowConfig())


# ----------------------------------------------------------------------------- split and partition


def test_intra_patient_split_is_disjoint_complete_and_stratified() -> None:
    beats = synthetic_beats(1000)
    train, test = split_train_test(beats, PrepareConfig())
    assert set(train).isdisjoint(test) and len(train) + len(test) == 1000
    for label in range(5):
        total = int((beats.y == label).sum())
        assert abs(int((beats.y[test] == label).sum()) - 0.2 * total) <= 1


def test_inter_patient_split_uses_ds1_and_ds2_records() -> None:
    rng = np.random.default_rng(0)
    names = np.array(["101", "100", "102", "106", "103"])[rng.integers(0, 5, 300)]
    beats = Beats(np.zeros((300, 1, 180), np.float32), rng.integers(0, 5, 300), names)
    train, test = split_train_test(beats, PrepareConfig(split="inter-patient"))
    assert set(names[train]) == {"101", "106"} and set(names[test]) == {"100", "103"}  # 102 is paced


@pytest.mark.parametrize("scheme", ["iid", "patient", "dirichlet"])
def test_partitions_are_disjoint_and_complete(scheme: str) -> None:
    beats = synthetic_beats(900)
    shards = partition(beats, PrepareConfig(clients=4, partition=scheme))
    assert len(shards) == 4 and all(len(s) > 0 for s in shards)
    joined = np.concatenate(shards)
    assert len(joined) == len(beats) and len(np.unique(joined)) == len(beats)


def test_iid_shards_are_stratified() -> None:
    beats = synthetic_beats(1000)
    for shard in partition(beats, PrepareConfig(clients=5)):
        for label in range(5):
            assert abs(int((beats.y[shard] == label).sum()) - int((beats.y == label).sum()) / 5) <= 1


def test_patient_shards_keep_records_whole() -> None:
    beats = synthetic_beats(900, records=12)
    owners = [set(beats.record[s]) for s in partition(beats, PrepareConfig(clients=4, partition="patient"))]
    for i, a in enumerate(owners):
        for b in owners[i + 1 :]:
            assert a.isdisjoint(b)


def test_patient_shards_are_balanced_greedily_and_seeded() -> None:
    """Largest record first onto the lightest shard: 12 records of 30..140 windows in 4 shards of 240..270
    (a random assignment spreads far wider); as many records as clients is enough, one fewer is refused."""
    sizes = list(range(30, 150, 10))
    names = np.concatenate([np.full(n, f"r{i:02d}") for i, n in enumerate(sizes)])
    beats = Beats(np.zeros((len(names), 1, 180), np.float32), np.zeros(len(names), np.int64), names)
    shards = partition(beats, PrepareConfig(clients=4, partition="patient"))
    assert sorted(len(s) for s in shards) == [240, 250, 260, 270]
    again = partition(beats, PrepareConfig(clients=4, partition="patient"))
    assert all(np.array_equal(a, b) for a, b in zip(shards, again, strict=True))
    one_each = partition(beats, PrepareConfig(clients=12, partition="patient"))
    assert sorted(len(s) for s in one_each) == sizes
    with pytest.raises(DataError, match="12 record"):
        partition(beats, PrepareConfig(clients=13, partition="patient"))


def test_dirichlet_never_leaves_a_client_empty() -> None:
    """With a tiny alpha most draws leave some client without windows: those draws are redrawn."""
    beats = synthetic_beats(200)
    for seed in range(5):
        shards = partition(beats, PrepareConfig(clients=8, partition="dirichlet", alpha=0.05, seed=seed))
        assert all(len(shard) > 0 for shard in shards)


def test_dirichlet_skews_labels_more_with_smaller_alpha() -> None:
    beats = synthetic_beats(3000)

    def spread(alpha: float) -> float:
        shards = partition(beats, PrepareConfig(clients=5, partition="dirichlet", alpha=alpha))
        shares = [np.bincount(beats.y[s], minlength=5) / len(s) for s in shards]
        return float(np.std(shares, axis=0).mean())

    assert spread(0.1) > spread(100.0)


# ----------------------------------------------------------------------------- prepare


def test_prepare_writes_shards_test_and_manifest(record_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = prepare(record_dir, out, PrepareConfig(clients=3))
    written = Manifest.read(out)
    assert written == manifest
    assert written.client_files == ["client_00.npz", "client_01.npz", "client_02.npz"]
    total = 0
    for name, entry in written.files.items():
        beats = load_beats(out / name)
        assert beats.x.dtype == np.float32 and beats.x.shape[1:] == (1, 180) and beats.y.dtype == np.int64
        assert entry.sha256 == sha256_of(out / name)
        assert entry.windows == len(beats)
        assert list(entry.class_counts.values()) == np.bincount(beats.y, minlength=5).tolist()
        total += len(beats)
    assert total == written.windows_total == sum(written.class_counts.values())
    assert not list(out.glob("*.tmp"))


def test_prepare_with_rhythm_writes_longer_windows_the_same_beats_and_records_it(
    record_dir: Path, tmp_path: Path
) -> None:
    plain = prepare(record_dir, tmp_path / "plain", PrepareConfig(clients=3))
    rhythm = prepare(record_dir, tmp_path / "rhythm", PrepareConfig(clients=3, rhythm=True))
    assert Manifest.read(tmp_path / "rhythm").settings.rhythm and not plain.settings.rhythm
    for name in plain.files:
        a, b = load_beats(tmp_path / "plain" / name), load_beats(tmp_path / "rhythm" / name)
        assert b.x.shape[1:] == (1, 184) and b.y.tolist() == a.y.tolist()  # the same beats, split the same way
        np.testing.assert_array_equal(b.x[..., :180], a.x)
    assert rhythm.class_counts == plain.class_counts


def test_prepare_is_reproducible_with_the_same_seed(record_dir: Path, tmp_path: Path) -> None:
    first = prepare(record_dir, tmp_path / "a", PrepareConfig(clients=3, seed=7))
    second = prepare(record_dir, tmp_path / "b", PrepareConfig(clients=3, seed=7))
    other = prepare(record_dir, tmp_path / "c", PrepareConfig(clients=3, seed=8))
    hashes = [{k: v.sha256 for k, v in m.files.items()} for m in (first, second, other)]
    assert hashes[0] == hashes[1] != hashes[2]


def test_prepare_cli_reports_counts(record_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    assert (
        main(
            [
                "prepare",
                "--mitdb",
                str(record_dir),
                "--out",
                str(out),
                "--clients",
                "2",
                "--partition",
                "patient",
                "--lead",
                "MLII",
            ]
        )
        == 0
    )
    manifest = Manifest.read(out)
    assert manifest.settings.partition == "patient" and manifest.settings.lead == "MLII"
    assert f"{manifest.windows_total} windows" in capsys.readouterr().out


def test_prepare_again_with_the_same_settings_does_nothing(record_dir: Path, tmp_path: Path, caplog) -> None:
    """`docker compose run` restarts the prepare step: data that is there already is not read or written again."""
    out = tmp_path / "out"
    args = ["prepare", "--mitdb", str(record_dir), "--out", str(out), "--clients", "2"]
    assert main(args) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    caplog.set_level(logging.INFO)
    assert main(args) == 0
    assert "nothing to do" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    save_beats(out / "client_01.npz", load_beats(out / "client_00.npz"))  # a damaged file: prepared again
    assert main(args) == 0
    assert sha256_of(out / "client_01.npz") == Manifest.read(out).files["client_01.npz"].sha256
    assert main([*args, "--seed", "3"]) == 0  # other settings: prepared again
    assert Manifest.read(out).settings.seed == 3


# ----------------------------------------------------------------------------- bad input


def _break_missing_atr(d: Path) -> Path:
    (d / "101.atr").unlink()
    return d / "101.atr"


def _break_missing_dat(d: Path) -> Path:
    (d / "102.dat").unlink()
    return d / "102.dat"


def _break_corrupt_header(d: Path) -> Path:
    (d / "103.hea").write_text("this is not a header\n")
    return d / "103.hea"


def _break_sampling_rate(d: Path) -> Path:
    write_record(d, "104", [500], ["N"], fs=250)
    return d / "104.hea"


def _break_truncated_dat(d: Path) -> Path:
    dat = d / "101.dat"
    dat.write_bytes(dat.read_bytes()[:-30])
    return dat


def _break_header_of_another_record(d: Path) -> Path:
    hea = d / "102.hea"
    hea.write_text(hea.read_text().replace("102 ", "105 ", 1))
    return hea


def _break_atr_of_another_record(d: Path) -> Path:
    length = wfdb.rdheader(str(d / "103")).sig_len
    wfdb.wrann("103", "atr", np.array([500, length + 400]), symbol=["N", "N"], write_dir=str(d))
    return d / "103.atr"


@pytest.mark.parametrize(
    ("breaker", "problem"),
    [
        (_break_missing_atr, "missing"),
        (_break_missing_dat, "missing"),
        (_break_corrupt_header, "cannot read the header"),
        (_break_sampling_rate, "sampling rate 250"),
        (_break_truncated_dat, "the header and the signal file disagree"),
        (_break_header_of_another_record, "the header is of record '105', not '102'"),
        (_break_atr_of_another_record, "belongs to another record"),
    ],
)
def test_bad_record_names_the_file_and_writes_nothing(
    record_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, breaker, problem: str
) -> None:
    culprit = breaker(record_dir)
    out = tmp_path / "out"
    assert main(["prepare", "--mitdb", str(record_dir), "--out", str(out)]) == 1
    message = capsys.readouterr().err
    assert str(culprit) in message and problem in message
    assert not out.exists()


def test_output_path_that_is_a_file_is_one_line(record_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.write_text("not a directory")
    assert main(["prepare", "--mitdb", str(record_dir), "--out", str(out)]) == 1
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and str(out) in message and "cannot write" in message
    assert out.read_text() == "not a directory"


@pytest.mark.parametrize(
    ("error", "problem"),
    [
        (PermissionError(13, "Permission denied"), "Permission denied"),
        (OSError(28, "No space left on device"), "No space"),
    ],
    ids=["unwritable", "disk-full"],
)
def test_write_failure_is_one_line_and_loses_nothing(
    record_dir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, error: OSError, problem: str
) -> None:
    """A failure while writing (after some files were written) leaves the earlier output exactly as it was."""
    out = tmp_path / "out"
    prepare(record_dir, out, PrepareConfig(clients=3))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    written = []

    def savez_until_the_third(file, **arrays) -> None:
        if len(written) == 2:
            raise error
        written.append(file)
        np.savez(file, **arrays)

    monkeypatch.setattr("common.data.np.savez", savez_until_the_third)
    assert main(["prepare", "--mitdb", str(record_dir), "--out", str(out), "--clients", "2", "--seed", "7"]) == 1
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and str(out) in message and problem in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary left, nothing replaced


def test_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["prepare", "--mitdb", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 1
    assert "nowhere: no such directory" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_empty_result(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "rec").mkdir()
    write_record(tmp_path / "rec", "105", [500, 900], ["+", "~"])  # annotations, but no beat
    assert main(["prepare", "--mitdb", str(tmp_path / "rec"), "--out", str(tmp_path / "o")]) == 1
    assert "no beat of an AAMI class" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_flag_value_names_the_flag(record_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["prepare", "--mitdb", str(record_dir), "--out", str(tmp_path / "o"), "--test-fraction", "1.5"]) == 2
    assert "--test-fraction" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        ({"x": np.zeros((4, 180), np.float32), "y": np.zeros(4, np.int64)}, "float32 shaped"),
        ({"x": np.zeros((4, 1, 180), np.float64), "y": np.zeros(4, np.int64)}, "float32 shaped"),
        ({"x": np.zeros((4, 1, 180), np.float32), "y": np.array([0, 1, 2, 7])}, "labels must lie in 0..4"),
        ({"x": np.zeros((0, 1, 180), np.float32), "y": np.zeros(0, np.int64)}, "empty"),
        ({"windows": np.zeros((4, 1, 180), np.float32)}, "not a shard file"),
    ],
)
def test_bad_shard_is_refused(tmp_path: Path, arrays: dict, problem: str) -> None:
    path = tmp_path / "shard.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=problem) as error:
        load_beats(path)
    assert str(path) in str(error.value)


def test_saved_beats_round_trip(tmp_path: Path) -> None:
    beats = synthetic_beats(50)
    save_beats(tmp_path / "s.npz", beats)
    loaded = load_beats(tmp_path / "s.npz")
    np.testing.assert_array_equal(loaded.x, beats.x)
    np.testing.assert_array_equal(loaded.y, beats.y)
    np.testing.assert_array_equal(loaded.record, beats.record)


# ----------------------------------------------------------------------------- real MIT-BIH


@pytest.mark.realdata
def test_mitdb_gives_the_papers_window_counts(mitdb: Path, tmp_path: Path) -> None:
    assert main(["prepare", "--mitdb", str(mitdb), "--out", str(tmp_path / "p")]) == 0
    manifest = Manifest.read(tmp_path / "p")
    assert manifest.windows_total == 109_468
    assert manifest.class_counts == {"N": 90_608, "S": 2_781, "V": 7_235, "F": 802, "Q": 8_042}
    assert len(manifest.records) == 48
    assert manifest.files[TEST_FILE].windows == 21_894
    # The default lead: MLII where a record has it (114: its second signal), else the first (102, 104: V5).
    assert {r: lead for r, lead in manifest.leads.items() if lead != "MLII"} == {"102": "V5", "104": "V5"}
    assert manifest.settings.lead == "auto" and len(manifest.leads) == 48


@pytest.mark.realdata
def test_mitdb_first_lead_is_mlii_except_three_records(mitdb: Path) -> None:
    other_first = [
        r for r in sorted(mitdb.glob("*.hea")) if wfdb.rdheader(str(r.with_suffix(""))).sig_name[0] != "MLII"
    ]
    assert sorted(p.stem for p in other_first) == ["102", "104", "114"]
    assert len(read_records(mitdb, names=["100"])) > 2000


def test_write_dataset_helper_makes_every_class(tmp_path: Path) -> None:
    beats = read_records(write_dataset(tmp_path / "d", records=2))
    assert set(beats.y.tolist()) == {0, 1, 2, 3, 4}


def test_an_inter_patient_split_without_training_records_is_refused(tmp_path: Path) -> None:
    beats = read_records(write_dataset(tmp_path / "only-100", records=1))  # 100 is a DS2 (test) record
    with pytest.raises(DataError, match=r"no window of DS1 \(training\) records"):
        split_train_test(beats, PrepareConfig(split="inter-patient"))


def test_one_iid_client_holds_every_window() -> None:
    beats = synthetic_beats(30)
    assert [shard.tolist() for shard in partition(beats, PrepareConfig(clients=1))] == [list(range(30))]


def test_a_missing_lead_is_named_with_the_records_header(tmp_path: Path) -> None:
    from common.data import leads_read

    records = write_dataset(tmp_path / "records", records=1)
    assert leads_read(records, "V1") == {"100": "V1"}
    with pytest.raises(DataError, match=r"100\.hea: no lead named 'V5'"):
        leads_read(records, "V5")


def test_shards_prepared_from_other_records_are_not_up_to_date(tmp_path: Path) -> None:
    from common.data import up_to_date

    first, second = write_dataset(tmp_path / "a", records=3), write_dataset(tmp_path / "b", records=3)
    settings = PrepareConfig(clients=2)
    prepare(first, tmp_path / "out", settings)
    assert up_to_date(tmp_path / "out", first, settings) is not None
    assert up_to_date(tmp_path / "out", None, settings) is not None
    assert up_to_date(tmp_path / "out", second, settings) is None


def test_prepare_keeps_the_window_and_record_names_and_drops_stale_shards(tmp_path: Path) -> None:
    records = write_dataset(tmp_path / "records", records=4)
    out = tmp_path / "a" / "b" / "prepared"  # made with its parents
    prepare(records, out, PrepareConfig(clients=4, window={"before": 50, "after": 70}))
    shard = load_beats(out / "client_00.npz")
    assert shard.x.shape[1:] == (1, 120) and set(shard.record) <= {"100", "101", "102", "103"}
    prepare(records, out, PrepareConfig(clients=2))
    assert sorted(p.name for p in out.glob("client_*.npz")) == ["client_00.npz", "client_01.npz"]


def test_an_inter_patient_split_without_test_records_is_refused(tmp_path: Path) -> None:
    directory = write_dataset(tmp_path / "records", records=2)  # 100 (DS2) and 101 (DS1)
    for suffix in (".hea", ".dat", ".atr"):
        (directory / f"100{suffix}").unlink()
    with pytest.raises(DataError, match=r"no window of DS2 \(test\) records"):
        split_train_test(read_records(directory), PrepareConfig(split="inter-patient"))


def test_a_class_of_two_windows_is_split_and_a_class_of_one_stays_in_training() -> None:
    y = np.array([0] * 20 + [3, 3] + [4])
    beats = synthetic_beats(len(y))
    beats = type(beats)(beats.x, y, beats.record)
    train, test = split_train_test(beats, PrepareConfig(test_fraction=0.5))
    assert (y[train] == 3).sum() == 1 and (y[test] == 3).sum() == 1
    assert (y[train] == 4).sum() == 1 and (y[test] == 4).sum() == 0


def test_only_the_named_records_are_read(tmp_path: Path) -> None:
    directory = write_dataset(tmp_path / "records", records=3)
    assert set(read_records(directory, names=["101"]).record) == {"101"}


def test_a_record_without_a_kept_beat_leaves_the_labels_whole_numbers(tmp_path: Path) -> None:
    write_dataset(tmp_path / "records", records=1)
    write_record(tmp_path / "records", "101", [300, 600, 900], ["+", "+", "+"], length=1200)  # rhythm marks only
    beats = read_records(tmp_path / "records")
    assert beats.y.dtype == np.int64 and set(beats.record) == {"100"}
