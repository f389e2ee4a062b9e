"""report.md's inference sections: the headline figures against their targets (pass/fail from the decision's
gates), latency percentiles, load levels, Serve + HTTP overhead, scaling, memory and compression. They read the
typed report."""

from __future__ import annotations

from tabulate import tabulate

from phase2_ray.report.ascii import bar, fit, fmt
from phase2_ray.report.schema import Report
from phase2_ray.report.schema.common import Percentiles
from phase2_ray.report.schema.decision import Gate
from phase2_ray.report.schema.inference import ModelInference
from phase2_ray.report.schema.serving import Capacity, CapacityLevel, Compression, Overhead

TARGET_ROWS = (
    # title, gate, inference key, percentile, unit, targets key, bound
    ("TTFT p50", "ttft_p50_ms", "ttft_ms", "p50", "ms", "ttft_p50_ms_max", "max"),
    (
        "Output throughput",
        "output_tokens_per_s",
        "output_tokens_per_s",
        None,
        "tok/s",
        "output_tokens_per_s_min",
        "min",
    ),
    (
        "Peak replica memory (RSS)",
        "replica_peak_memory_mb",  # one gate, on the replica that holds every model (variant "replica")
        "peak_memory_mb",
        None,
        "MB",
        "peak_memory_mb_max",
        "max",
    ),
)
LEVEL_HEADERS = [
    "model",
    "level",
    "TTFT p50",
    "TTFT p99",
    "TPOT p50",
    "ITL p99",
    "E2E p50",
    "out tok/s",
    "req/s",
    "goodput %",
    "ok",
]
OVERHEAD_HEADERS = [
    "model",
    "HTTP level",
    "TTFT p50 in-proc",
    "TTFT p50 HTTP",
    "overhead ms",
    "TPOT p50 in-proc",
    "TPOT p50 HTTP",
    "overhead ms/token",
]
MEMORY_HEADERS = ["model", "replica peak RSS MB", "RSS now MB", "USS MB", "weight bytes", "KV-cache bytes"]


def inference_vs_targets(rep: Report) -> str:
    inf = rep.inference
    if not inf:
        return "## Inference Performance vs Targets\n\nStage 2c did not run: nothing measured.\n"
    lines = []
    for row in TARGET_ROWS:
        lines += _target_bars(rep, row)
    lat = []
    for v, i in inf.items():
        for m in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            d = getattr(i, m) or Percentiles()
            lat.append([v, m, fmt(d.p50), fmt(d.p90), fmt(d.p99), fmt(d.mean), d.n])
    succ = "\n".join(
        f"  {v}: {i.succeeded}/{i.requests} ({(i.success_rate or 0) * 100:.1f}%)" for v, i in inf.items()
    )
    return (
        "## Inference Performance vs Targets\n\n```\n"
        # The bars' labels carry the measured figures, whose width varies with the machine: wrap, never overflow.
        + "\n".join(fit(lines))
        + f"Success rate:\n{succ}\n```\n\nLatency percentiles (ms; TTFT and ITL measured at the client over HTTP):\n\n"
        + tabulate(lat, headers=["variant", "metric", "p50", "p90", "p99", "mean", "n"], tablefmt="github")
        + "\n"
    )


def _figure(i: ModelInference, key: str, sub: str | None) -> float | None:
    """A model's figure `key` (a number, or with `sub` a percentile of a distribution)."""
    x = getattr(i, key)
    return (getattr(x, sub) if x else None) if sub else x


def _gate(rep: Report, name: str, variant: str) -> Gate | None:
    return next((g for g in rep.decision.gates if g.name == name and g.variant == variant), None)


