"""The layout: imports point one way (driver -> apps -> core), and the app bundle carries only the app."""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "server", "client", "ecg_fat", "certs")
# What each folder may import from the project: the core nothing above it, each app only the core,
# the driver everything, the certificate tool nothing.
ALLOWED = {
    "common": {"common"},
    "server": {"common", "server"},
    "client": {"common", "client"},
    "ecg_fat": {"common", "server", "client", "ecg_fat", "certs"},
    "certs": {"certs"},
}


def project_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found |= {name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES}
    return found


def test_imports_point_one_way() -> None:
    wrong = {
        f"{path.relative_to(ROOT)} imports {sorted(project_imports(path) - ALLOWED[package])}"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if project_imports(path) - ALLOWED[package]
    }
    assert wrong == set()


def test_the_app_bundle_holds_only_the_apps_and_the_core() -> None:
    """What `flwr run` sends to the SuperLink and every SuperNode: no driver, benchmark or report."""
    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(ROOT))).namelist()
    top = {name.split("/")[0] for name in names if "/" in name and not name.startswith(".info/")}
    assert top == {"common", "server", "client"}
    assert {n for n in names if "/" not in n} == {"pyproject.toml"}
    shipped = {name for name in names if name.endswith(".py")}
    on_disk = {str(p.relative_to(ROOT)) for package in top for p in (ROOT / package).rglob("*.py")}
    assert shipped == on_disk


def test_a_supernode_training_on_a_shard_loads_neither_wfdb_nor_scikit_learn() -> None:
    """Memory per SuperNode: the ClientApp reads records (wfdb, pandas) and splits data (scikit-learn) only when
    asked to; importing it must not load them."""
    code = "import sys, client.app; print(sorted(m for m in ('wfdb', 'pandas', 'sklearn') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
