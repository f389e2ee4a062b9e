"""report.json as a published contract: the schema shipped is what the models print, the golden reports (real runs)
match it through an independent validator, a run of the last release (schema 1.3) is read through the migration by
`phase2 report` and `phase2 compare`, an older one is refused in one line, and a report that departs from the models
fails its write under the suite's strict mode (every report the suite writes is checked this way: tests/conftest.py
sets PHASE2_STRICT_SCHEMA)."""

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from phase2_ray import cli
from phase2_ray.report.schema import SCHEMA_VERSION, Report
from phase2_ray.report.schema import reference as ref
from phase2_ray.report.schema.migrate import ReportError, check_before_write, read_report, read_report_dict

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = sorted(p for p in (FIXTURES / "golden").iterdir() if (p / "report.json").is_file())
V1_3 = FIXTURES / "v1_3_default"


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("report.json", "steps.csv", "val.csv"):
        shutil.copy(src / f, dst / f)
    return dst


def test_the_shipped_schema_and_the_reference_are_current():
    assert ref.SHIPPED.read_text() == ref.schema_text(), "stale: run ./dev docs"
    assert (ROOT / "docs/report-json.md").read_text() == ref.markdown(), "stale: run ./dev docs"


def test_phase2_schema_prints_the_shipped_schema(capsys, tmp_path):
    assert cli.main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(ref.SHIPPED.read_text())
    jsonschema.Draft202012Validator.check_schema(printed)  # a valid JSON Schema, not only valid JSON
    assert cli.main(["schema", "--output", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text()) == printed


@pytest.mark.parametrize("run", GOLDEN, ids=lambda p: p.name)
def test_golden_reports_match_the_published_schema(run: Path):
    raw = json.loads((run / "report.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION
    jsonschema.validate(raw, json.loads(ref.SHIPPED.read_text()))  # the file a CI job would use, not pydantic
    typed = Report.model_validate(raw)
    assert typed.decision.outcome == raw["decision"]["outcome"]
    assert typed.model_dump(mode="json", by_alias=True, exclude_unset=True) == raw  # lossless both ways


def test_the_schema_refuses_what_it_does_not_describe():
    raw = json.loads((GOLDEN[0] / "report.json").read_text())
    schema = json.loads(ref.SHIPPED.read_text())
    raw["training"]["baseline"]["step_ms_p50"] = 1.0  # a field nobody declared
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, schema)
    del raw["training"]["baseline"]["step_ms_p50"]
    raw["decision"]["outcome"] = "approved-ish"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, schema)


def test_a_report_off_the_schema_fails_its_write_in_strict_mode_and_warns_otherwise(monkeypatch, capsys):
    raw = json.loads((GOLDEN[0] / "report.json").read_text())
    assert check_before_write(raw).run_id == raw["run_id"]  # the real one passes, typed
    raw["serving"]["surprise"] = {"x": 1}
    with pytest.raises(ReportError, match=r"serving\.surprise"):
        check_before_write(raw)
    monkeypatch.delenv("PHASE2_STRICT_SCHEMA")
    assert check_before_write(raw) is None  # a user's run keeps its report: a warning, not a lost run
    assert "departs from schema" in capsys.readouterr().err


def test_a_users_report_off_the_schema_is_kept_and_its_page_says_why(monkeypatch, tmp_path, capsys):
    from phase2_ray.report import rewrite_report

    monkeypatch.delenv("PHASE2_STRICT_SCHEMA")
    raw = json.loads((GOLDEN[0] / "report.json").read_text())
    raw["serving"]["surprise"] = {"x": 1}
    md = rewrite_report(tmp_path, raw).read_text()
    assert json.loads((tmp_path / "report.json").read_text()) == raw  # every figure kept
    assert f"**Decision: {raw['decision']['outcome'].upper()}**" in md and "`serving.surprise" in md
    assert (tmp_path / "report.html").stat().st_size > 0
    assert "departs from schema" in capsys.readouterr().err


def test_a_report_of_the_last_release_is_migrated_rendered_and_compared(tmp_path, capsys):
    raw = json.loads((V1_3 / "report.json").read_text())
    assert raw["schema_version"] == "1.3"
    typed = read_report(V1_3)
    assert typed.schema_version == SCHEMA_VERSION
    assert typed.decision.outcome == raw["decision"]["outcome"]
    assert read_report_dict(V1_3) == {**raw, "schema_version": SCHEMA_VERSION}  # nothing else changes
    run = _copy_run(V1_3, tmp_path / "old")
    assert cli.main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert raw["run_id"] in md and "Key Metrics at a Glance" in md
    assert (
        json.loads((run / "report.json").read_text())["schema_version"] == "1.3"
    )  # the file is left as it was
    new = _copy_run(GOLDEN[0], tmp_path / "new")
    code = cli.main(["compare", str(run), str(new), "--output", str(tmp_path / "cmp")])
    assert code in (0, 1, 4)  # the outcome is the two runs' business; that it reads both is the point here
    c = json.loads((tmp_path / "cmp.json").read_text())
    assert c["run_a"]["run_id"] == raw["run_id"] and c["rows"]


@pytest.mark.parametrize("version", ["1.2", "1.1", "1.0"])
def test_an_older_report_is_refused_in_one_line_naming_its_version(tmp_path, capsys, version):
    run = _copy_run(GOLDEN[0], tmp_path / "run")
    raw = json.loads((run / "report.json").read_text())
    (run / "report.json").write_text(json.dumps({**raw, "schema_version": version}))
    assert cli.main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"schema {version} is not supported" in err, err
    assert cli.main(["compare", str(run), str(_copy_run(GOLDEN[0], tmp_path / "b"))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"schema {version}" in err, err
    assert not (run / "report.md").exists()


def test_a_damaged_report_is_refused_naming_the_field(tmp_path, capsys):
    run = _copy_run(GOLDEN[0], tmp_path / "run")
    raw = json.loads((run / "report.json").read_text())
    raw["decision"]["gates"][0]["verdict"] = "maybe"
    (run / "report.json").write_text(json.dumps(raw))
    assert cli.main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "decision.gates.0.verdict" in err, err
    with pytest.raises(ReportError):
        read_report(run)
