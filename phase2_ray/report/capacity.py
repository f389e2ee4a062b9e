"""report.json's `serving.capacity`: the capacity searches' replicates combined into one interval per model and
replica count, the scaling efficiency of capacity over replica counts, and the paired ratio of two models'
capacities (the capacity_vs_baseline gate)."""

from __future__ import annotations

import math

import numpy as np

from phase2_ray.report.schema.serving import CapacityRun
from phase2_ray.report.stats import ratio, t_half_width, t_quantile


def summarize_capacity(cap: dict) -> dict:
    """report.json's `serving.capacity`: each search as it ran (every level it tried), and per model the scaling
    efficiency of capacity over the replica counts (capacity at N / (N / N0 x capacity at the first count N0)),
    with what bounds it when it is low."""
    runs = cap.get("runs", [])
    scaling: dict = {}
    for m in dict.fromkeys(r["model"] for r in runs):
        mine = sorted((r for r in runs if r["model"] == m), key=lambda r: r["replicas"])
        if len(mine) < 2 or not mine[0]["capacity_rps"]:
            continue
        base = mine[0]
        scaling[m] = [
            {
                "replicas": r["replicas"],
                "capacity_rps": r["capacity_rps"],
                "efficiency": ratio(
                    r["capacity_rps"], base["capacity_rps"] * r["replicas"] / base["replicas"]
                ),
            }
            for r in mine
        ]
    cl = cap.get("cluster") or {}
    bound = None
    effs = [x["efficiency"] for xs in scaling.values() for x in xs[1:] if x["efficiency"] is not None]
    if effs and min(effs) < 0.8 and cl:
        most = max(r["replicas"] for r in runs)
        bound = (
            f"{most} replicas, the Serve proxy and {cl.get('load_clients')} load generator(s) share "
            f"{cl.get('cpus', 0):g} CPU(s) on {cl.get('nodes')} node(s): a replica added on the same cores takes "
            "CPU time from the others and from the generator, so capacity cannot grow in proportion"
        )
    return {
        "slo": cap.get("slo"),
        "goodput_min": cap.get("goodput_min"),
        "cluster": cl,
        "runs": runs,
        "scaling": scaling,
        "bound": bound,
    }


def combine_searches(searches: list[dict], confidence: float = 0.95, between_run_cv_pct: float = 0.0) -> dict:
    """One capacity from `searches` replicated at one replica count (each a whole search with its own seed, run
    at its own moment): the geometric mean of their estimates, with an interval on the log scale. One search's
    interval holds only its levels' sampling noise; searches of one run share its processes and moment and can
    agree closely while the next run finds another capacity (measured: disjoint intervals from same-code runs).
    So the interval has two variance components, as nested random effects (runs over searches): the searches'
    own spread (s^2 / n, estimated here) and the run-to-run one, `between_run_cv_pct` (measured beforehand on the
    machine; it cannot be seen from inside one run). Degrees of freedom: Welch-Satterthwaite, the run component
    counted as known. Every search is kept (`searches`), and their levels together (`levels`, each tagged with
    its replicate)."""
    found = [s["capacity_rps"] for s in searches if s.get("capacity_rps")]
    run_var = math.log1p(between_run_cv_pct / 100) ** 2
    out = {
        "capacity_rps": None,
        "ci_low": None,
        "ci_high": None,
        "confidence": confidence,
        "replicates": len(searches),
        "replicate_estimates": [s.get("capacity_rps") for s in searches],
        "between_run_cv_pct": between_run_cv_pct,
        "censored": any(s.get("censored") for s in searches),
        "goodput_min": searches[0].get("goodput_min") if searches else None,
        "stop_reason": "; ".join(dict.fromkeys(s.get("stop_reason") or "" for s in searches)),
        "search_s": sum(s.get("search_s") or 0.0 for s in searches),
        "levels": [{**lv, "replicate": i} for i, s in enumerate(searches) for lv in s.get("levels", [])],
        "searches": searches,
        "method": "geometric mean of the replicated searches' estimates; interval on their log estimates with "
        f"the searches' spread and a run-to-run component of {between_run_cv_pct:g}% "
        "(validation.capacity.between_run_cv_pct); each search: "
        + (searches[0].get("method", "") if searches else ""),
    }
    if len(found) < len(searches) or not found:
        return out  # a search that found no capacity: no estimate over the replicates
    logs = np.log(found)
    centre = float(logs.mean())
    out["capacity_rps"] = float(np.exp(centre))
    if len(found) == 1:  # one search: its own interval (its levels' noise), widened by the run component
        lo, hi = searches[0].get("ci_low"), searches[0].get("ci_high")
        z = t_quantile(0.5 + confidence / 2, math.inf) * math.sqrt(run_var)
        out["ci_low"] = lo * math.exp(-z) if lo else None
        out["ci_high"] = hi * math.exp(z) if hi else None
        return out
    search_var = float(logs.var(ddof=1)) / len(found)
    total = search_var + run_var
    df = total**2 / (search_var**2 / (len(found) - 1)) if search_var > 0 else math.inf
    half = t_quantile(0.5 + confidence / 2, df) * math.sqrt(total)
    out["ci_low"], out["ci_high"] = float(np.exp(centre - half)), float(np.exp(centre + half))
    return out


def paired_capacity_ratio(
    a: CapacityRun, b: CapacityRun, confidence: float = 0.95
) -> tuple[float, float, float] | None:
    """a / b of two replicated capacities whose searches took turns (replicate i of each moments apart): the
    geometric mean of the per-replicate ratios and a Student-t interval over them; None without 2 pairs. The
    run-to-run component cancels in these pairs, so it is left out."""
    pairs = [
        math.log(x.capacity_rps / y.capacity_rps)
        for x, y in zip(a.searches, b.searches, strict=False)
        if x.capacity_rps and y.capacity_rps
    ]
    if len(pairs) < 2:
        return None
    m, half = float(np.mean(pairs)), t_half_width(pairs, confidence)
    return math.exp(m), math.exp(m - half), math.exp(m + half)
