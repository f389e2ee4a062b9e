"""`phase2 compare RUN_A RUN_B`: every headline metric of two saved runs side by side, without Ray.

A regression alarm that fires on an unchanged program is worse than none, so:
- Each tested figure gets a p-value from its raw samples, and the whole table is one family: Holm-Bonferroni
  keeps the chance of any false alarm at `alpha` however many metrics are compared.
- The speedup is compared through the speed trial's replicates (a within-run, paired measurement, robust to
  the machine's drift): Welch's t-test on the replicates' log ratios.
- Absolute timings of two runs minutes apart differ with the machine's drift, not only with the code: a change
  counts only beyond a noise threshold (criterion.rs's `noise_threshold`), `timing_noise_pct`, which should be
  at least the run-to-run spread that A/A runs measure on the machine (benchmarks/verdict_bench.py).
- Success rates: Fisher's exact test on the request counts. The val loss is deterministic for the same code and
  seed: a change beyond the val-loss tolerance is a regression, no test needed.
A significant change beyond its noise threshold in the worse direction is a regression. Each row also gets an
outcome under non-inferiority (better / equivalent / worse / inconclusive: can B's interval rule out a change beyond
the noise threshold on the worse side?). The command exits 1 on a regression, 4 when none was found but some figure
cannot rule one out, 0 otherwise, so a CI job can gate on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from phase2_ray.config import stored_skip_steps
from phase2_ray.core.atomic import write_atomic
from phase2_ray.report.schema import Report
from phase2_ray.report.schema.inference import ModelInference
from phase2_ray.report.schema.migrate import read_report
from phase2_ray.report.schema.serving import CapacityRun
from phase2_ray.report.schema.training import Comparison, TrainingSummary
from phase2_ray.report.serving import SERVING_HEADLINE
from phase2_ray.report.stats import (
    block_bootstrap_ratio_ci,
    holm,
    t_quantile,
    t_two_sided_p,
    with_per_request,
)
from phase2_ray.report.verdict import relation

ALPHA = 0.05
TIMING_NOISE_PCT = 50.0
SPEEDUP_NOISE_PCT = 5.0


def _load(run: Path) -> tuple[Report, pd.DataFrame, pd.DataFrame]:
    report = read_report(run)  # typed; a 1.3 report migrated; ReportError (one line) for anything else
    steps = pd.read_csv(run / "steps.csv") if (run / "steps.csv").exists() else pd.DataFrame()
    req = pd.read_csv(run / "requests.csv") if (run / "requests.csv").exists() else pd.DataFrame()
    return report, steps, req


def _row(metric: str, who: str, a: float | None, b: float | None, better: str, kind: str) -> dict:
    row = {"metric": metric, "variant": who, "a": a, "b": b, "better": better, "kind": kind}
    row["change_pct"] = (b / a - 1) * 100 if a not in (None, 0) and b is not None else None
    row.update(ci_low=None, ci_high=None, p_value=None, noise_pct=None, verdict="shown, not tested")
    return row


def _timing_row(metric, who, a, b, better, samples_a, samples_b, noise_pct: float) -> dict:
    """B/A ratio of medians of per-step or per-request samples, moving-block bootstrap (neighbours correlate)."""
    row = _row(metric, who, a, b, better, "absolute timing")
    sa = np.asarray(samples_a, dtype=float)
    sb = np.asarray(samples_b, dtype=float)
    ci = block_bootstrap_ratio_ci(sb[np.isfinite(sb)], sa[np.isfinite(sa)])  # median(B) / median(A)
    if ci["ratio"] is None:
        row["verdict"] = "too few samples"
        return row
    row.update(
        ci_low=ci["ci_low"],
        ci_high=ci["ci_high"],
        p_value=ci["p_value"],
        noise_pct=noise_pct,
        effect_pct=(ci["ratio"] - 1) * 100,  # what the samples say; the noise threshold applies to it
    )
    return row


def _log_ratios(c: Comparison) -> np.ndarray:
    reps = c.speed_trial.replicates if c.speed_trial else []
    return np.array([np.mean(np.log([p.a_s / p.b_s for p in r.pairs])) for r in reps if r.pairs])


def _speedup_row(v: str, ca: Comparison, cb: Comparison, noise_pct: float, alpha: float = ALPHA) -> dict:
    """B/A ratio of the paired speedups: Welch's t on the replicates' log ratios (each run's own unit)."""
    la, lb = _log_ratios(ca), _log_ratios(cb)
    row = _row(
        "training speedup (paired trial)", v, ca.speedup.ratio, cb.speedup.ratio, "higher", "paired speedup"
    )
    if la.size < 2 or lb.size < 2:
        row["verdict"] = "too few replicates"
        return row
    va, vb = la.var(ddof=1) / la.size, lb.var(ddof=1) / lb.size
    diff, se = lb.mean() - la.mean(), float(np.sqrt(va + vb))
    if se == 0:
        p, half = (1.0 if diff == 0 else 0.0), 0.0
    else:
        df = (va + vb) ** 2 / (va**2 / (la.size - 1) + vb**2 / (lb.size - 1))
        p = t_two_sided_p(diff / se, df)
        half = t_quantile(1 - alpha / 2, df) * se  # unadjusted: Holm acts on the p-values
    row.update(
        ci_low=float(np.exp(diff - half)),
        ci_high=float(np.exp(diff + half)),
        p_value=p,
        noise_pct=noise_pct,
        effect_pct=float((np.exp(diff) - 1) * 100),
    )
    return row


def _success_row(m: str, ia: ModelInference, ib: ModelInference) -> dict:
    from scipy import stats

    row = _row("success rate", m, ia.success_rate, ib.success_rate, "higher", "count")
    na, nb = ia.requests, ib.requests
    if not na or not nb:
        row["verdict"] = "no requests"
        return row
    oa, ob = ia.succeeded, ib.succeeded
    p = float(stats.fisher_exact([[oa, na - oa], [ob, nb - ob]])[1]) if (oa, ob) != (na, nb) else 1.0
    row.update(p_value=p, noise_pct=0.0)
    return row


def _val_loss_row(v: str, ta: TrainingSummary, tb: TrainingSummary, tol_pct: float) -> dict:
    row = _row("final val loss", v, ta.val_loss, tb.val_loss, "lower", "threshold")
    row["noise_pct"] = tol_pct
    ch = row["change_pct"]
    if ch is None:
        row["verdict"] = "not measured"
    elif ch > tol_pct:
        row["verdict"] = "REGRESSION"
    elif ch < -tol_pct:
        row["verdict"] = "improvement"
    else:
        row["verdict"] = f"within the {tol_pct:g}% tolerance"
    return row


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    *,
    alpha: float = ALPHA,
    timing_noise_pct: float = TIMING_NOISE_PCT,
    speedup_noise_pct: float = SPEEDUP_NOISE_PCT,
) -> dict:
    ra, sa, qa = _load(Path(run_a))
    rb, sb, qb = _load(Path(run_b))
    rows: list[dict] = []
    for v in [x for x in ra.comparison if x in rb.comparison]:
        rows.append(_speedup_row(v, ra.comparison[v], rb.comparison[v], speedup_noise_pct, alpha))
    for v in [x for x in ra.training if x in rb.training]:
        rows += _training_rows(v, (ra, sa), (rb, sb), timing_noise_pct)
    for m in [x for x in ra.inference if x in rb.inference]:
        rows += _inference_rows(m, ra.inference[m], rb.inference[m], qa, qb, timing_noise_pct)
    _decide(rows, alpha)
    rows += _capacity_rows(ra, rb)  # judged on their intervals (no p-value: outside Holm's family)
    for r in rows:
        r["outcome"] = row_outcome(r)
    tested = [r for r in rows if r["p_value"] is not None]
    return {
        "run_a": {"run_id": ra.run_id, "path": str(run_a), "outcome": ra.decision.outcome},
        "run_b": {"run_id": rb.run_id, "path": str(run_b), "outcome": rb.decision.outcome},
        "basis": f"{len(tested)} tested figures, Holm-Bonferroni at family-wise alpha {alpha:g}; a change also "
        f"has to exceed its noise threshold (absolute timings {timing_noise_pct:g}%, speedup "
        f"{speedup_noise_pct:g}%)",
        "alpha": alpha,
        "timing_noise_pct": timing_noise_pct,
        "speedup_noise_pct": speedup_noise_pct,
        "rows": rows,
        "regressions": sum(r["verdict"].startswith("REGRESSION") for r in rows),
        "inconclusive": sum(r["outcome"] == "inconclusive" for r in rows),
        "outcome": compare_outcome(rows),
    }


