"""Reading report.json back: the current version as is, the last released one (1.3) through a migration, older ones
refused in one line that names the version and what reads it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from phase2_ray.report.schema.report import SCHEMA_VERSION, Report

STRICT_ENV = "PHASE2_STRICT_SCHEMA"
"""Set (the test suite sets it): a report that does not match the schema fails the write instead of a warning."""


class ReportError(ValueError):
    """A report.json that cannot be read: a version no migration covers, or content the schema refuses."""


def _from_1_3(raw: dict) -> dict:
    """1.3 -> 1.4: 1.4 only added fields (serving.endpoints, the endpoint_available gate, token_events in
    requests.csv); a 1.3 report is a 1.4 report without them."""
    return {**raw, "schema_version": "1.4"}


MIGRATIONS = {"1.3": _from_1_3}
"""version -> the step to the next one, applied in turn until SCHEMA_VERSION."""


def migrate(raw: dict) -> dict:
    """`raw` (a parsed report.json) at SCHEMA_VERSION, or ReportError naming its version."""
    version = str(raw.get("schema_version", "none"))
    seen = []
    while version != SCHEMA_VERSION:
        if version not in MIGRATIONS or version in seen:
            readable = ", ".join([*MIGRATIONS, SCHEMA_VERSION])
            raise ReportError(
                f"report.json schema {version} is not supported: this phase2_ray reads {readable}; render it "
                "with the phase2_ray release that wrote it"
            )
        seen.append(version)
        raw = MIGRATIONS[version](raw)
        version = str(raw["schema_version"])
    return raw


def _lines(e: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in x['loc'])}: {x['msg']}" for x in e.errors()]


def problems(report: dict) -> list[str]:
    """Where `report` departs from the schema, one line each (empty: it matches)."""
    try:
        Report.model_validate(report)
    except ValidationError as e:
        return _lines(e)
    return []


def parse(raw: dict, where: str = "report.json") -> Report:
    """A parsed report.json (any supported version) as the typed model."""
    try:
        return Report.model_validate(migrate(raw))
    except ReportError as e:
        raise ReportError(f"{where}: {e}") from None
    except ValidationError as e:
        first = e.errors()[0]
        raise ReportError(
            f"{where}: does not match schema {SCHEMA_VERSION} ({e.error_count()} problem(s); first: "
            f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']})"
        ) from None


def read_report(path: str | Path) -> Report:
    """A run directory's (or a file's) report.json, migrated and typed."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    try:
        raw = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{file}: cannot be read as JSON ({e})") from None
    return parse(raw, str(file))


def read_report_dict(path: str | Path) -> dict:
    """read_report as the plain JSON object the renderers take: the fields the file had, at SCHEMA_VERSION."""
    return read_report(path).model_dump(mode="json", by_alias=True, exclude_unset=True)


def check_before_write(report: dict) -> Report | None:
    """Called as report.json is written: the typed report, or None for one that departs from the schema, which is
    written all the same (a run's results are never lost to a contract mismatch) with a warning; under
    PHASE2_STRICT_SCHEMA it fails the write instead."""
    try:
        return Report.model_validate(report)
    except ValidationError as e:
        found = _lines(e)
    msg = f"report.json departs from schema {SCHEMA_VERSION} in {len(found)} place(s): " + "; ".join(
        found[:5]
    )
    if os.environ.get(STRICT_ENV):
        raise ReportError(msg)
    print(f"phase2: warning: {msg}", file=sys.stderr)
    return None
