"""Golden run directories (report.json + CSVs from real runs, with the report.md they rendered to): every
renderer is checked without Ray, and a refactor that changes a report by one character fails here."""

import shutil
from pathlib import Path

import pytest

from phase2_ray.report import render_run_dir

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
RUNS = sorted(p.name for p in GOLDEN.iterdir() if (p / "report.json").is_file())


@pytest.mark.parametrize("name", RUNS)
def test_golden_report_renders_identically(name: str, tmp_path: Path) -> None:
    src = GOLDEN / name
    for f in ("report.json", "steps.csv", "val.csv"):
        if (src / f).exists():
            shutil.copy(src / f, tmp_path / f)
    md = render_run_dir(tmp_path).read_text()
    assert md == (src / "report.md").read_text()
    assert (tmp_path / "report.html").stat().st_size > 0
