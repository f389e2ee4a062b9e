"""Metric names and the summaries computed from raw per-step and per-request records (each request's own metrics
are defined once, in request_metrics: PERCENTILES and describe are re-exported from there).

Definitions follow vLLM's benchmark: TTFT = request sent -> first token chunk, at the client;
TPOT = (E2E - TTFT) / (output_tokens - 1); ITL = gaps between chunks; failed requests are counted, not averaged."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from phase2_ray.report.request_metrics import describe, meets_slo

TTFT_MS = "ttft_ms"
TPOT_MS = "tpot_ms"
ITL_MS = "itl_ms"
E2E_MS = "e2e_ms"


def t_quantile(q: float, df: float) -> float:
    """Student's t quantile. scipy.special, not scipy.stats: the same function (stats.t.ppf calls it), and a
    fifth of the import time, which every `phase2 run` and `phase2 compare` pays. Imported here, not at module
    import: gpu_check.py runs this module where only torch is sure."""
    from scipy.special import stdtrit

    return float(stdtrit(df, q))


def t_half_width(values, confidence: float) -> float:
    """Half-width of the Student-t interval of the mean of `values` (at least 2) at `confidence`."""
    x = np.asarray(values, dtype=float)
    return t_quantile(0.5 + confidence / 2, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value of Student's t statistic `t` (2 * stats.t.sf(|t|, df))."""
    from scipy.special import stdtr

    return float(2 * stdtr(df, -abs(t)))


def tpot_ms(requests: pd.DataFrame) -> pd.Series:
    """request_metrics.tpot_ms over a frame: (E2E - TTFT) / (output_tokens - 1), NaN for a one-token request."""
    n = requests["output_tokens"]
    return ((requests[E2E_MS] - requests[TTFT_MS]) / (n - 1).clip(lower=1)).where(n > 1)


def decode_rate(requests: pd.DataFrame) -> pd.Series:
    """Each request's output tokens per second of its E2E time."""
    return requests["output_tokens"] / (requests[E2E_MS] / 1000.0)


def with_per_request(requests: pd.DataFrame) -> pd.DataFrame:
    """`requests` with columns `tpot_ms` and `rate` (decode_rate), set where a request has 2+ output tokens."""
    multi = requests["output_tokens"] > 1
    return requests.assign(tpot_ms=tpot_ms(requests).where(multi), rate=decode_rate(requests).where(multi))


def summarize_training(step_times: list[float], tokens_per_step: int, skip_steps: int) -> dict:
    """Steady-state throughput from per-step wall times, leaving out the first `skip_steps` (compile, warm-up):
    tokens per step / median step time (and the mean-based figure beside it)."""
    steady = np.asarray(step_times[skip_steps:], dtype=float)
    steady_s = float(steady.sum())
    median = float(np.median(steady)) if steady.size else 0.0
    return {
        "steady_steps": int(steady.size),
        "steady_s": steady_s,
        "warmup_s": float(sum(step_times[:skip_steps])),
        # The median step: robust to the machine's bursts, and the same statistic as the step-time ratio.
        "tokens_per_s": tokens_per_step / median if median > 0 else None,
        "tokens_per_s_mean": steady.size * tokens_per_step / steady_s if steady_s > 0 else None,
        "step_ms": describe(steady * 1000.0),
    }