def _target_bars(rep: Report, row: tuple) -> list[str]:
    """One figure of every model as a bar beside its target's, each marked by its gate's verdict."""
    title, gate, key, sub, unit, target_key, kind = row
    inf, target = rep.inference, rep.config["targets"][target_key]  # the stored config: open JSON
    w = max(12, *(len(v) + 1 for v in inf))
    vals = {v: _figure(i, key, sub) for v, i in inf.items()}
    scale = max([target] + [x for x in vals.values() if x is not None])
    lines = [
        f"{title} (target: {'≤' if kind == 'max' else '≥'} {target:g} {unit})",
        f"  {'target':<{w}} {bar(target, scale, 40, '█'):<40} {target:g} {unit}",
    ]
    elsewhere = {m for m, e in rep.serving.endpoints.items() if e.kind == "external"}
    for v, x in vals.items():
        if x is None:
            lines.append(
                f"  {v:<{w}} "
                + ("not measured here (served elsewhere)" if v in elsewhere else "not measured")
            )
            continue
        head = (target / x if kind == "max" else x / target) if x else float("inf")
        g = _gate(rep, gate, v) or _gate(rep, gate, "replica")  # the replica's one memory gate
        side = {"pass": "within", "fail": "MISSES"}.get(g.verdict if g else "fail", "UNDECIDED")
        lines.append(
            f"  {v:<{w}} {bar(x, scale, 40):<40} {fmt(x, 2)} {unit} ({side}; "
            f"{'target/value' if kind == 'max' else 'value/target'} {head:.2f})"
        )
    return lines + [""]


def serving_section(rep: Report) -> str:
    inf, sv = rep.inference, rep.serving
    if not inf:
        return ""
    out = [
        "## Serving: Load Levels, Overhead, Scaling, Compression\n",
        "Closed-loop levels (cN = N requests in flight), measured at the client over HTTP; warm-up excluded. "
        "Output tok/s = all output tokens of successful requests / the level's wall window. Goodput = requests "
        "meeting both SLOs (TTFT ≤ the TTFT target, TPOT ≤ 1000 / the tok/s target), as vLLM's benchmark counts.\n",
        tabulate(_level_rows(inf), headers=LEVEL_HEADERS, tablefmt="github"),
    ]
    wl = sv.workload
    if wl:
        out.append(
            f"\nWorkload: {wl.source}; {wl.requests} distinct requests (request i sends number i mod "
            f"{wl.requests}), max_tokens {wl.max_tokens['min']:g}-{wl.max_tokens['max']:g}"
            + (f"; {wl.truncated_prompts} prompt(s) cut to fit the context" if wl.truncated_prompts else "")
            + "."
        )
    if sv.concurrency_scaling:
        out.append("\nAggregate throughput from the first to the last level (batching at work):\n")
        out += [
            f"- {m}: {fmt(c.output_tokens_per_s_to, 0)} tok/s at {c.to} / {fmt(c.output_tokens_per_s_from, 0)}"
            f" at {c.from_} = **{fmt(c.ratio)}x**"
            for m, c in sv.concurrency_scaling.items()
        ]
    out += _overhead(sv.overhead)
    rsc = sv.replica_scaling
    if rsc:
        out.append(f"\nReplica scaling ({rsc.model}, {rsc.concurrency} requests in flight):\n")
        out += [
            f"- {x.replicas} replica(s): {fmt(x.output_tokens_per_s, 0)} tok/s, {fmt(x.requests_per_s, 1)} "
            f"req/s, {x.requests and round((x.success_rate or 0) * x.requests)}/{x.requests} ok, peak RSS "
            f"{', '.join(fmt(p, 0) for p in x.peak_rss_mb)} MB"
            for x in rsc.runs
        ]
        out.append(f"- ratio: **{fmt(rsc.ratio)}x** ({rsc.ratio_basis})")
    out += _capacity(sv.capacity)
    out.append("\nMemory (one replica holds every model; MB = 2^20 bytes):\n")
    out.append(tabulate(_memory_rows(inf), headers=MEMORY_HEADERS, tablefmt="github"))
    if sv.compression:
        out.append(_compression(sv.compression))
    return "\n".join(out) + "\n"


