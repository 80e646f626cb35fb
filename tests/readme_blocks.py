"""The README's command blocks that CI runs exactly as written.

A block is marked by an HTML comment on the line before its fence, naming the flow it belongs to:

    <!-- ci: local -->
    ```bash
    ...
    ```

The blocks of one flow run in README order, in one shell, from the repository root: a user's terminal.
`python3 tests/readme_blocks.py FLOW` prints a flow's commands (`.ci/run` runs the `tests` flow this way;
tests/test_readme.py runs the others). Standard library only: CI calls it before anything is installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^<!-- ci: ([\w-]+) -->\n```(?:bash|sh)\n(.*?)^```", re.S | re.M)


def flows(readme: Path = README) -> dict[str, list[str]]:
    """Each flow's blocks, in README order."""
    found: dict[str, list[str]] = {}
    for flow, block in _BLOCK.findall(readme.read_text()):
        found.setdefault(flow, []).append(block)
    return found


def script(flow: str, readme: Path = README) -> str:
    """One flow's blocks as one shell script."""
    blocks = flows(readme).get(flow)
    if not blocks:
        raise SystemExit(f"{readme}: no block is marked <!-- ci: {flow} -->")
    return "\n".join(blocks)


if __name__ == "__main__":
    print(script(sys.argv[1]))