def summarize_requests(requests: pd.DataFrame, slo: dict[str, float] | None = None) -> dict:
    """Inference summary from per-request records (one row per request, ITLs as lists).

    With `slo` ({"ttft_ms": max, "tpot_ms": max}), goodput as in vLLM's benchmark: successful requests that meet
    every SLO, as a share of all requests and per second of the measured window."""
    n = len(requests)
    ok = requests[requests["ok"]]
    out: dict = {"requests": n, "succeeded": int(len(ok))}
    out["success_rate"] = len(ok) / n if n else 0.0
    out["errors"] = requests.loc[~requests["ok"], "error_type"].value_counts().to_dict()
    out[TTFT_MS] = describe(ok[TTFT_MS])
    out[E2E_MS] = describe(ok[E2E_MS])
    multi = ok[ok["output_tokens"] > 1]
    out[TPOT_MS] = describe(tpot_ms(multi))
    out[ITL_MS] = describe(x for gaps in ok[ITL_MS] for x in gaps)
    # The server sends several tokens per write: the gaps between writes and their sizes, beside per-token ITL.
    if "write_gap_ms" in ok:
        out["write_gap_ms"] = describe(x for gaps in ok["write_gap_ms"] for x in (gaps or []))
        out["tokens_per_write"] = describe(x for sizes in ok["tokens_per_write"] for x in (sizes or []))
    if "queue_ms" in ok and ok["queue_ms"].notna().any():
        out["queue_ms"] = describe(ok["queue_ms"].dropna())
    # Aggregate output throughput: tokens of successful requests over the measured window's wall time. The
    # models take turns in rounds, so a model's window is the sum of its rounds' windows, not first to last.
    if len(ok):
        if "round" in requests and requests["round"].notna().any():
            per_round = requests.groupby(requests["round"].fillna(-1))
            window = float((per_round["end"].max() - per_round["start"].min()).sum())
        else:
            window = float(requests["end"].max() - requests["start"].min())
        out["output_tokens"] = int(ok["output_tokens"].sum())
        out["measured_s"] = window
        out["output_tokens_per_s"] = out["output_tokens"] / window if window > 0 else None
        out["requests_per_s"] = len(ok) / window if window > 0 else None
        out["request_tokens_per_s"] = describe(decode_rate(multi))
    else:
        out.update(output_tokens=0, measured_s=None, output_tokens_per_s=None, requests_per_s=None)
    if slo is not None:
        good = sum(meets_slo(r, slo["ttft_ms"], slo["tpot_ms"]) for r in ok.to_dict("records"))
        window = out.get("measured_s")
        out["goodput"] = {
            "slo": dict(slo),
            "good_requests": good,
            "fraction": good / n if n else 0.0,
            "requests_per_s": good / window if window else None,
        }
    return out


