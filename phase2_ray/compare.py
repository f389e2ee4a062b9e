"""`phase2 compare RUN_A RUN_B`: every headline metric of two saved runs side by side, without Ray.

A change is called significant only when the raw samples say so: the ratio of medians (B / A) of per-step times or
per-request latencies gets a 95% bootstrap CI, and only a CI that excludes 1.0 counts. Figures with no samples
behind them (a final val loss, a peak RSS) show their change but are never called significant. A significant change
in the worse direction is a regression; the command exits 1 when there is one, so a CI job can gate on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from phase2_ray.core.atomic import write_atomic
from phase2_ray.metrics import median_ratio_ci


def _load(run: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    report = json.loads((run / "report.json").read_text())
    steps = pd.read_csv(run / "steps.csv") if (run / "steps.csv").exists() else pd.DataFrame()
    req = pd.read_csv(run / "requests.csv") if (run / "requests.csv").exists() else pd.DataFrame()
    return report, steps, req


def _row(metric: str, who: str, a: float | None, b: float | None, better: str, samples=None) -> dict:
    """One compared figure. `samples` = (A values, B values) when raw samples exist for a significance test."""
    row = {"metric": metric, "variant": who, "a": a, "b": b, "better": better}
    row["change_pct"] = (b / a - 1) * 100 if a not in (None, 0) and b is not None else None
    row.update(
        ci_low=None, ci_high=None, significant=False, verdict="n/a (no samples)" if samples is None else ""
    )
    if samples is not None:
        sa, sb = (np.asarray(x, dtype=float) for x in samples)
        sa, sb = sa[np.isfinite(sa)], sb[np.isfinite(sb)]
        ci = median_ratio_ci(sb, sa)  # median(B) / median(A)
        row.update(ci_low=ci["ci_low"], ci_high=ci["ci_high"], significant=ci["significant"])
        if ci["ratio"] is None:
            row["verdict"] = "too few samples"
        elif not ci["significant"]:
            row["verdict"] = "no significant change"
        else:
            up = ci["ci_low"] > 1.0
            worse = up if better == "lower" else not up
            row["verdict"] = "REGRESSION" if worse else "improvement"
    return row


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict:
    ra, sa, qa = _load(Path(run_a))
    rb, sb, qb = _load(Path(run_b))
    rows: list[dict] = []
    skip_a = ra["config"]["training"]["skip_steps"]
    skip_b = rb["config"]["training"]["skip_steps"]
    for v in [x for x in ra.get("training", {}) if x in rb.get("training", {})]:
        ta, tb = ra["training"][v], rb["training"][v]
        steps_a = sa[(sa["variant"] == v) & (sa["step"] > skip_a)]["step_s"] * 1000 if len(sa) else []
        steps_b = sb[(sb["variant"] == v) & (sb["step"] > skip_b)]["step_s"] * 1000 if len(sb) else []
        rows.append(
            _row(
                "median step time (ms)",
                v,
                (ta.get("step_ms") or {}).get("p50"),
                (tb.get("step_ms") or {}).get("p50"),
                "lower",
                (steps_a, steps_b),
            )
        )
        rows.append(_row("steady tokens/s", v, ta.get("tokens_per_s"), tb.get("tokens_per_s"), "higher"))
        rows.append(_row("final val loss", v, ta.get("val_loss"), tb.get("val_loss"), "lower"))
    for m in [x for x in ra.get("inference", {}) if x in rb.get("inference", {})]:
        ia, ib = ra["inference"][m], rb["inference"][m]
        level = ia.get("headline_level")

        def reqs(q: pd.DataFrame, lv=level, m=m) -> pd.DataFrame:
            if not len(q):
                return q
            sel = (q["variant"] == m) & q["ok"].astype(bool)
            if lv is not None and "level" in q:
                sel &= q["level"] == lv
            return q[sel]

        xa, xb = reqs(qa), reqs(qb)
        tag = f"{m} ({level})" if level else m
        for metric, key in (("TTFT p50 (ms)", "ttft_ms"), ("E2E p50 (ms)", "e2e_ms")):
            rows.append(
                _row(
                    metric,
                    tag,
                    (ia.get(key) or {}).get("p50"),
                    (ib.get(key) or {}).get("p50"),
                    "lower",
                    (xa.get(key, []), xb.get(key, [])),
                )
            )

        def tpot(x: pd.DataFrame):
            multi = x[x["output_tokens"] > 1] if len(x) else x
            return (multi["e2e_ms"] - multi["ttft_ms"]) / (multi["output_tokens"] - 1) if len(multi) else []

        rows.append(
            _row(
                "TPOT p50 (ms)",
                tag,
                (ia.get("tpot_ms") or {}).get("p50"),
                (ib.get("tpot_ms") or {}).get("p50"),
                "lower",
                (tpot(xa), tpot(xb)),
            )
        )
        rows.append(
            _row("output tok/s", tag, ia.get("output_tokens_per_s"), ib.get("output_tokens_per_s"), "higher")
        )
        rows.append(
            _row("peak replica RSS (MB)", m, ia.get("peak_memory_mb"), ib.get("peak_memory_mb"), "lower")
        )
        rows.append(_row("success rate", m, ia.get("success_rate"), ib.get("success_rate"), "higher"))
    regressions = [r for r in rows if r["verdict"] == "REGRESSION"]
    return {
        "run_a": {"run_id": ra["run_id"], "path": str(run_a), "approved": ra["decision"]["approved"]},
        "run_b": {"run_id": rb["run_id"], "path": str(run_b), "approved": rb["decision"]["approved"]},
        "basis": "B / A ratio of medians with a 95% percentile bootstrap CI over per-step or per-request samples",
        "rows": rows,
        "regressions": len(regressions),
    }


def render(c: dict) -> str:
    def f(x, d=2):
        return "—" if x is None else f"{x:,.{d}f}"

    table = [
        [
            r["metric"],
            r["variant"],
            f(r["a"], 4 if "loss" in r["metric"] else 2),
            f(r["b"], 4 if "loss" in r["metric"] else 2),
            "—" if r["change_pct"] is None else f"{r['change_pct']:+.2f}%",
            "—" if r["ci_low"] is None else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
            r["verdict"],
        ]
        for r in c["rows"]
    ]
    head = (
        f"# Run comparison\n\nA = {c['run_a']['run_id']} ({'approved' if c['run_a']['approved'] else 'rejected'})\n"
        f"B = {c['run_b']['run_id']} ({'approved' if c['run_b']['approved'] else 'rejected'})\n\n"
        f"Change = B vs A. CI: {c['basis']}; a change counts only when the CI excludes 1.0.\n\n"
    )
    body = tabulate(
        table, headers=["metric", "variant", "A", "B", "change", "B/A 95% CI", "verdict"], tablefmt="github"
    )
    return head + body + f"\n\n**{c['regressions']} significant regression(s).**\n"


def write(c: dict, out: str | Path) -> Path:
    out = Path(out)
    write_atomic(out.with_suffix(".json"), json.dumps(c, indent=2))
    return write_atomic(out.with_suffix(".md"), render(c))
