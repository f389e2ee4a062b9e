"""Stage 2d on the driver: raw stage results -> report.json (the contract) -> CSVs, report.md, report.html, plots.

Nothing here is imported eagerly: benchmarks/gpu_check.py imports `stats` on machines without Ray, pydantic or
the renderers' libraries, and importing a submodule runs this file first."""

from __future__ import annotations

import importlib

_PUBLIC = {
    "build_report": "markdown",
    "redacted_config": "markdown",
    "write_run_dir": "markdown",
    "render_run_dir": "markdown",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