def _block_indices(rng: np.random.Generator, n: int, n_boot: int, block: int | None = None) -> np.ndarray:
    """(n_boot, n) indices of a moving-block bootstrap: blocks of ~sqrt(n) consecutive positions, since
    neighbouring steps or requests share the machine's state and are not independent draws."""
    k = block or max(2, int(round(np.sqrt(n))))
    starts = rng.integers(0, n - k + 1, (n_boot, -(-n // k)))
    return (starts[:, :, None] + np.arange(k)).reshape(n_boot, -1)[:, :n]


def median_ci(
    values: np.ndarray | list[float], *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """Median of `values` (a time series: steps in order) with a moving-block bootstrap interval, blocks of
    ~sqrt(n) neighbours, since neighbouring steps share the machine's state."""
    x = np.asarray(values, dtype=float)
    if x.size < 4:
        m = float(np.median(x)) if x.size else None
        return {"median": m, "ci_low": m, "ci_high": m, "n": int(x.size)}
    boots = np.median(x[_block_indices(np.random.default_rng(seed), x.size, n_boot)], axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return {"median": float(np.median(x)), "ci_low": float(lo), "ci_high": float(hi), "n": int(x.size)}


def paired_speedup(replicates: list[list[dict]], *, confidence: float = 0.95) -> dict:
    """Speedup from a paired speed trial: `replicates` is a list of independent trials, each a list of pairs
    with `a_s` (reference time) and `b_s` (candidate time); the speedup is a_s / b_s, above 1 = faster.

    A trial's pairs share its models' memory placement and its moment on the machine, so its pairs are not
    independent of each other: measured A/A trials differ by more between replicates than their pairs'
    spread explains. The replicate is therefore the unit (nested random effects, Kalibera & Jones, ISMM
    2013): each replicate's geometric-mean ratio is one observation, and the interval is Student's t over
    the replicates' log ratios. `p_value` is that t-test's two-sided p-value of "no change"."""
    logs = [np.log([p["a_s"] / p["b_s"] for p in rep]) for rep in replicates if len(rep)]
    means = np.array([x.mean() for x in logs])
    if means.size < 2:
        return {"ratio": None, "ci_low": None, "ci_high": None, "significant": False, "replicates": 0}
    centre = float(means.mean())
    se = float(means.std(ddof=1) / np.sqrt(means.size))
    t = t_quantile(0.5 + confidence / 2, means.size - 1)
    p = t_two_sided_p(centre / se, means.size - 1) if se > 0 else float(centre == 0)
    lo, hi = np.exp(centre - t * se), np.exp(centre + t * se)
    pooled = np.concatenate(logs)
    return {
        "ratio": float(np.exp(centre)),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "confidence": confidence,
        "significant": bool(lo > 1.0 or hi < 1.0),
        "p_value": p,
        "replicates": int(means.size),
        "pairs": int(pooled.size),
        "replicate_ratios": [float(np.exp(m)) for m in means],
        "replicate_log_sd": float(means.std(ddof=1)),
        "pair_log_sd": float(pooled.std(ddof=1)) if pooled.size > 1 else None,
        "method": "geometric mean of per-pair ratios; Student-t interval over replicates (log scale)",
    }


def alpha_spent(t: float, alpha: float) -> float:
    """Lan & DeMets' Pocock-type spending function: the share of `alpha` spent by information fraction t
    (0..1). It spends early looks more generously than O'Brien-Fleming's, which suits a trial that stops as soon
    as a clear effect shows."""
    t = min(max(t, 0.0), 1.0)
    return alpha * math.log(1 + (math.e - 1) * t)


def look_levels(looks: list[int], n_max: int, confidence: float) -> list[float]:
    """The confidence level of each look's interval (looks: replicates at each look, increasing; n_max: the
    budget fixed in advance). Each look spends alpha(t_k) - alpha(t_k-1); by the union bound every look's
    interval holds at once with probability >= `confidence`, whatever rule stops the trial (group-sequential
    alpha spending, Lan & DeMets 1983, made conservative by Bonferroni instead of the joint distribution)."""
    alpha = 1 - confidence
    spent, levels = 0.0, []
    for n in looks:
        now = alpha_spent(n / n_max, alpha)
        levels.append(1 - max(now - spent, 1e-12))
        spent = now
    return levels


def sequential_speedup(
    replicates: list[list[dict]], looks: list[int], n_max: int, *, confidence: float = 0.95
) -> dict:
    """paired_speedup of the replicates at the last look, at that look's spent level (look_levels), with the
    trial's looks and its minimum detectable effect: the smallest speedup (as a ratio) whose interval at this
    sample would have excluded 1.0. `replicates` are in the order they were run; `looks` the count at each look."""
    if not looks or looks[-1] != len(replicates):
        looks = [*(looks or []), len(replicates)] if not looks or looks[-1] < len(replicates) else looks
    level = look_levels(looks, max(n_max, looks[-1]), confidence)[-1]
    sp = paired_speedup(replicates, confidence=level)
    if sp.get("ratio") is not None:
        half = math.log(sp["ci_high"] / sp["ratio"])
        sp["mde_ratio"] = math.exp(half)
    sp["sequential"] = {
        "looks": len(looks),
        "replicates_at_look": list(looks),
        "max_replicates": n_max,
        "overall_confidence": confidence,
        "look_confidence": level,
        "spending": "Lan-DeMets Pocock-type alpha spending over the replicate budget; union bound over looks",
    }
    return sp


def block_bootstrap_ratio_ci(
    baseline: np.ndarray | list[float],
    variant: np.ndarray | list[float],
    *,
    block: int | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """median(baseline) / median(variant) with a moving-block bootstrap CI: neighbouring steps are correlated
    (machine drift, the other actor's phase), so blocks of ~sqrt(n) consecutive steps are resampled together
    rather than single steps as if they were independent."""
    b = np.asarray(baseline, dtype=float)
    v = np.asarray(variant, dtype=float)
    if b.size < 4 or v.size < 4:
        return {"ratio": None, "ci_low": None, "ci_high": None, "significant": False, "n_boot": 0}
    rng = np.random.default_rng(seed)

    def resample(x: np.ndarray) -> np.ndarray:
        return np.median(x[_block_indices(rng, x.size, n_boot, block)], axis=1)

    boots = resample(b) / resample(v)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return {
        "ratio": float(np.median(b) / np.median(v)),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "confidence": confidence,
        "significant": bool(lo > 1.0 or hi < 1.0),
        # two-sided bootstrap p-value of "ratio 1", floored at the resolution n_boot allows
        "p_value": max(1.0 / n_boot, min(1.0, 2 * min(np.mean(boots <= 1.0), np.mean(boots >= 1.0)))),
        "n_boot": n_boot,
        "method": "moving-block bootstrap",
    }


def round_paired_ratio_ci(
    a: pd.DataFrame, b: pd.DataFrame, column: str, *, strata: str = "round", confidence: float = 0.95
) -> dict:
    """b / a for `column`: the geometric mean over the interleaved rounds of 2c of each round's ratio of medians
    (with fewer than 2 rounds, the ratio of the pooled medians, and no interval), and an interval: in each round
    both models took their turn (in random order) moments apart, so each round gives one paired ratio of
    medians, and Student's t over the rounds' log ratios gives the interval. Requests of one round share the
    machine's moment and are not independent: resampling requests would be over-confident."""
    xa, xb = a[[column, strata]].dropna(), b[[column, strata]].dropna()
    return round_paired_stat_ci(
        xa, xb, lambda g: float(np.median(g[column])), strata=strata, confidence=confidence, what="medians"
    )


def round_paired_stat_ci(
    a: pd.DataFrame,
    b: pd.DataFrame,
    stat,
    *,
    strata: str = "round",
    confidence: float = 0.95,
    what: str = "statistics",
) -> dict:
    """round_paired_ratio_ci for any per-round statistic `stat(frame) -> float` (a median, a p99, output tokens
    per second of the round's window, the share of requests meeting the SLO): stat(b) / stat(a) per round, the
    geometric mean over rounds and Student's t over their log ratios."""
    out = {"ratio": None, "ci_low": None, "ci_high": None, "significant": False, "rounds": 0}
    if len(a) < 1 or len(b) < 1:
        return out
    pa, pb = stat(a), stat(b)
    out["ratio"] = out["pooled_ratio"] = float(pb / pa) if pa else None
    ma = pd.Series({k: stat(g) for k, g in a.groupby(strata)}, dtype=float)
    mb = pd.Series({k: stat(g) for k, g in b.groupby(strata)}, dtype=float)
    both = ma.index.intersection(mb.index)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log((mb[both] / ma[both]).to_numpy(dtype=float))
    logs = logs[np.isfinite(logs)]
    out["rounds"] = int(logs.size)
    if logs.size < 2:
        return out  # one round: a ratio without an interval, never called a difference
    se = float(logs.std(ddof=1) / np.sqrt(logs.size))
    t = t_quantile(0.5 + confidence / 2, logs.size - 1)
    centre = float(logs.mean())
    lo, hi = np.exp(centre - t * se), np.exp(centre + t * se)
    out.update(
        ratio=float(np.exp(centre)),  # the interval's own centre: the geometric mean of the rounds' ratios
        ci_low=float(lo),
        ci_high=float(hi),
        confidence=confidence,
        significant=bool(lo > 1.0 or hi < 1.0),
        p_value=t_two_sided_p(centre / se, logs.size - 1) if se > 0 else float(centre == 0),
        # the smallest ratio this many rounds could tell from 1.0 (the interval's half-width, as a ratio)
        mde_ratio=float(np.exp(t * se)),
        method=f"Student-t over rounds of per-round ratios of {what} (log scale)",
    )
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def pct_change_abs(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or not math.isfinite(a) or not math.isfinite(b):
        return None
    return abs(a - b) / abs(b) * 100.0


def holm(p_values: list[float], alpha: float = 0.05) -> list[bool]:
    """Holm-Bonferroni: which of the hypotheses to reject with the family-wise error held at `alpha`."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    reject = [False] * len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (len(p_values) - rank):
            break
        reject[i] = True
    return reject
