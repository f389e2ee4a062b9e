"""report.json's `inference` and `serving` sections from stage 2c's raw results: the load clients' request
records, the Serve replicas' stats, the in-process reference, the replica sweep and the int8 copy."""

from __future__ import annotations

from dataclasses import fields
from typing import NamedTuple

import numpy as np
import pandas as pd

from phase2_ray.records import RequestRecord
from phase2_ray.report.capacity import summarize_capacity
from phase2_ray.report.request_metrics import meets_slo
from phase2_ray.report.stats import (
    look_levels,
    ratio,
    round_paired_ratio_ci,
    round_paired_stat_ci,
    summarize_requests,
    with_per_request,
)

REQUEST_COLUMNS = [f.name for f in fields(RequestRecord)]
"""requests.csv's columns: a RequestRecord's fields (its load level and interleaved round among them)."""
LIST_COLUMNS = tuple(f.name for f in fields(RequestRecord) if f.default_factory is list)


class Headline(NamedTuple):
    name: str
    unit: str
    better: str


SERVING_HEADLINE = {
    "ttft_ms": Headline("TTFT p50", "ms", "lower"),
    "tpot_ms": Headline("TPOT p50", "ms", "lower"),
    "e2e_ms": Headline("E2E p50", "ms", "lower"),
    "rate": Headline("decode tok/s p50", "tok/s", "higher"),
}
"""The per-request serving metrics (columns of stats.with_per_request) compared between models: in a run, each
model / the baseline model with a CI (`serving.vs_baseline`); between two runs by `phase2 compare`."""

ROUND_STATS = {
    "ttft_p99_ms": Headline("TTFT p99", "ms", "lower"),
    "output_tps": Headline("output tok/s", "tok/s", "higher"),
    "goodput": Headline("goodput", "share", "higher"),
}
"""Serving ratios whose statistic is of a round as a whole (a tail, a rate over the round's window, a share of its
requests): each model / the baseline model in `serving.vs_baseline`, paired by round as the medians are."""
RATIO_HEADLINES = {**SERVING_HEADLINE, **ROUND_STATS}