def _training_rows(
    v: str, a: tuple[Report, pd.DataFrame], b: tuple[Report, pd.DataFrame], noise_pct: float
) -> list[dict]:
    """Variant `v` in runs A and B: median step time (tested on the steady steps), tokens/s, val loss."""
    (ra, sa), (rb, sb) = a, b
    ta, tb = ra.training[v], rb.training[v]

    def steady_ms(report: Report, steps: pd.DataFrame):
        skip = stored_skip_steps(report.config)
        return steps[(steps["variant"] == v) & (steps["step"] > skip)]["step_s"] * 1000 if len(steps) else []

    return [
        _timing_row(
            "median step time (ms)",
            v,
            ta.step_ms.p50 if ta.step_ms else None,
            tb.step_ms.p50 if tb.step_ms else None,
            "lower",
            steady_ms(ra, sa),
            steady_ms(rb, sb),
            noise_pct,
        ),
        _row("steady tokens/s", v, ta.tokens_per_s, tb.tokens_per_s, "higher", "info"),
        _val_loss_row(
            v, ta, tb, ra.config["targets"].get("val_loss_delta_pct_max", 1.0)
        ),  # config: open JSON
    ]


def _inference_rows(
    m: str, ia: ModelInference, ib: ModelInference, qa: pd.DataFrame, qb: pd.DataFrame, noise_pct: float
) -> list[dict]:
    """Model `m` in runs A and B at A's headline level: latencies (tested on the requests), output tok/s,
    peak RSS, success rate."""
    level = ia.headline_level

    def p50(x: ModelInference, key: str) -> float | None:
        summary = getattr(x, key)
        return summary.p50 if summary else None

    def reqs(q: pd.DataFrame) -> pd.DataFrame:
        if not len(q):
            return q
        sel = (q["variant"] == m) & q["ok"].astype(bool)
        if "warmup" in q:
            sel &= ~q["warmup"].astype(bool)
        if level is not None and "level" in q:
            sel &= q["level"] == level
        return q[sel].sort_values("index") if "index" in q else q[sel]

    xa, xb = (with_per_request(x) if len(x) else x for x in (reqs(qa), reqs(qb)))
    tag = f"{m} ({level})" if level else m
    rows = [
        _timing_row(
            f"{h.name} ({h.unit})",
            tag,
            p50(ia, key),
            p50(ib, key),
            h.better,
            xa.get(key, []),
            xb.get(key, []),
            noise_pct,
        )
        for key, h in SERVING_HEADLINE.items()
        if h.unit == "ms"  # the latencies; the summary has no p50 of the decode rate to put beside them
    ]
    rows.append(
        _row(
            "output tok/s",
            tag,
            ia.output_tokens_per_s,
            ib.output_tokens_per_s,
            "higher",
            "info",
        )
    )
    if ia.peak_memory_mb is not None or ib.peak_memory_mb is not None:  # none: served elsewhere
        rows.append(
            _row(
                "peak replica RSS (MB)",
                m,
                ia.peak_memory_mb,
                ib.peak_memory_mb,
                "lower",
                "info",
            )
        )
    return rows + [_success_row(m, ia, ib)]


