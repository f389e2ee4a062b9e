"""report.json as typed models (pydantic): the contract `phase2 schema` prints, runs are checked against, and
`phase2 report` / `phase2 compare` read through (older versions migrated first: migrate.py)."""

from phase2_ray.report.schema.report import SCHEMA_VERSION, Report

__all__ = ["SCHEMA_VERSION", "Report"]
