"""Peak memory of every SuperNode's process tree (SuperNode, SuperExec, ClientApp) on this machine, sampled
once a second until stopped, as `ecg-fat bench`'s scale section measures it (RSS and PSS):

    python docs/results/poisoning/memwatch.py OUT.json &   # beside run.sh; the peaks are rewritten each second
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ecg_fat.bench import proc_kib
from ecg_fat.launcher import descendants


def supernodes() -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 1 and argv[1].endswith(b"ecg-fat-supernode"):
            found.append(int(cmdline.parent.name))
    return found


def main(out: Path) -> None:
    rss: dict[int, int] = {}
    pss: dict[int, int] = {}
    while True:
        for pid in supernodes():
            tree = [pid, *descendants(pid)]
            rss[pid] = max(rss.get(pid, 0), sum(proc_kib(p, "status", "VmRSS:") for p in tree))
            pss[pid] = max(pss.get(pid, 0), sum(proc_kib(p, "smaps_rollup", "Pss:") for p in tree))
        peaks = {
            "rss_mb": {p: round(v / 2**20) for p, v in rss.items()},
            "pss_mb": {p: round(v / 2**20) for p, v in pss.items()},
        }
        out.write_text(json.dumps(peaks))
        time.sleep(1)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