def _capacity_rows(ra: Report, rb: Report) -> list[dict]:
    """Capacity under the SLO per model and replica count in both runs. A regression is a drop whose intervals
    do not overlap (B's high end under A's low end) and beyond the searches' resolution (`rel_tol`)."""

    def runs(r: Report) -> dict[tuple[str, int], CapacityRun]:
        cap = r.serving.capacity
        return {(x.model, x.replicas): x for x in cap.runs} if cap else {}

    def tol(
        r: Report,
    ) -> float:  # the stored config is open JSON (its layout is the config's, not the report's)
        return ((r.config.get("validation") or {}).get("capacity") or {}).get("rel_tol", 0.15) * 100

    ca, cb = runs(ra), runs(rb)
    out = []
    for key in [k for k in ca if k in cb]:
        a, b = ca[key], cb[key]
        row = _row(
            f"capacity under SLO (req/s, {key[1]} replica(s))",
            key[0],
            a.capacity_rps,
            b.capacity_rps,
            "higher",
            "interval",
        )
        row["noise_pct"] = noise = max(tol(ra), tol(rb))
        ch = row["change_pct"]
        iv = f"A [{_f(a.ci_low)}, {_f(a.ci_high)}], B [{_f(b.ci_low)}, {_f(b.ci_high)}]"
        if ch is None:
            row["verdict"] = "not measured"
        elif b.ci_high is not None and a.ci_low is not None and b.ci_high < a.ci_low and -ch > noise:
            row["verdict"] = f"REGRESSION: {iv}"
        elif b.ci_low is not None and a.ci_high is not None and b.ci_low > a.ci_high and ch > noise:
            row["verdict"] = f"improvement: {iv}"
        else:
            row["verdict"] = f"no clear change: {iv}"
        out.append(row)
    return out


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _decide(rows: list[dict], alpha: float) -> None:
    """Verdicts of the tested rows: Holm over all their p-values, then the noise threshold and the direction."""
    tested = [r for r in rows if r["p_value"] is not None]
    for r, reject in zip(tested, holm([r["p_value"] for r in tested], alpha), strict=True):
        r["significant"] = reject
        if not reject:
            r["verdict"] = "no significant change"
            continue
        ch = r.get("effect_pct", r["change_pct"])
        if ch is None or abs(ch) < r["noise_pct"]:
            r["verdict"] = f"within noise (< {r['noise_pct']:g}%)"
            continue
        worse = ch > 0 if r["better"] == "lower" else ch < 0
        r["verdict"] = "REGRESSION" if worse else "improvement"


