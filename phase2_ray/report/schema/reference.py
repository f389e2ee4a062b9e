"""report.json's published forms, generated from the models: the JSON Schema (shipped beside this file as
report.schema.json, printed by `phase2 schema`) and docs/report-json.md. `./dev docs` writes both;
tests/unit/test_report_schema.py fails when either in the repository is not what this prints."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from phase2_ray.config.reference import render_tree
from phase2_ray.report.schema.report import SCHEMA_VERSION, Report

SHIPPED = Path(__file__).with_name("report.schema.json")

HEADER = f"""# report.json reference (schema {SCHEMA_VERSION})

Generated from report.json's models (`phase2_ray/report/schema/`) by `python -m phase2_ray.report.schema.reference
--markdown`; do not edit by hand (`tests/unit/test_report_schema.py` checks it is current). The same models give the
JSON Schema (`phase2 schema`). Every run's report.json is checked against them as it is written; `phase2 report` and
`phase2 compare` read the previous release's schema (1.3) through a migration and refuse older ones in one line.
`NAME` in a key stands for a variant or served model (`baseline`, `optimized`, `optimized-int8`, an endpoint's name)
or a load level (`c1`, `c16`). How each figure is measured and each gate decided: docs/methodology.md.
"""


def schema() -> dict:
    """The JSON Schema of report.json, as a validator (jsonschema, a CI job) reads it."""
    s = Report.model_json_schema(by_alias=True, mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:phase2-ray:report:{SCHEMA_VERSION}",
        **s,
        "title": f"phase2_ray report.json, schema {SCHEMA_VERSION}",
    }


def schema_text() -> str:
    return json.dumps(schema(), indent=2) + "\n"


def markdown() -> str:
    return render_tree(Report, HEADER)


if __name__ == "__main__":
    sys.stdout.write(markdown() if "--markdown" in sys.argv else schema_text())
