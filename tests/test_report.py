"""`ecg-fat report` on small synthetic results."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import matplotlib.image as plt_image
import numpy as np
import pytest

from common.config import CONDITIONS, FederationConfig
from ecg_fat.cli import main
from server.results import Results


def fake_run(
    directory: Path, adversarial: bool, accuracy: dict[str, float], rounds: int = 3, seed: int = 0, lr: float = 1e-3
) -> Path:
    results = Results(directory)
    results.start(FederationConfig(seed=seed, train={"adversarial": adversarial, "seed": seed, "lr": lr}))
    for r in range(rounds + 1):
        metrics = {}
        for c in CONDITIONS:
            a = accuracy[c] * r / rounds  # rises to the final value
            metrics[c] = {
                "accuracy": a,
                "precision": a / 2,
                "recall": a / 3,
                "f1": a / 4,
                "seconds": 1.0,
                "recall_per_class": {"N": 0.9, "S": 0.5, "V": 0.8, "F": 0.25, "Q": 1.0},
            }
        results.add_metrics(r, metrics)
    return directory


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    fat = fake_run(tmp_path / "fat", True, {"clean": 0.97, "pgd": 0.9, "fgsm": 0.92, "cw": 0.5, "bim": 0.91})
    base = fake_run(tmp_path / "baseline", False, {"clean": 0.985, "pgd": 0.3, "fgsm": 0.7, "cw": 0.07, "bim": 0.3})
    return [fat, base]


def test_report_tables_match_the_results(runs: list[Path], tmp_path: Path) -> None:
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| fat (FAT, round 3) | 97.00 | 90.00 | 92.00 | 50.00 | 91.00 |" in text  # Table 2, accuracy
    assert "| baseline (non-FAT, round 3) | 24.62 | 7.50 | 17.50 | 1.75 | 7.50 |" in text  # Table 5, F1 = acc/4
    assert "| paper FAT | 97.60 | 94.82 | 95.44 | 46.65 | 94.81 |" in text
    assert "| paper non-FAT | 92.94 | 22.61 | 45.46 | 3.20 | 22.55 |" in text
    assert "| Clean | 90.00 | 50.00 | 80.00 | 25.00 | 100.00 |" in text  # per-class recall
    assert "Clean-accuracy cost of FAT: +1.50 points (98.50 -> 97.00)" in text
    assert "Robust gain under PGD: +60.00 points (30.00 -> 90.00)" in text
    assert "fat accuracy PGD: 90.00 vs paper 94.82 (-4.82)" in text


def test_report_draws_one_figure_per_condition(runs: list[Path], tmp_path: Path) -> None:
    main(["report", *map(str, runs), "--out", str(tmp_path / "rep")])
    for condition in CONDITIONS:
        png = tmp_path / "rep" / f"figure_{condition}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_report_refuses_a_directory_without_metrics(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "rep")]) == 1
    assert "empty: no metrics.jsonl" in capsys.readouterr().err


def test_each_run_is_labelled_by_its_config_not_its_name(tmp_path: Path) -> None:
    """A clean baseline in a directory named like FAT is still the baseline of the tables and the summary."""
    base = fake_run(tmp_path / "fat-looking", False, {"clean": 0.985, "pgd": 0.3, "fgsm": 0.7, "cw": 0.07, "bim": 0.3})
    fat = fake_run(tmp_path / "run-2", True, {"clean": 0.97, "pgd": 0.9, "fgsm": 0.92, "cw": 0.5, "bim": 0.91})
    assert main(["report", str(base), str(fat), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| fat-looking (non-FAT, round 3) | 98.50 |" in text and "| run-2 (FAT, round 3) | 97.00 |" in text
    assert "Clean-accuracy cost of FAT: +1.50 points (98.50 -> 97.00)" in text


def test_report_keeps_a_discussion_and_names_runs_relative_to_itself(runs: list[Path], tmp_path: Path) -> None:
    discussion = tmp_path / "discussion.md"
    discussion.write_text("### Why CW differs\n\nCW stops early per batch.\n")
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "rep"), "--discussion", str(discussion)]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "Runs: `../fat`, `../baseline`" in text
    flagged, explained = text.index("fat accuracy PGD: 90.00 vs paper"), text.index("CW stops early per batch.")
    assert flagged < explained < text.index("## Figures")


def test_report_names_a_missing_discussion_file(runs: list[Path], tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.md"
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "rep"), "--discussion", str(missing)]) == 2
    assert f"--discussion {missing}: no such file" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_html_page_stands_alone_and_shows_tables_and_figures_in_a_browser(runs: list[Path], tmp_path: Path) -> None:
    """Opened from disk in headless Chromium (Debian's package; CI installs it): every table and figure is there."""
    if CHROMIUM is None:
        if os.environ.get("ECG_FAT_BROWSER") == "1":
            pytest.fail("ECG_FAT_BROWSER=1 but no chromium on PATH")
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); CI installs it")
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "rep")]) == 0
    page = tmp_path / "rep" / "report.html"
    alone = tmp_path / "alone" / "report.html"  # moved away from its PNGs: it must not need them
    alone.parent.mkdir()
    page.rename(alone)
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*browser, "--dump-dom", alone.as_uri()], capture_output=True, text=True, timeout=180).stdout
    assert dom.count("<table") == 4 + len(runs)  # Tables 2-5 and one per-class recall table per run
    assert dom.count("<img") == len(CONDITIONS) and dom.count('src="data:image/png;base64,iVBORw0KGgo') == 5
    assert "97.00" in dom and "Clean-accuracy cost of FAT" in dom and '"adversarial": false' in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1200,7000", alone.as_uri()], timeout=180)
    pixels = (plt_image.imread(shot)[..., :3] * 255).astype(int)
    # matplotlib's first two line colours (C0 blue, C1 orange): the figures were drawn on the page
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (abs(pixels - colour).sum(-1) < 30).sum() > 500, colour


