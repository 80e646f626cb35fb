"""Copy MIT-BIH with only the lead ECG-FAT reads (MLII, else the first signal), so that the records fit the device
tool's 64 MiB transfer: python docs/results/gpu/one_lead.py SOURCE OUT

The digital samples, gain, baseline and lead name are kept, so `ecg-fat prepare` cuts the same windows: every
record's physical signal is compared with the source's before the copy is kept.
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import wfdb

from common.config import AUTO_LEAD
from common.data import find_records, lead_index, read_header


def main(source: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for record in find_records(source):
        channel = lead_index(read_header(record), AUTO_LEAD, record.with_suffix(".hea"))
        original = wfdb.rdrecord(str(record), channels=[channel], physical=False)
        wfdb.wrsamp(
            record.name,
            fs=original.fs,
            units=original.units,
            sig_name=original.sig_name,
            d_signal=original.d_signal,
            fmt=["212"],
            adc_gain=original.adc_gain,
            baseline=original.baseline,
            write_dir=str(out),
        )
        shutil.copy(record.with_suffix(".atr"), out)
        copy = wfdb.rdrecord(str(out / record.name)).p_signal
        physical = wfdb.rdrecord(str(record), channels=[channel]).p_signal
        if not np.array_equal(copy, physical):
            sys.exit(f"{record}: the one-lead copy differs from the source")
        print(f"{record.name}: {original.sig_name[0]}, {len(copy)} samples")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