def _level_rows(inf: dict[str, ModelInference]) -> list[list]:
    def q(x: Percentiles | None, which: str = "p50") -> float | None:
        return getattr(x, which) if x else None

    return [
        [
            m,
            lv,
            fmt(q(s.ttft_ms)),
            fmt(q(s.ttft_ms, "p99")),
            fmt(q(s.tpot_ms)),
            fmt(q(s.itl_ms, "p99")),
            fmt(q(s.e2e_ms)),
            fmt(s.output_tokens_per_s, 0),
            fmt(s.requests_per_s, 1),
            fmt(((s.goodput.fraction if s.goodput else None) or 0) * 100, 1),
            f"{s.succeeded}/{s.requests}",
        ]
        for m, i in inf.items()
        for lv, s in i.levels.items()
    ]


def _overhead(ov: dict[str, Overhead]) -> list[str]:
    if not any(o.ttft_p50_ms_inprocess is not None for o in ov.values()):
        return []
    rows = [
        [
            m,
            o.level,
            fmt(o.ttft_p50_ms_inprocess),
            fmt(o.ttft_p50_ms_http),
            fmt(o.ttft_p50_overhead_ms),
            fmt(o.tpot_p50_ms_inprocess, 3),
            fmt(o.tpot_p50_ms_http, 3),
            fmt(o.tpot_p50_overhead_ms, 3),
        ]
        for m, o in ov.items()
    ]
    return [
        "\nServe + HTTP overhead: the same prompts and sampling through the same engine in-process (no Serve, "
        "no HTTP), one at a time, against the HTTP level above:\n",
        tabulate(rows, headers=OVERHEAD_HEADERS, tablefmt="github"),
    ]


def _memory_rows(inf: dict[str, ModelInference]) -> list[list]:
    return [
        [
            m,
            fmt(i.peak_memory_mb, 1),
            fmt(i.rss_mb, 1),
            fmt(i.uss_mb, 1),
            fmt(i.model_bytes.weights if i.model_bytes else None, 0),
            fmt(i.model_bytes.kv_cache if i.model_bytes else None, 0),
        ]
        for m, i in inf.items()
    ]


def _compression(comp: Compression) -> str:
    sp = comp.inprocess_request_tokens_per_s_p50
    return (
        f"\nCompression ({comp.method}, kernel {comp.kernel or 'n/a'}): val loss {fmt(comp.val_loss_source, 4)} → "
        f"{fmt(comp.val_loss_int8, 4)} ({comp.val_loss_delta_pct:+.3f}%, gate ≤ {comp.threshold_pct:g}%); "
        f"weights {fmt(comp.weight_bytes_source, 0)} → {fmt(comp.weight_bytes_int8, 0)} bytes "
        f"({fmt(comp.weight_bytes_ratio, 3)}x); in-process decode p50 {fmt(sp.get(comp.source), 0)} → "
        f"{fmt(sp.get(comp.model), 0)} tok/s per request."
    )


CAPACITY_HEADERS = [
    "model",
    "replicas",
    "capacity req/s",
    "95% CI",
    "efficiency",
    "levels",
    "search s",
    "stopped",
]
LEVEL_CAP_HEADERS = [
    "offered",
    "drawn/s",
    "sent/s",
    "goodput %",
    "TTFT p50",
    "TTFT p99",
    "TPOT p99",
    "gen CPU ms/req",
    "note",
]


