"""MIT-BIH (or any WFDB records) -> AAMI beat windows -> a test set and client shards.

`prepare()` reads every record before it writes anything, so bad input leaves no output behind;
every file is written under a temporary name and renamed, so an interrupted run never leaves a
half-written shard.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

# wfdb (with pandas) and scikit-learn are imported where records are read or split, not here: a SuperNode that
# trains on a prepared shard then never loads them (about 100 MB of its memory).
if TYPE_CHECKING:
    import wfdb

from common.config import (
    AAMI_CLASSES,
    AAMI_MAP,
    AUTO_LEAD,
    DS1_RECORDS,
    DS2_RECORDS,
    NUM_CLASSES,
    RHYTHM_FEATURES,
    SAMPLING_RATE_HZ,
    PrepareConfig,
    WindowConfig,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TEST_FILE = "test.npz"
_CLASS_INDEX = {letter: i for i, letter in enumerate(AAMI_CLASSES)}


class DataError(Exception):
    """Bad input data; the message names the file and the problem."""


class FileEntry(BaseModel):
    windows: int
    class_counts: dict[str, int]
    records: list[str]
    sha256: str


class Manifest(BaseModel):
    """manifest.json of a prepared directory: how it was made and what each file holds."""

    source: str
    settings: PrepareConfig
    windows_total: int
    class_counts: dict[str, int]
    records: list[str]
    train_windows: int
    test_windows: int
    test_file: str
    client_files: list[str]
    files: dict[str, FileEntry]
    leads: dict[str, str]  # record -> the signal read from it

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError as error:
            raise DataError(f"{path}: missing; run `ecg-fat prepare --out {directory}` first") from error
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: not a manifest of prepared data ({str(error).splitlines()[0]})") from error

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


@dataclass(frozen=True)
class Beats:
    """Windows (n, 1, L) float32 in [0, 1], AAMI labels (n,) int64, and each window's record name. With
    rhythm features (`prepare --rhythm`) a window's last RHYTHM_FEATURES values are its beat's."""

    x: np.ndarray
    y: np.ndarray
    record: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> Beats:
        return Beats(self.x[index], self.y[index], self.record[index])

    def subsample(self, limit: int | None, seed: int) -> Beats:
        """At most `limit` windows, drawn at random with `seed` (all of them when 0 or None)."""
        if not limit or limit >= len(self):
            return self
        return self.take(np.sort(np.random.default_rng(seed).permutation(len(self))[:limit]))

    @staticmethod
    def concat(parts: Sequence[Beats]) -> Beats:
        return Beats(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("x", "y", "record")))


def class_counts(y: np.ndarray) -> dict[str, int]:
    counts = np.bincount(y, minlength=NUM_CLASSES)
    return {letter: int(counts[i]) for i, letter in enumerate(AAMI_CLASSES)}


# ----------------------------------------------------------------------------- reading records


def minmax_scale(windows: np.ndarray) -> np.ndarray:
    """Scale each window (last axis) to [0, 1]; a flat window becomes zeros, never NaN."""
    low = windows.min(axis=-1, keepdims=True)
    span = windows.max(axis=-1, keepdims=True) - low
    scaled = np.divide(windows - low, span, out=np.zeros_like(windows), where=span > 0)
    return scaled.astype(np.float32)


def _ratio(numerator: np.ndarray, denominator: np.ndarray | float) -> np.ndarray:
    """numerator / denominator, 1 (a regular rhythm) where the denominator is not positive."""
    denominator = np.broadcast_to(np.asarray(denominator, dtype=np.float64), numerator.shape)
    return np.divide(numerator, denominator, out=np.ones_like(numerator), where=denominator > 0)


def rr_features(samples: np.ndarray) -> np.ndarray:
    """RHYTHM_FEATURES per beat from the sorted positions of one record's beats: the RR interval before the beat
    and after it, and the mean of the last ten, each over the record's mean RR, and the previous one over that
    mean of ten; halved and clipped to [0, 1] (1 is a regular rhythm's 0.5), the range the attacks clamp to. A
    premature (S) beat has a short previous and a long next interval. The first beat has no previous interval
    and the last no next one: their neighbour's stands in; a record of one beat gets a regular rhythm's values."""
    if len(samples) < 2:
        return np.full((len(samples), RHYTHM_FEATURES), 0.5, dtype=np.float32)
    rr = np.diff(np.asarray(samples, dtype=np.float64))
    previous = np.concatenate([[rr[0]], rr])
    following = np.concatenate([rr, [rr[-1]]])
    last_ten = np.minimum(np.arange(1, len(previous) + 1), 10)  # fewer at the record's start
    local = np.convolve(previous, np.ones(10))[: len(previous)] / last_ten
    mean = rr.mean()
    ratios = [_ratio(previous, mean), _ratio(following, mean), _ratio(local, mean), _ratio(previous, local)]
    return np.clip(np.stack(ratios, axis=1) / 2, 0, 1).astype(np.float32)


def window_beats(
    signal: np.ndarray, samples: np.ndarray, symbols: Sequence[str], window: WindowConfig, rhythm: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a scaled window around every AAMI-mapped beat whose window lies inside the signal, its beat's RR
    features appended with `rhythm`."""
    samples = np.asarray(samples, dtype=np.int64)
    mapped = np.array([symbol in AAMI_MAP for symbol in symbols], dtype=bool)
    inside = (samples - window.before >= 0) & (samples + window.after <= len(signal))
    keep = mapped & inside
    offsets = np.arange(-window.before, window.after)
    windows = minmax_scale(signal[samples[keep, None] + offsets])[:, None, :]
    labels = np.array([_CLASS_INDEX[AAMI_MAP[s]] for s, k in zip(symbols, keep, strict=True) if k], np.int64)
    if rhythm:  # a beat's neighbours are the record's beats, whether or not their own windows fit
        windows = np.concatenate([windows, rr_features(samples[mapped])[inside[mapped], None, :]], axis=-1)
    return windows, labels


def has_rhythm(beats: Beats) -> bool:
    """Whether the windows carry RR features (prepared with --rhythm): they are RHYTHM_FEATURES longer."""
    return beats.x.shape[-1] == WindowConfig().length + RHYTHM_FEATURES


def find_records(directory: Path) -> list[Path]:
    """The record paths (without extension) of every `.hea` header in `directory`."""
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory of WFDB records")
    records = sorted(path.with_suffix("") for path in directory.glob("*.hea"))
    if not records:
        raise DataError(f"{directory}: no WFDB header (.hea) files found")
    return records


def lead_index(header: wfdb.Record, lead: int | str, hea: Path) -> int:
    """The signal to read: an index, a name, or auto (MLII where the record has it, else its first signal)."""
    if lead == AUTO_LEAD:
        return header.sig_name.index("MLII") if "MLII" in header.sig_name else 0
    if isinstance(lead, int):
        if not 0 <= lead < header.n_sig:
            raise DataError(f"{hea}: lead index {lead} out of range (record has {header.n_sig} signals)")
        return lead
    if lead not in header.sig_name:
        raise DataError(f"{hea}: no lead named {lead!r} (signals: {', '.join(header.sig_name)})")
    return header.sig_name.index(lead)


def _check_signal_file(header: wfdb.Record, channel: int, dat: Path, hea: Path) -> None:
    """The signal file holds exactly the samples the header announces (a truncated or swapped .dat would
    otherwise fail deep inside wfdb, or be read silently short)."""
    from wfdb.io._signal import BYTES_PER_SAMPLE

    in_file = [i for i, name in enumerate(header.file_name) if name == header.file_name[channel]]
    fmt = header.fmt[channel]
    if fmt not in BYTES_PER_SAMPLE or header.sig_len is None:
        return  # a format whose size wfdb does not tabulate: wfdb checks it while reading
    offset = (header.byte_offset or [None] * header.n_sig)[channel] or 0
    frames = header.sig_len * sum(header.samps_per_frame[i] for i in in_file)
    expected = offset + int(np.ceil(frames * BYTES_PER_SAMPLE[fmt]))
    size = dat.stat().st_size
    if size != expected:
        raise DataError(
            f"{dat}: {size} bytes, but {hea.name} announces {header.sig_len} samples of {len(in_file)} signal(s) "
            f"in format {fmt} ({expected} bytes): the header and the signal file disagree"
        )


def read_signal(record: Path, header: wfdb.Record, channel: int) -> np.ndarray:
    """One signal of a record in physical units, checked: its file is there, of the size the header says,
    and without missing samples."""
    hea, dat = record.with_suffix(".hea"), record.parent / header.file_name[channel]
    if not dat.is_file():
        raise DataError(f"{dat}: missing (record {record.name} needs it)")
    _check_signal_file(header, channel, dat, hea)
    import wfdb

    try:
        signal = wfdb.rdrecord(str(record), channels=[channel]).p_signal[:, 0]
    except Exception as error:
        raise DataError(f"{dat}: cannot read the signal ({error})") from error
    if not np.all(np.isfinite(signal)):
        raise DataError(f"{dat}: the signal holds missing (NaN) samples")
    return signal


def leads_read(directory: Path, lead: int | str) -> dict[str, str]:
    """The name of the signal `lead` selects in each record of `directory`."""
    found = {}
    for record in find_records(directory):
        header = read_header(record)
        found[record.name] = header.sig_name[lead_index(header, lead, record.with_suffix(".hea"))]
    return found


def read_header(record: Path) -> wfdb.Record:
    """A record's header, checked to be this record's."""
    import wfdb

    hea = record.with_suffix(".hea")
    try:
        header = wfdb.rdheader(str(record))
    except Exception as error:
        raise DataError(f"{hea}: cannot read the header ({error})") from error
    if header.record_name != record.name:
        raise DataError(f"{hea}: the header is of record {header.record_name!r}, not {record.name!r}")
    return header


def read_annotations(record: Path, signal_length: int) -> wfdb.Annotation:
    """A record's .atr annotations, checked to lie within its signal."""
    import wfdb

    atr = record.with_suffix(".atr")
    try:
        annotation = wfdb.rdann(str(record), "atr")
    except Exception as error:
        raise DataError(f"{atr}: cannot read the annotations ({error})") from error
    # A WFDB annotation file does not carry its record's name; one made for another (longer) record shows
    # as beats beyond this record's end.
    if len(annotation.sample) and annotation.sample.max() >= signal_length:
        raise DataError(
            f"{atr}: annotations reach sample {annotation.sample.max()}, but record {record.name} has "
            f"{signal_length} samples: the .atr belongs to another record"
        )
    return annotation


def read_record(record: Path, lead: int | str, window: WindowConfig, rhythm: bool = False) -> Beats:
    """Read one WFDB record (header, signal, .atr annotations) and cut its beat windows (with their RR features)."""
    hea, atr = record.with_suffix(".hea"), record.with_suffix(".atr")
    header = read_header(record)
    if header.fs != SAMPLING_RATE_HZ:
        raise DataError(f"{hea}: sampling rate {header.fs} Hz, expected {SAMPLING_RATE_HZ} Hz")
    channel = lead_index(header, lead, hea)
    if not atr.is_file():
        raise DataError(f"{atr}: missing (record {record.name} needs it)")
    signal = read_signal(record, header, channel)
    annotation = read_annotations(record, len(signal))
    x, y = window_beats(signal, annotation.sample, annotation.symbol, window, rhythm)
    return Beats(x, y, np.full(len(y), record.name))


def read_records(
    directory: Path,
    lead: int | str = AUTO_LEAD,
    window: WindowConfig | None = None,
    names: Sequence[str] | None = None,
    rhythm: bool = False,
) -> Beats:
    """Read every record of `directory` (or only `names`) into one set of beat windows (with RR features)."""
    window = window or WindowConfig()
    records = find_records(directory)
    if names is not None:
        records = [record for record in records if record.name in set(names)]
    if not records:
        raise DataError(f"{directory}: none of the records {', '.join(names or [])} is there")
    beats = Beats.concat([read_record(record, lead, window, rhythm) for record in records])
    if len(beats) == 0:
        raise DataError(f"{directory}: no beat of an AAMI class found in {len(records)} record(s)")
    log.info("read %d records from %s: %d windows %s", len(records), directory, len(beats), class_counts(beats.y))
    return beats


# ----------------------------------------------------------------------------- split and partition


def split_train_test(beats: Beats, cfg: PrepareConfig) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and test windows.

    intra-patient: a split stratified by class (a class with a single window stays in training);
    inter-patient: de Chazal's DS1 records train, DS2 records test, no patient on both sides.
    """
    if cfg.split == "inter-patient":
        train = np.flatnonzero(np.isin(beats.record, DS1_RECORDS))
        test = np.flatnonzero(np.isin(beats.record, DS2_RECORDS))
        if len(train) == 0 or len(test) == 0:
            raise DataError(
                "inter-patient split: the records hold no window of "
                + ("DS1 (training)" if len(train) == 0 else "DS2 (test)")
                + " records; it needs the MIT-BIH record names"
            )
        return train, test
    counts = np.bincount(beats.y, minlength=NUM_CLASSES)
    singles = np.isin(beats.y, np.flatnonzero(counts == 1))
    splittable = np.flatnonzero(~singles)
    if len(splittable) < 2:
        raise DataError(f"only {len(beats)} window(s): too few to split into training and test sets")
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        splittable, test_size=cfg.test_fraction, stratify=beats.y[splittable], random_state=cfg.seed
    )
    return np.sort(np.concatenate([train, np.flatnonzero(singles)])), np.sort(test)


def _iid(labels: np.ndarray, cfg: PrepareConfig) -> list[np.ndarray]:
    if cfg.clients == 1:
        return [np.arange(len(labels))]
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(n_splits=cfg.clients, shuffle=True, random_state=cfg.seed)
    with warnings.catch_warnings():
        # A class rarer than the number of clients cannot reach every shard; that is expected.
        warnings.simplefilter("ignore", UserWarning)
        return [np.sort(test) for _, test in folds.split(np.zeros(len(labels)), labels)]


def _by_patient(records: np.ndarray, cfg: PrepareConfig) -> list[np.ndarray]:
    names, sizes = np.unique(records, return_counts=True)
    if len(names) < cfg.clients:
        raise DataError(f"patient partition: {len(names)} record(s) for {cfg.clients} clients")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(names))
    order = order[np.argsort(-sizes[order], kind="stable")]  # largest first, seeded ties
    load = np.zeros(cfg.clients, dtype=np.int64)
    owner: dict[str, int] = {}
    for i in order:  # greedy: the next-largest record goes to the lightest shard
        shard = int(np.argmin(load))
        owner[names[i]] = shard
        load[shard] += sizes[i]
    shard_of = np.array([owner[r] for r in records])
    return [np.flatnonzero(shard_of == shard) for shard in range(cfg.clients)]


def _dirichlet(labels: np.ndarray, cfg: PrepareConfig, attempts: int = 100) -> list[np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    for _ in range(attempts):
        shards: list[list[np.ndarray]] = [[] for _ in range(cfg.clients)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(cfg.clients, cfg.alpha))) * len(members)).astype(int)
            for shard, part in enumerate(np.split(members, cuts[:-1])):
                shards[shard].append(part)
        result = [np.sort(np.concatenate(parts)) for parts in shards]
        if all(len(part) > 0 for part in result):  # redraw until no client is left empty
            return result
    raise DataError(f"dirichlet partition: alpha {cfg.alpha} left a client empty in {attempts} draws")


def partition(train: Beats, cfg: PrepareConfig) -> list[np.ndarray]:
    """Indices into `train` for each of the `cfg.clients` shards: disjoint and complete."""
    if len(train) < cfg.clients:
        raise DataError(f"{len(train)} training window(s) cannot fill {cfg.clients} client shards")
    if cfg.partition == "patient":
        return _by_patient(train.record, cfg)
    if cfg.partition == "dirichlet":
        return _dirichlet(train.y, cfg)
    return _iid(train.y, cfg)


# ----------------------------------------------------------------------------- files


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: Path, write: Callable[[object], None]) -> None:
    """Write via `write(file)` to a temporary file beside `path`, then rename it into place."""
    with staged(path.parent) as stage:
        stage(path.name, write)


class _Stage:
    """Files written under temporary names in one directory, renamed into place together at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.temporaries = directory, {}

    def __call__(self, name: str, write: Callable[[object], None]) -> None:
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
        self.temporaries[name] = Path(temporary)
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; outputs are meant to be read
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())

    def temporary(self, name: str) -> Path:
        return self.temporaries[name]