def test_the_standard_attacks_table_flags_a_gap_that_suggests_gradient_masking(tmp_path: Path) -> None:
    from ecg_fat.report import load_run, standard_table

    run_dir = tmp_path / "fat"
    results = Results(run_dir)
    results.start(FederationConfig())

    def metrics(accuracy: float) -> dict:
        return {"accuracy": accuracy, "precision": 0.5, "recall": 0.5, "f1": 0.5, "recall_per_class": {}, "seconds": 1}

    results.add_metrics(2, {"clean": metrics(0.9)})
    standard = {"clean-subset": 0.9, "pgd-subset": 0.8, "pgd100": 0.75, "autoattack": 0.7}
    results.add_metrics(2, {c: metrics(a) for c, a in standard.items()})
    lines = standard_table([load_run(run_dir)])
    assert lines[0] == "| run | Clean | PGD-20 | PGD-100, restarts | AutoAttack | PGD-20 minus AutoAttack |"
    assert lines[2] == "| fat (round 2) | 90.00 | 80.00 | 75.00 | 70.00 | **+10.00: gradient masking?** |"
    results.add_metrics(3, {c: metrics(a) for c, a in (standard | {"autoattack": 0.79}).items()})
    assert standard_table([load_run(run_dir)])[2].endswith("| 80.00 | 75.00 | 79.00 | +1.00 |")
    assert standard_table([]) == []


FAT = {"clean": 0.97, "pgd": 0.9, "fgsm": 0.92, "cw": 0.5, "bim": 0.91}


