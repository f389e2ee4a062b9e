"""Stage 2d on the driver: raw stage results -> report.json (the contract) -> CSVs, report.md, report.html, plots.

- orchestrator: MetricsOrchestrator, the driver's collector: raw results -> report.json, with the decision
- training, serving: report.json's training / comparison and inference / serving sections
- stats: the statistics (percentiles, CIs, paired speedups, Holm); gates: targets -> pass/fail, the decision
- artifacts: a run directory's files (write_run_dir; render_run_dir is `phase2 report RUN_DIR`)
- markdown (+ markdown_training, markdown_serving, markdown_decision), ascii, html, plots: the renderers,
  which read report.json alone
- compare: `phase2 compare RUN_A RUN_B`

Nothing is imported here eagerly: benchmarks/gpu_check.py imports `stats` on machines without Ray, pydantic or
the renderers' libraries, and importing a submodule runs this file first. The names below load on first use."""

from __future__ import annotations

import importlib

_PUBLIC = {
    "MetricsOrchestrator": "orchestrator",
    "write_run_dir": "artifacts",
    "render_run_dir": "artifacts",
    "rewrite_report": "artifacts",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