def _capacity(cap: Capacity | None) -> list[str]:
    """How much traffic it can take: the highest offered Poisson rate at which enough requests met the SLO."""
    if not cap or not cap.runs:
        return []
    eff = {(m, x.replicas): x.efficiency for m, xs in cap.scaling.items() for x in xs}
    rows = [
        [
            r.model,
            r.replicas,
            ("≥ " if r.censored else "") + fmt(r.capacity_rps, 1),
            f"[{fmt(r.ci_low, 1)}, {fmt(r.ci_high, 1)}]",
            fmt(eff.get((r.model, r.replicas))),
            len(r.levels),
            fmt(r.search_s, 0),
            r.stop_reason or "",
        ]
        for r in cap.runs
    ]
    cv = next((r.between_run_cv_pct for r in cap.runs if r.between_run_cv_pct), None)
    out = [
        "\nCapacity under the SLO: open-loop Poisson arrivals at rising offered rates, bisected to the highest rate "
        f"at which ≥ {cap.goodput_min * 100:g}% of requests have TTFT ≤ {fmt(cap.slo.ttft_ms, 0)} ms (from their "
        f"scheduled arrival) and TPOT ≤ {fmt(cap.slo.tpot_ms, 0)} ms. Efficiency = capacity at N replicas / "
        "(N × capacity at the first count). Each capacity is the geometric mean of replicated searches (own seed "
        "each, the models taking turns), its interval over their estimates: what varies between searches, not one "
        "search's levels alone"
        + (
            f", plus the run-to-run spread that searches inside one run cannot see ({cv:g}%, "
            "validation.capacity.between_run_cv_pct)"
            if cv
            else ""
        )
        + ". A single search's interval runs from its highest level whose goodput passes beyond its own interval "
        "(batch means) to the lowest that fails beyond it.\n",
        tabulate(rows, headers=CAPACITY_HEADERS, tablefmt="github"),
    ]
    if cap.bound:
        out.append(f"\nWhat bounds the scaling here: {cap.bound}.")
    for r in cap.runs:
        est = ", ".join(fmt(x, 1) for x in r.replicate_estimates)
        out.append(
            f"\nLevels of {r.model} with {r.replicas} replica(s), in the order tried"
            + (f" (searches' estimates: {est} req/s)" if est else "")
            + ":\n"
        )
        out.append(
            tabulate([_cap_level_row(lv) for lv in r.levels], headers=LEVEL_CAP_HEADERS, tablefmt="github")
        )
    return out


def _cap_level_row(lv: CapacityLevel) -> list:
    lat = lv.latency
    note = []
    if lv.confirm:
        note.append("confirmation")
    if lv.saturated:
        note.append("queue grew")
    if lv.stopped_early:
        note.append("stopped: in-flight cap")
    if not lv.valid:
        note.append("invalid: generator behind")
    return [
        fmt(lv.offered_rps, 1),
        fmt(lv.scheduled_rps, 1),
        fmt(lv.achieved_rps, 1),
        fmt((lv.goodput_frac or 0) * 100, 0),
        fmt(lat.ttft_p50_ms if lat else None, 1),
        fmt(lat.ttft_p99_ms if lat else None, 1),
        fmt(lat.tpot_p99_ms if lat else None, 1),
        fmt(lv.client_cpu_ms_per_request, 2),
        ", ".join(note),
    ]


def endpoints_section(rep: Report) -> str:
    """Each model's endpoint (this run's Serve deployment or a server elsewhere), whether it failed, and how its
    output tokens were counted and checked."""
    eps = rep.serving.endpoints
    if not any(e.kind == "external" for e in eps.values()):
        return ""
    rows = []
    for m, e in eps.items():
        t = e.tokens
        rate = t.mismatch_rate if t else None
        rows.append(
            [
                m,
                "this run (Ray Serve)" if e.kind == "self" else e.url,
                e.model or m,
                e.api,
                t.output_tokens_from if t else "n/a",
                "no tokenizer"
                if rate is None
                else f"{rate * 100:.1f}% (mean abs diff {t.mean_abs_diff:.2f})",
                fmt(t.prompt_tokens_usage_mean if t else None, 1),
                f"FAILED: {e.failure}" if e.failure else "ok",
            ]
        )
    headers = [
        "endpoint",
        "served by",
        "model",
        "API",
        "output tokens from",
        "re-tokenized ≠ usage",
        "prompt tokens (usage)",
        "status",
    ]
    return (
        "## Endpoints\n\nEvery endpoint got the same prompts, seeds and arrivals, in interleaved rounds. Output "
        "tokens are the server's own `usage.completion_tokens`. Each answer's text is re-tokenized with the "
        "endpoint's tokenizer and the share of answers whose count differs is shown: under sampling a token "
        "sequence need not be its text's canonical encoding, so compare the rate across endpoints with the same "
        "tokenizer; a far higher one says a wrong tokenizer or wrong usage counts.\n\n"
        + tabulate(rows, headers=headers, tablefmt="github")
        + "\n"
    )