def test_an_arm_of_several_seeds_reports_mean_and_sample_sd(runs: list[Path], tmp_path: Path) -> None:
    """A directory of results directories that differ only in their seed is one arm: mean +- sd in every table."""
    arm = tmp_path / "fat-seeds"
    for seed, shift in ((0, 0.0), (1, 0.01), (2, 0.02)):
        fake_run(arm / f"seed-{seed}", True, {c: a + shift for c, a in FAT.items()}, seed=seed)
    assert main(["report", str(arm), str(runs[1]), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    # accuracy 97, 98, 99: mean 98, sample sd 1 (a population sd would print 0.82)
    assert "| fat-seeds (FAT, 3 seeds, round 3) | 98.00 ± 1.00 | 91.00 ± 1.00 | 93.00 ± 1.00 |" in text
    assert "| baseline (non-FAT, round 3) | 98.50 | 30.00 |" in text  # one run: no spread
    assert "| Clean | 90.00 ± 0.00 | 50.00 ± 0.00 |" in text  # per-class recall, the same in every seed
    assert "Clean-accuracy cost of FAT: +0.50 points (98.50 -> 98.00)" in text  # from the mean
    assert "fat-seeds accuracy PGD: 91.00 vs paper 94.82 (-3.82)" in text
    html = (tmp_path / "rep" / "report.html").read_text()
    assert all(f"fat-seeds/seed-{seed}: config.json" in html for seed in range(3))


def test_the_figure_shows_the_spread_of_the_seeds(tmp_path: Path) -> None:
    from ecg_fat.report import figure, load_run

    arm = tmp_path / "arm"
    for seed, shift in ((0, -0.05), (1, 0.05)):
        fake_run(arm / f"s{seed}", True, {c: a + shift for c, a in FAT.items()}, seed=seed)
    figure([load_run(arm)], "clean", tmp_path / "arm.png")  # draws a band: C0 at 20% opacity
    pixels = (plt_image.imread(tmp_path / "arm.png")[..., :3] * 255).astype(int)
    band = (255 - 0.2 * (255 - np.array((31, 119, 180)))).astype(int)
    assert (abs(pixels - band).sum(-1) < 12).sum() > 2000


def test_the_page_of_many_runs_stays_small_enough_to_commit(tmp_path: Path) -> None:
    """Six arms of 10 rounds, one of 3 seeds (the minority report had 4 and reached 1.05 MB with RGBA figures):
    the self-contained page, every figure embedded, stays under the 1 MiB a repository file may have here."""
    dirs = []
    for arm in range(6):
        shifted = {c: min(1.0, a - 0.04 * arm) for c, a in FAT.items()}
        if arm == 0:
            for seed in range(3):
                fake_run(tmp_path / "seeds" / f"seed-{seed}", True, shifted, rounds=10, seed=seed)
            dirs.append(tmp_path / "seeds")
        else:
            dirs.append(fake_run(tmp_path / f"arm-{arm}", arm % 2 == 0, shifted, rounds=10, lr=1e-3 * arm))
    assert main(["report", *map(str, dirs), "--out", str(tmp_path / "rep")]) == 0
    page = tmp_path / "rep" / "report.html"
    assert page.read_text().count('src="data:image/png;base64,iVBORw0KGgo') == len(CONDITIONS)
    assert page.stat().st_size < 1_048_576, page.stat().st_size


def test_an_arm_whose_runs_differ_in_more_than_the_seed_is_refused(tmp_path: Path, capsys) -> None:
    arm = tmp_path / "mixed"
    fake_run(arm / "a", True, FAT, seed=0)
    fake_run(arm / "b", True, FAT, seed=1, lr=3e-3)
    assert main(["report", str(arm), "--out", str(tmp_path / "rep")]) == 1
    assert "mixed: a and b differ in more than their seed: train.lr (0.001 vs 0.003)" in capsys.readouterr().err
    same = tmp_path / "same-seed"
    fake_run(same / "a", True, FAT, seed=4)
    fake_run(same / "b", True, FAT, seed=4)
    assert main(["report", str(same), "--out", str(tmp_path / "rep")]) == 1
    assert "same-seed: its runs must have different seeds, found [4, 4]" in capsys.readouterr().err