@contextmanager
def staged(directory: Path) -> Iterator[_Stage]:
    stage = _Stage(directory)
    try:
        yield stage
        for name, temporary in stage.temporaries.items():
            os.replace(temporary, directory / name)
    finally:
        for temporary in stage.temporaries.values():
            temporary.unlink(missing_ok=True)


@contextmanager
def _output_errors(out: Path) -> Iterator[None]:
    """A file-system failure while writing (no permission, a full disk, a file where the directory should
    be) becomes one line naming the path; a directory made for the output is removed again."""
    existed = out.exists()
    try:
        yield
    except OSError as error:
        if not existed:
            with suppress(OSError):
                out.rmdir()
        where = error.filename or out
        raise DataError(f"{where}: cannot write the prepared data there ({error.strerror or error})") from error


def save_beats(path: Path, beats: Beats) -> None:
    write_atomically(path, lambda file: np.savez(file, x=beats.x, y=beats.y, record=beats.record))


def load_beats(path: Path) -> Beats:
    """Load a shard or test file, checking what a trainer relies on; errors name the file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            x, y = archive["x"], archive["y"]
            record = archive["record"] if "record" in archive else np.full(len(y), "")
    except FileNotFoundError as error:
        raise DataError(f"{path}: no such shard file") from error
    except (KeyError, ValueError, OSError) as error:
        raise DataError(f"{path}: not a shard file with arrays 'x' and 'y' ({error})") from error
    if x.dtype != np.float32 or x.ndim != 3 or x.shape[1] != 1:
        raise DataError(f"{path}: windows must be float32 shaped (n, 1, length), got {x.dtype} {x.shape}")
    if y.dtype != np.int64 or y.shape != (len(x),):
        raise DataError(f"{path}: labels must be int64 shaped ({len(x)},), got {y.dtype} {y.shape}")
    if len(y) == 0:
        raise DataError(f"{path}: the shard is empty")
    if y.min() < 0 or y.max() >= NUM_CLASSES:
        raise DataError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}, found {y.min()}..{y.max()}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: windows hold NaN or infinite values")
    return Beats(x, y, record)


def client_file(index: int) -> str:
    return f"client_{index:02d}.npz"


def prepare(source: Path, out: Path, cfg: PrepareConfig) -> Manifest:
    """Read `source`, split and partition, then write shards, the test set and manifest.json to `out`."""
    beats = read_records(source, cfg.lead, cfg.window, rhythm=cfg.rhythm)
    train_index, test_index = split_train_test(beats, cfg)
    train, test = beats.take(train_index), beats.take(test_index)
    shards = [train.take(index) for index in partition(train, cfg)]
    if any(len(shard) == 0 for shard in shards):
        raise DataError(f"{cfg.partition} partition left a client shard empty; use fewer --clients")

    parts = {**{client_file(i): shard for i, shard in enumerate(shards)}, TEST_FILE: test}
    files: dict[str, FileEntry] = {}
    with _output_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        with staged(out) as stage:  # nothing in `out` changes unless every file could be written
            for name, part in parts.items():
                stage(name, lambda file, part=part: np.savez(file, x=part.x, y=part.y, record=part.record))
                files[name] = FileEntry(
                    windows=len(part),
                    class_counts=class_counts(part.y),
                    records=sorted(set(part.record.tolist())),
                    sha256=sha256_of(stage.temporary(name)),
                )
            manifest = Manifest(
                source=str(source.resolve()),
                settings=cfg,
                windows_total=len(beats),
                class_counts=class_counts(beats.y),
                records=sorted(set(beats.record.tolist())),
                train_windows=len(train),
                test_windows=len(test),
                test_file=TEST_FILE,
                client_files=[client_file(i) for i in range(len(shards))],
                files=files,
                leads=leads_read(source, cfg.lead),
            )
            stage(MANIFEST, lambda file: file.write(manifest.to_json()))
        for stale in set(p.name for p in out.glob("client_*.npz")) - set(files):
            (out / stale).unlink()  # shards of an earlier run with more clients
    for name, entry in files.items():
        log.info("wrote %s: %d windows %s", out / name, entry.windows, entry.class_counts)
    return manifest


def up_to_date(out: Path, source: Path | None, cfg: PrepareConfig) -> Manifest | None:
    """The manifest of `out` if it was prepared from `source` (None: from any source) with these settings and
    every file it lists is intact; else None."""
    try:
        manifest = Manifest.read(out)
    except DataError:
        return None
    if (source is not None and manifest.source != str(source.resolve())) or manifest.settings != cfg:
        return None
    intact = all((out / name).is_file() and sha256_of(out / name) == e.sha256 for name, e in manifest.files.items())
    return manifest if intact else None


def load_training_set(prepared: Path, max_windows: int = 0, seed: int = 0) -> Beats:
    """Every client shard of a prepared directory, each cut to at most `max_windows` as a node would cut it (0:
    all), concatenated (the centralised reference)."""
    shards = [load_beats(prepared / name) for name in Manifest.read(prepared).client_files]
    return Beats.concat([shard.subsample(max_windows, seed) for shard in shards])


def download_mitdb(cache: Path) -> Path:
    """Fetch the MIT-BIH Arrhythmia Database from PhysioNet into `cache` (skipped when complete)."""
    if len(list(cache.glob("*.atr"))) >= 48:
        log.info("using the MIT-BIH copy already in %s", cache)
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    log.info("downloading mitdb from PhysioNet into %s", cache)
    import wfdb

    wfdb.dl_database("mitdb", dl_dir=str(cache))
    return cache
