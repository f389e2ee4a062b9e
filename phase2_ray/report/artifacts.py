"""A run directory's files: the CSVs and report.json from the raw results and the report, then plots/*.png,
report.md and report.html from report.json and the CSVs alone."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from phase2_ray.core.atomic import write_atomic
from phase2_ray.report.html import render_html
from phase2_ray.report.markdown import render_markdown
from phase2_ray.report.schema import SCHEMA_VERSION, Report
from phase2_ray.report.schema.migrate import check_before_write, problems, read_report
from phase2_ray.report.serving import LIST_COLUMNS, request_frame
from phase2_ray.report.training import step_frame

VAL_COLUMNS = ["variant", "step", "val_loss"]
INPROCESS_DROPPED = ["level", "status", "error_type", "error", "prompt_tokens", "text"]
"""requests.csv's columns that in-process reference records never have."""


def write_run_dir(
    out: Path, report: dict, training: dict[str, dict], validation: dict, *, render: bool = True
) -> Path:
    """Writes CSVs, report.json and report.md atomically; report.md last, so its presence means a whole report.
    `render=False` stops at the data (report.json and the CSVs, what `phase2 compare` reads): for the verdict
    benchmark's hundreds of runs, whose charts nobody opens; `phase2 report RUN_DIR` draws them later."""
    write_atomic(out / "steps.csv", step_frame(training).to_csv(index=False))
    val_rows = [
        {"variant": v, "step": s, "val_loss": x}
        for v, t in report["training"].items()
        for s, x in t["val_curve"]
    ]
    write_atomic(out / "val.csv", pd.DataFrame(val_rows, columns=VAL_COLUMNS).to_csv(index=False))
    write_atomic(out / "requests.csv", _requests_csv(request_frame(validation.get("records", []))))
    if validation.get("capacity_records"):
        # the capacity searches' requests: their levels go past saturation on purpose, so they are kept apart
        # from requests.csv, whose requests all count in the success rate
        write_atomic(
            out / "capacity_requests.csv", _requests_csv(request_frame(validation["capacity_records"]))
        )
    ref = [r for m in validation.get("reference", {}).values() for r in m["records"]]
    write_atomic(
        out / "inprocess_requests.csv", _requests_csv(request_frame(ref).drop(columns=INPROCESS_DROPPED))
    )
    write_atomic(out / "gates.csv", pd.DataFrame(report["decision"]["gates"]).to_csv(index=False))
    typed = check_before_write(report)
    path = write_atomic(out / "report.json", json.dumps(report, indent=2))
    if not render:
        return path
    return _render(out, typed) if typed else _unrendered(out, report)


def _requests_csv(frame: pd.DataFrame) -> str:
    for col in LIST_COLUMNS:
        frame[col] = frame[col].map(json.dumps)
    return frame.to_csv(index=False)


def rewrite_report(out: str | Path, report: dict) -> Path:
    """report.json, report.md and report.html again after a late addition (the tracking result), with the charts
    already drawn under plots/ (each chart's file is named for its key)."""
    out = Path(out)
    typed = check_before_write(report)
    write_atomic(out / "report.json", json.dumps(report, indent=2))
    if typed is None:
        return _unrendered(out, report)
    return _write_pages(out, typed, {p.stem: str(p.relative_to(out)) for p in (out / "plots").glob("*.png")})


def _write_pages(out: Path, report: Report, plots: dict[str, str]) -> Path:
    """report.html, then report.md: its presence means a whole report."""
    md = render_markdown(report, plots)
    write_atomic(out / "report.html", render_html(md, out, report.run_id))
    return write_atomic(out / "report.md", md)


def _unrendered(out: Path, report: dict) -> Path:
    """The pages of a run whose report.json departs from the schema (written with a warning): the renderers read
    the typed report, so report.md gives the decision and why nothing else is drawn; the data is all kept."""
    found = problems(report)
    dec = report.get("decision") or {}
    md = (
        f"# Phase 2 completion report — {report.get('run_id')}\n\n**Decision: {str(dec.get('outcome')).upper()}**"
        f"\n\nreport.md could not be drawn: report.json departs from schema {SCHEMA_VERSION} in {len(found)} "
        "place(s) (a phase2_ray bug: please report it). Every figure is in report.json and the CSVs beside it.\n\n"
        + "".join(f"- `{p}`\n" for p in found[:20])
    )
    write_atomic(out / "report.html", render_html(md, out, str(report.get("run_id"))))
    return write_atomic(out / "report.md", md)


def render_run_dir(out: str | Path) -> Path:
    """Draws plots/*.png, report.md and a self-contained report.html from report.json and the CSVs alone (no
        Ray): what `phase2 report RUN_DIR` runs. A report.json of a version no migration reads, or one the schema refuses,
    raises ReportError (one line). report.md is written last, so its presence means a whole report."""
    out = Path(out)
    return _render(
        out, read_report(out)
    )  # migrated from the last release's version, checked against the schema


def _render(out: Path, report: Report) -> Path:
    """Charts, then the pages, from the typed report and the run directory's CSVs."""
    from phase2_ray.report.plots import write_plots  # matplotlib only when drawing

    steps = pd.read_csv(out / "steps.csv") if (out / "steps.csv").exists() else step_frame({})
    val_path = out / "val.csv"
    val = pd.read_csv(val_path) if val_path.exists() else pd.DataFrame(columns=VAL_COLUMNS)
    return _write_pages(out, report, write_plots(out, report, steps, val))