def row_outcome(r: dict) -> str:
    """A row's outcome under non-inferiority (the question a CI gate asks: did B get worse?): worse for a
    regression, better for an improvement; otherwise equivalent when B/A's interval rules out a change beyond the
    row's noise threshold on the worse side, inconclusive when it does not. Rows without an interval (val loss
    against its tolerance, success counts) are equivalent unless their own test called a change."""
    v = r.get("verdict") or ""
    if v.startswith("REGRESSION"):
        return "worse"
    if v.startswith("improvement"):
        return "better"
    lo, hi = r.get("ci_low"), r.get("ci_high")
    if lo is None or hi is None:
        if r.get("a") is None or r.get("b") is None or v in ("too few samples", "too few replicates"):
            return "inconclusive"
        if r.get("method") == "interval":  # capacity: two runs' intervals, no ratio interval
            small = r.get("change_pct") is not None and abs(r["change_pct"]) <= (r.get("noise_pct") or 0.0)
            return "equivalent" if small else "inconclusive"
        return "equivalent"
    rel = relation(
        lo,
        hi,
        higher_is_better=r["better"] == "higher",
        margin=(r.get("noise_pct") or 0.0) / 100,
        rule="non-inferiority",
    )
    return "equivalent" if rel == "better" else rel  # better than the margin, yet not called: not a claim


def compare_outcome(rows: list[dict]) -> str:
    """regression (exit 1) when a row regressed; inconclusive (exit 4) when none did but some row cannot rule
    one out; no regression (exit 0) otherwise."""
    outs = [r["outcome"] for r in rows]
    if "worse" in outs:
        return "regression"
    return "inconclusive" if "inconclusive" in outs else "no regression"


def render(c: dict) -> str:
    def f(x, d=2):
        return "—" if x is None else f"{x:,.{d}f}"

    table = [
        [
            r["metric"],
            r["variant"],
            f(r["a"], 4 if "loss" in r["metric"] or "speedup" in r["metric"] else 2),
            f(r["b"], 4 if "loss" in r["metric"] or "speedup" in r["metric"] else 2),
            "—" if r["change_pct"] is None else f"{r['change_pct']:+.2f}%",
            "—" if r["ci_low"] is None else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
            "—" if r["p_value"] is None else f"{r['p_value']:.3g}",
            r["verdict"],
            r["outcome"],
        ]
        for r in c["rows"]
    ]
    head = (
        f"# Run comparison\n\nA = {c['run_a']['run_id']} ({c['run_a']['outcome']})\n"
        f"B = {c['run_b']['run_id']} ({c['run_b']['outcome']})\n\n"
        f"Change = B vs A. {c['basis']}. Absolute timings of runs minutes apart move with the machine; the "
        "speedup row compares within-run paired measurements and is the one to trust.\n\n"
    )
    body = tabulate(
        table,
        headers=["metric", "variant", "A", "B", "change", "B/A 95% CI", "p", "verdict", "outcome"],
        tablefmt="github",
    )
    return (
        head
        + body
        + f"\n\n**{c['outcome'].upper()}**: {c['regressions']} significant regression(s), {c['inconclusive']} "
        "figure(s) that cannot rule one out beyond their noise threshold (outcome: non-inferiority of B against "
        "A with the row's noise threshold as margin).\n"
    )


def write(c: dict, out: str | Path) -> Path:
    out = Path(out)
    write_atomic(out.with_suffix(".json"), json.dumps(c, indent=2))
    return write_atomic(out.with_suffix(".md"), render(c))
