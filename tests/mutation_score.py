"""The mutation score of the last `mutmut run`, over the mutants that change behaviour.

    mutmut run && python tests/mutation_score.py

Reads `mutmut results --all true`. Killed: the fast suite failed on the mutant, or ran past its time limit
(a hanging test fails CI too). A survivor listed in tests/equivalent_mutants.txt (`name  # reason`) changes
nothing observable and is left out of the score; every other survivor, and every mutant no test runs,
counts against it. Prints the score, the counts and the survivors that count. Standard library only.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

EQUIVALENT = Path(__file__).with_name("equivalent_mutants.txt")
KILLED = {"killed", "timeout"}
AGAINST = {"survived", "no tests", "suspicious"}


def equivalents() -> dict[str, str]:
    found = {}
    for line in EQUIVALENT.read_text().splitlines():
        name, _, reason = line.partition("#")
        if name.strip():
            found[name.strip()] = reason.strip()
    return found


def statuses() -> dict[str, str]:
    command = [sys.executable, "-m", "mutmut", "results", "--all", "true"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    pairs = (line.strip().rsplit(": ", 1) for line in out.splitlines() if ": " in line)
    return {name: status for name, status in pairs}


def main() -> int:
    known = equivalents()
    status = statuses()
    counts = Counter(status.values())
    equivalent = [name for name, s in status.items() if s == "survived" and name in known]
    against = sorted(name for name, s in status.items() if s in AGAINST and name not in known)
    killed = sum(counts[s] for s in KILLED)
    score = killed / (killed + len(against)) if killed + len(against) else 0.0
    stale = sorted(set(known) - {name for name, s in status.items() if s == "survived"})
    print(f"mutants: {len(status)}  " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
    print(f"equivalent survivors (tests/equivalent_mutants.txt): {len(equivalent)}")
    print(f"score: {100 * score:.1f}% of the behaviour-changing mutants killed ({killed} of {killed + len(against)})")
    for name in against:
        print(f"  counts against: {name} ({status[name]})")
    for name in stale:
        print(f"  listed as equivalent but not a survivor now (remove it): {name}")
    return 0 if score >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