def request_frame(records: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(records, columns=REQUEST_COLUMNS)
    df["warmup"] = df["warmup"].astype("boolean").fillna(False).astype(bool)
    for col in LIST_COLUMNS:
        df[col] = df[col].apply(lambda x: x if isinstance(x, list) else [])
    return df


SERVING_CONFIDENCE = 0.95
"""Confidence of the serving ratios' intervals, held over the headline level's looks (alpha spending)."""


def serving_vs_baseline(
    req: pd.DataFrame,
    models: list[str],
    level: str | None,
    looks: list[int] | None = None,
    max_rounds: int | None = None,
    slo: dict | None = None,
) -> dict:
    """{model: {metric: ratio-with-CI}} of every model against the baseline model at `level`: medians of the
    successful measured requests, TTFT p99, output tok/s of each round's window and (with `slo`) goodput, each
    paired by interleaved round (stats.round_paired_stat_ci). With `looks` (rounds at each look of a sequential
    headline level) the interval is at the last look's spent level."""
    confidence = SERVING_CONFIDENCE
    if looks and max_rounds:
        confidence = look_levels(looks, max(max_rounds, looks[-1]), SERVING_CONFIDENCE)[-1]
    if "baseline" not in models or level is None:
        return {}
    measured = req[~req["warmup"] & (req["level"] == level)]
    ok = with_per_request(measured[measured["ok"].astype(bool)])
    base = ok[ok["variant"] == "baseline"]
    stats = {
        "ttft_p99_ms": (ok, lambda g: float(np.percentile(g["ttft_ms"].dropna(), 99)), "p99s"),
        "output_tps": (ok, _output_tps, "output tok/s of the round's window"),
    }
    if slo is not None:
        good = measured.assign(
            good=[meets_slo(r, slo["ttft_ms"], slo["tpot_ms"]) for r in measured.to_dict("records")]
        )
        stats["goodput"] = (good, lambda g: float(g["good"].mean()), "goodput shares")
    out = {}
    for m in models:
        if m == "baseline":
            continue
        mine = ok[ok["variant"] == m]
        ratios = {k: round_paired_ratio_ci(base, mine, k, confidence=confidence) for k in SERVING_HEADLINE}
        for k, (frame, stat, what) in stats.items():
            ratios[k] = round_paired_stat_ci(
                frame[frame["variant"] == "baseline"],
                frame[frame["variant"] == m],
                stat,
                confidence=confidence,
                what=what,
            )
        out[m] = {
            k: {**r, "metric": RATIO_HEADLINES[k].name, "level": level, "looks": len(looks or [1])}
            for k, r in ratios.items()
        }
    return out


def goodput_slo(targets) -> dict:
    """Goodput's SLO from the targets: TTFT within the TTFT target, and a per-request pace (TPOT) at least as
    fast as the throughput target asks of one stream."""
    return {
        "ttft_ms": targets.ttft_p50_ms_max,
        "tpot_ms": 1000.0 / max(targets.output_tokens_per_s_min, 1e-9),
    }


def _output_tps(g: pd.DataFrame) -> float:
    """Output tokens of a round's successful requests per second of the round's window."""
    span = float(g["end"].max() - g["start"].min())
    return float(g["output_tokens"].sum()) / span if span > 0 else float("nan")


def summarize_inference(validation: dict, targets) -> tuple[dict, dict]:
    """(`inference` per model id, `serving` cross-model results) from 2c's raw records and replica stats."""
    if not validation:
        return {}, {}
    req = request_frame(validation["records"])
    levels = validation.get("levels", [])
    slo = goodput_slo(targets)
    inf = {m: _model_summary(m, req, validation, slo) for m in validation["models"]}
    serving: dict = {
        "vs_baseline": serving_vs_baseline(
            req,
            list(validation["models"]),
            levels[0] if levels else None,
            validation.get("headline_looks"),
            validation.get("headline_max_rounds"),
            slo,
        ),
        "schedule": validation.get("schedule", []),
        # the headline level's rounds at each look (more were run while a serving ratio was undecided)
        "headline_rounds": {
            "looks": validation.get("headline_looks"),
            "max_rounds": validation.get("headline_max_rounds"),
        },
        "overhead": {m: _overhead(s) for m, s in inf.items()},
        "concurrency_scaling": {m: _concurrency_scaling(s, levels) for m, s in inf.items()}
        if len(levels) > 1
        else {},
        # where each replica ran (node ids): provenance for multi-node runs
        "replicas": [
            {k: r.get(k) for k in ("replica_id", "node_id", "pid", "device", "checkpoint_sources")}
            for r in validation.get("replicas", [])
        ],
    }
    sc = validation.get("scaling") or {}
    if sc.get("runs"):
        serving["replica_scaling"] = _replica_scaling(req, sc, validation.get("scaling_concurrency"))
    if validation.get("endpoints"):  # each model's endpoint (self / external), failure and token accounting
        serving["endpoints"] = validation["endpoints"]
    if validation.get("workload"):
        serving["workload"] = validation["workload"]
    if validation.get("capacity"):
        serving["capacity"] = summarize_capacity(validation["capacity"])
    src = validation.get("int8_of")
    if src and src + "-int8" in inf and "val_loss" in inf[src + "-int8"]:
        serving["compression"] = _compression(inf, src, targets.int8_val_loss_delta_pct_max)
    copies = {
        m: _copy(inf, m, s, (validation.get("served_converters") or {}).get(m, []))
        for m, s in (validation.get("copies") or {}).items()
        if m in inf and s in inf and "val_loss" in inf[m] and "val_loss" in inf[s]
    }
    if copies:
        serving["copies"] = copies
    return inf, serving


def _copy(inf: dict, m: str, src: str, converters: list[dict]) -> dict:
    """A served copy (a trained checkpoint through serve converters) against its source: quality and size."""
    a, b = inf[src], inf[m]
    return {
        "model": m,
        "source": src,
        "converters": [
            {k: c.get(k) for k in ("name", "args", "source", "changes_numerics")} for c in converters
        ],
        "changes_numerics": any(c.get("changes_numerics", True) for c in converters),
        "val_loss_source": a["val_loss"],
        "val_loss_copy": b["val_loss"],
        "val_loss_delta_pct": (b["val_loss"] - a["val_loss"]) / a["val_loss"] * 100.0,
        "weight_bytes_source": a["weight_bytes"],
        "weight_bytes_copy": b["weight_bytes"],
        "weight_bytes_ratio": ratio(b["weight_bytes"], a["weight_bytes"]),
    }


def _model_summary(m: str, req: pd.DataFrame, validation: dict, slo: dict) -> dict:
    """One model's `inference` entry. Its headline figures are those of the first load level (concurrency 1 by
    default: what one user sees); its success rate counts every request of every level; `levels` holds each
    level's summary."""
    levels = validation.get("levels", [])
    everything = req[req["variant"] == m]
    mine = everything[everything["level"].isin(levels) & ~everything["warmup"]]
    per_level = {lv: summarize_requests(mine[mine["level"] == lv], slo) for lv in levels}
    # Every request this model was sent counts in its success rate: warm-ups and the replica sweep too.
    whole = summarize_requests(everything)
    s = dict(per_level[levels[0]]) if levels else dict(whole)
    s.update({k: whole[k] for k in ("requests", "succeeded", "success_rate", "errors")})
    s["requests_by_kind"] = {
        "measured": int(len(mine)),
        "warmup": int(everything["warmup"].sum()),
        "replica_sweep": int((everything["level"].str.startswith("replicas") & ~everything["warmup"]).sum()),
    }
    s["headline_level"] = levels[0] if levels else None
    s["levels"] = per_level
    ref = (validation.get("reference") or {}).get(m)
    elsewhere = ((validation.get("endpoints") or {}).get(m) or {}).get("kind") == "external"
    if validation.get("replicas") and not elsewhere:  # this run's replicas hold only its own models
        s.update(_memory(m, validation["replicas"], (ref or {}).get("activation_bytes")))
    if ref:
        s.update(_inprocess(ref))
    return s


def _memory(m: str, replicas: list[dict], activation_bytes: int | None = None) -> dict:
    """Model `m`'s memory figures from the replicas' stats (every replica holds every served model), with its
    activation peak as the in-process reference measured it (the same engine, model and batch)."""
    out = {
        "peak_memory_mb": max(r["peak_rss_mb"] for r in replicas),
        "rss_mb": max(r["rss_mb"] for r in replicas),
        "uss_mb": max(r["uss_mb"] for r in replicas),
    }
    own = replicas[0]["models"].get(m, {})
    out["model_bytes"] = {
        "weights": own.get("weight_bytes"),
        "kv_cache": own.get("kv_cache_bytes"),
        "activations": activation_bytes,
    }
    if None not in out["model_bytes"].values():
        out["model_memory_mb"] = sum(out["model_bytes"].values()) / 2**20
    out["memory_basis"] = (
        "peak_memory_mb = peak RSS (ru_maxrss) of the replica process, the largest over replicas; the "
        "replica holds every served model. uss_mb = memory unique to that process now. model_bytes = "
        "this model's own weights (int8 kernels' packed matrices included), its preallocated KV cache, and the "
        "peak of the tensors a full-context prefill plus a full-batch decode step create (measured by the "
        "in-process reference on the same engine and batch); "
        "model_memory_mb is their sum."
    )
    cuda = [r["cuda_max_allocated_mb"] for r in replicas if r.get("cuda_max_allocated_mb") is not None]
    if cuda:
        # On a GPU the models live in device memory, and the host RSS is mostly the CUDA context.
        out["peak_rss_mb"] = out["peak_memory_mb"]
        out["peak_memory_mb"] = max(cuda)
        out["memory_basis"] = (
            "peak_memory_mb = torch.cuda.max_memory_allocated() of the replica (the models run on CUDA), "
            "the largest over replicas; peak_rss_mb = the replica process's host peak RSS. "
            "model_bytes = this model's own weights, preallocated KV cache and measured activation peak."
        )
    return out


def _inprocess(ref: dict) -> dict:
    """The same engine without Serve or HTTP (stage 2c's in-process reference): latencies, val loss, weights."""
    rs = summarize_requests(request_frame(ref["records"]).assign(ok=True)) if ref["records"] else {}
    return {
        "inprocess": {
            k: rs.get(k) for k in ("ttft_ms", "tpot_ms", "e2e_ms", "request_tokens_per_s", "requests")
        },
        "val_loss": ref["val_loss"],
        "weight_bytes": ref["weight_bytes"],
        "int8": ref.get("int8"),
    }


def _overhead(s: dict) -> dict:
    """What Serve + HTTP add to TTFT and TPOT p50 over the in-process reference, at the headline level."""
    ip = s.get("inprocess") or {}
    http_ttft, ip_ttft = (s.get("ttft_ms") or {}).get("p50"), (ip.get("ttft_ms") or {}).get("p50")
    http_tpot, ip_tpot = (s.get("tpot_ms") or {}).get("p50"), (ip.get("tpot_ms") or {}).get("p50")
    return {
        "level": s["headline_level"],
        "ttft_p50_ms_http": http_ttft,
        "ttft_p50_ms_inprocess": ip_ttft,
        "ttft_p50_overhead_ms": None if None in (http_ttft, ip_ttft) else http_ttft - ip_ttft,
        "tpot_p50_ms_http": http_tpot,
        "tpot_p50_ms_inprocess": ip_tpot,
        "tpot_p50_overhead_ms": None if None in (http_tpot, ip_tpot) else http_tpot - ip_tpot,
    }


def _concurrency_scaling(s: dict, levels: list[str]) -> dict:
    lo, hi = s["levels"][levels[0]], s["levels"][levels[-1]]
    return {
        "from": levels[0],
        "to": levels[-1],
        "output_tokens_per_s_from": lo.get("output_tokens_per_s"),
        "output_tokens_per_s_to": hi.get("output_tokens_per_s"),
        "ratio": ratio(hi.get("output_tokens_per_s"), lo.get("output_tokens_per_s")),
    }


def _replica_scaling(req: pd.DataFrame, sc: dict, concurrency: int | None) -> dict:
    """Throughput of one model as the replica sweep grew its deployment."""
    runs = []
    for run in sc["runs"]:
        rs = summarize_requests(
            req[(req["variant"] == sc["model"]) & (req["level"] == run["level"]) & ~req["warmup"]]
        )
        runs.append(
            {
                "replicas": run["replicas"],
                "level": run["level"],
                "output_tokens_per_s": rs.get("output_tokens_per_s"),
                "requests_per_s": rs.get("requests_per_s"),
                "success_rate": rs["success_rate"],
                "requests": rs["requests"],
                "peak_rss_mb": [x["peak_rss_mb"] for x in run["stats"]],
                # which replicas served: a sweep step adds replicas to the running ones (same version)
                "replica_ids": [x["replica_id"] for x in run["stats"]],
            }
        )
    return {
        "model": sc["model"],
        "concurrency": concurrency,
        "runs": runs,
        "ratio": ratio(runs[-1]["output_tokens_per_s"], runs[0]["output_tokens_per_s"]),
        "ratio_basis": f"output tok/s with {runs[-1]['replicas']} replicas / with {runs[0]['replicas']}",
    }


def _compression(inf: dict, src: str, threshold_pct: float) -> dict:
    """The int8 copy of model `src` against its source: quality, size, speed."""
    a, b = inf[src], inf[src + "-int8"]
    kernel = (b.get("int8") or {}).get("kernel")
    return {
        "method": "int8 weights, symmetric per output row (SemanticCompressor)",
        "kernel": kernel,
        "kernel_choice": b.get("int8"),
        "source": src,
        "model": src + "-int8",
        "val_loss_source": a["val_loss"],
        "val_loss_int8": b["val_loss"],
        "val_loss_delta_pct": (b["val_loss"] - a["val_loss"]) / a["val_loss"] * 100.0,
        "threshold_pct": threshold_pct,
        "weight_bytes_source": a["weight_bytes"],
        "weight_bytes_int8": b["weight_bytes"],
        "weight_bytes_ratio": ratio(b["weight_bytes"], a["weight_bytes"]),
        "inprocess_request_tokens_per_s_p50": {
            m: ((inf[m].get("inprocess") or {}).get("request_tokens_per_s") or {}).get("p50")
            for m in (src, src + "-int8")
        },
        "http_output_tokens_per_s": {m: inf[m].get("output_tokens_per_s") for m in (src, src + "-int8")},
    }
