"""report.md from the report dict alone: the header, the summary sections, and the order of every section.

Every figure is read from report.json (the summaries and the decision's gates); the sections of one topic live
in markdown_training, markdown_serving and markdown_decision."""

from __future__ import annotations

import textwrap

from tabulate import tabulate

from phase2_ray.report.ascii import WIDTH, fit, fmt
from phase2_ray.report.markdown_decision import (
    checklist,
    dashboard,
    gates_table,
    recommendation,
    run_timeline,
)
from phase2_ray.report.markdown_serving import endpoints_section, inference_vs_targets, serving_section
from phase2_ray.report.markdown_training import (
    loss_chart,
    mfu_cell,
    speed_explanation,
    speedup_breakdown,
    training_timeline,
)
from phase2_ray.report.schema import Report
from phase2_ray.report.schema.common import Percentiles, RatioCI
from phase2_ray.report.schema.decision import Decision
from phase2_ray.report.schema.serving import RoundRatio
from phase2_ray.report.schema.training import Comparison, TrainingSummary
from phase2_ray.report.serving import RATIO_HEADLINES, SERVING_HEADLINE
from phase2_ray.report.stats import ratio

CHART_TITLES = {
    "loss": "Loss curves: train loss per step, val loss as points",
    "step_times": "Step-time distribution (steady state)",
    "throughput": "Training throughput during the concurrent run, 95% block-bootstrap CI",
    "latency": "TTFT / TPOT percentiles per model and load level",
    "latency_cdf": "TTFT and inter-token latency CDFs per model",
    "capacity": "Latency vs offered load, with the SLO and the capacity found",
    "timeline": "Run timeline: stages and actors",
}


def render_markdown(rep: Report, plots: dict[str, str] | None = None) -> str:
    """report.md from the typed report (every section reads attributes, not string keys)."""
    parts = [
        _header(rep),
        _at_a_glance(rep),
        _failed_stages(rep),
        _charts(plots or {}),
        training_timeline(rep),
        speedup_breakdown(rep),
        loss_chart(rep),
        inference_vs_targets(rep),
        serving_section(rep),
        endpoints_section(rep),
        gates_table(rep),
        dashboard(rep),
        _comparative_table(rep),
        run_timeline(rep),
        checklist(rep),
        recommendation(rep),
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _failed_stages(rep: Report) -> str:
    """Each failed stage with why, and its traceback's last lines (a user's converter that raised: its frames)."""
    failed = [s for s in rep.stages if s.status == "failed"]
    if not failed:
        return ""
    out = ["## Failed Stages\n"]
    for s in failed:
        who = f" ({s.variant})" if s.variant else ""
        out.append(f"- **{s.name}{who}**: {s.detail.splitlines()[-1] if s.detail else 'failed'}")
        if s.traceback:
            tail = "\n".join(s.traceback.splitlines()[-30:])
            out.append(f"\n```\n{tail}\n```")
    return "\n".join(out) + "\n"


def _header(rep: Report) -> str:
    env = rep.environment  # open JSON: provenance keys differ by machine (GPU, cluster)
    return (
        f"# Phase 2 completion report — {rep.run_id}"
        + (" (INCOMPLETE)" if rep.incomplete else "")
        + "\n\n"
        + f"**Decision: {rep.decision.outcome.upper()}** "
        f"({_gate_counts(rep.decision)})"
        + (f" — {rep.failure}" if rep.failure else "")
        + "\n"
        + f"\nRun wall time {fmt(rep.wall_s, 1, ' s')} on {env.get('cpu_model', '?')} "
        f"({env.get('cpu_count')} CPUs), torch {env.get('torch')}, "
        f"ray {env.get('ray')}.{_placement_line(rep)}\n"
        + _init_line(rep)
        + _outside_line(rep)
        + "Every figure below is read from report.json in this directory.\n"
    )


def _gate_counts(dec: Decision) -> str:
    """How the deciding gates came out, and each candidate's outcome."""
    deciding = [g.verdict for g in dec.gates if g.deciding]
    counts = ", ".join(
        f"{deciding.count(v)} {v}" for v in ("pass", "fail", "inconclusive") if deciding.count(v)
    )
    cands = "; ".join(
        f"{m}: {c.outcome}" + ("" if c.role == "required" else " (informative)")
        for m, c in dec.candidates.items()
    )
    return f"gates: {counts or 'none'}" + (f"; {cands}" if cands else "")


def _outside_line(rep: Report) -> str:
    """Where the run went beyond this directory: Hugging Face exports and the MLflow run (or why not)."""
    out = ""
    if rep.exports is not None:
        hf = rep.exports.hf
        out += f"Hugging Face exports: {', '.join(f'{v} `{p}`' for v, p in hf.items()) or 'none'}.\n"
    t = rep.tracking
    if t and t.status == "logged":
        models = "".join(f"; model {m.name} ({m.model_id})" for m in t.models or [])
        out += f"MLflow: run {t.run_id} in experiment {t.experiment!r} at {t.uri}{models}.\n"
    elif t:
        out += f"MLflow: **not logged** ({t.status}: {t.detail or ''}); this report is complete.\n"
    return out


def _init_line(rep: Report) -> str:
    """What the variants started from when it was not a seeded init (model.init_from)."""
    init = rep.init_from
    if not init:
        return ""
    files = ", ".join(f"{name} sha256 {h[:12]}…" for name, h in sorted(init.sha256.items()))
    used = f", {init.positions_used} positions used" if init.positions_used else ""
    who = "Both variants started" if rep.training else "The self-served endpoints serve the weights"
    return f"{who} from `{init.path}` ({init.kind}: {files}{used}).\n"


def _placement_line(rep: Report) -> str:
    """One sentence on where things ran, only when the cluster had more than one node."""
    p = rep.placement
    if p is None or len(p.nodes) < 2:
        return ""
    short = {n.node_id: f"node{i}" + (" (head)" if n.is_head else "") for i, n in enumerate(p.nodes)}

    def names(ids: list[str]) -> str:
        return ", ".join(sorted({short.get(i, i[:8]) for i in ids})) or "n/a"

    train = "; ".join(f"{v} on {short.get(n, n[:8])}" for v, n in p.training.items())
    return (
        f"\nPlacement over {len(p.nodes)} nodes, policy {p.policy}"
        f" ({p.strategy or 'no placement group'}): {train}; Serve replicas on {names(p.replicas)}; "
        f"load clients on {names(p.load_clients)} (node ids in report.json `placement`)."
    )


def _charts(plots: dict[str, str]) -> str:
    if not plots:
        return ""
    # CHART_TITLES' order, whoever listed the charts (a redraw, or a re-render over the files already drawn)
    order = {k: i for i, k in enumerate(CHART_TITLES)}
    keys = sorted(plots, key=lambda k: (order.get(k, len(order)), k))
    return "## Charts\n\n" + "\n\n".join(f"![{CHART_TITLES.get(k, k)}]({plots[k]})" for k in keys) + "\n"


def _at_a_glance(rep: Report) -> str:
    """The few lines a reader needs first: training, inference and architecture health, with intervals."""
    lines = _glance_training(rep) + _glance_inference(rep) + _glance_health(rep)
    return "## Key Metrics at a Glance\n\n```\n" + "\n".join(fit(lines)) + "\n```\n"


def _glance_training(rep: Report) -> list[str]:
    tr = rep.training
    if not tr and not rep.comparison and rep.serving.endpoints:
        return []  # phase2 validate: endpoints only
    lines = ["Training"]
    for v, c in rep.comparison.items():
        sp = c.speedup
        lines.append(
            f"  speedup {v} vs baseline: {fmt(sp.ratio, 3, 'x')} [{fmt(sp.ci_low, 3)}, {fmt(sp.ci_high, 3)}] "
            + ("(paired trial)" if "speed_trial" in c.model_fields_set else "(concurrent-run median ratio)")
        )
        lines += textwrap.wrap(
            speed_explanation(rep, v), WIDTH - 4, initial_indent="    ", subsequent_indent="    "
        )
        ci = c.val_loss_change_ci
        change = (
            f"Δ {fmt(c.val_loss_change_pct, 3, '%')} [{fmt(ci[0], 3)}, {fmt(ci[1], 3)}] over the val windows"
            if ci
            else f"|Δ| {fmt(c.val_loss_delta_pct, 3, '%')}"
        )
        lines.append(
            f"  convergence: val loss {fmt(tr['baseline'].val_loss, 4)} → {fmt(tr[v].val_loss, 4)}, "
            f"{change} (tolerance {fmt(c.val_loss_tolerance_pct, 2, '%')})"
        )
    lines += [
        f"  {v}: {fmt(t.tokens_per_s, 0, ' tok/s')} (median step, concurrent run), "
        f"MFU {mfu_cell(t.mfu.value if t.mfu else None)}, {t.params:,} params, {t.status}"
        for v, t in tr.items()
    ]
    return lines


def _p50(x: Percentiles | None) -> float | None:
    return x.p50 if x else None


def _glance_inference(rep: Report) -> list[str]:
    inf = rep.inference
    lines = ["Inference" + (f" (level {next(iter(inf.values())).headline_level})" if inf else "")]
    if not inf:
        lines.append("  not measured: stage 2c did not run")
    for m, i in inf.items():
        lines.append(
            f"  {m}: TTFT p50 {fmt(_p50(i.ttft_ms), 1, ' ms')}, ITL p50 {fmt(_p50(i.itl_ms), 2, ' ms')}/token, "
            f"{fmt(i.output_tokens_per_s, 0, ' tok/s')}, {i.succeeded}/{i.requests} ok"
        )
    for m, ratios in rep.serving.vs_baseline.items():
        t = ratios.get("ttft_ms")
        lines.append(
            f"  {m} ÷ baseline TTFT p50: {fmt(t and t.ratio, 3)} [{fmt(t and t.ci_low, 3)}, "
            f"{fmt(t and t.ci_high, 3)}] — {_ci_cell(t, SERVING_HEADLINE['ttft_ms'].better)[2]}"
        )
    return lines


def _glance_health(rep: Report) -> list[str]:
    inf = rep.inference
    failed = [s.name for s in rep.stages if s.status not in ("ok", "skipped", "running")]
    lines = [
        "Architecture health",
        f"  stages: {len(rep.stages)} run, " + (f"FAILED: {', '.join(failed)}" if failed else "all ok"),
    ]
    eps = rep.serving.endpoints
    own = {m: i for m, i in inf.items() if m not in eps or eps[m].kind != "external"}
    if own:
        first = next(iter(own.values()))
        lines.append(f"  replica peak RSS {fmt(first.peak_memory_mb, 0, ' MB')} (holds every model)")
        lines += [
            f"  {m}: weights + KV cache + activations {fmt(i.model_memory_mb, 2, ' MB')}"
            for m, i in own.items()
        ]
    lines += [f"  endpoint {m} FAILED: {e.failure}" for m, e in eps.items() if e.failure]
    rsc = rep.serving.replica_scaling
    if rsc:
        lines.append(
            f"  replicas {rsc.runs[0].replicas} → {rsc.runs[-1].replicas}: {fmt(rsc.ratio, 2, 'x')} tok/s"
        )
    return lines


def _ci_cell(x: RatioCI | RoundRatio | None, better: str) -> tuple[str, str, str]:
    """(ratio, CI, call) cells of a ratio-with-CI: a difference is called only when the CI excludes 1."""
    if not x or x.ratio is None:
        return "n/a", "", "not measured"
    if x.ci_low is None or x.ci_high is None:
        return f"{x.ratio:.3f}", "no interval", f"not called ({getattr(x, 'rounds', 0)} round(s))"
    ci = f"[{x.ci_low:.3f}, {x.ci_high:.3f}]"
    if x.ci_low <= 1 <= x.ci_high:
        return f"{x.ratio:.3f}", ci, "no difference shown"
    up = x.ci_low > 1
    return f"{x.ratio:.3f}", ci, "better" if up == (better == "higher") else "WORSE"


def _comparative_table(rep: Report) -> str:
    """Every between-variant ratio with its interval; figures measured once (no samples) are shown, never
    called. Training rows compare variants; serving rows compare each served model with the baseline model."""
    tr, inf = rep.training, rep.inference
    if "baseline" not in tr and "baseline" not in inf:
        return ""
    rows = []
    for v, c in rep.comparison.items():
        rows += _training_ratio_rows(v, c, tr)
    for m, ratios in rep.serving.vs_baseline.items():
        for key, x in ratios.items():
            rows.append(
                [
                    f"{x.metric} ({m} ÷ baseline, {x.level})",
                    *_ci_cell(x, RATIO_HEADLINES[key].better),
                    "within rounds",
                ]
            )
    for m, i in inf.items():
        if m == "baseline" or "baseline" not in inf:
            continue
        rows.append(
            [
                f"Model memory ({m} ÷ baseline)",
                fmt(ratio(i.model_memory_mb, inf["baseline"].model_memory_mb), 3),
                "",
                "byte counts",
                "weights + KV cache + activation peak",
            ]
        )
    return (
        "## Comparative Summary Table\n\nEach ratio with its interval; a difference is called only when the "
        "interval excludes 1. Serving ratios are medians of the headline level's requests; their interval is "
        "Student's t over the interleaved rounds, each round one paired ratio.\n\n"
        + tabulate(rows, headers=["ratio", "value", "95% CI", "call", "basis"], tablefmt="github")
        + "\n"
    )


def _training_ratio_rows(v: str, c: Comparison, tr: dict[str, TrainingSummary]) -> list[list]:
    cc = c.concurrent
    return [
        [f"Training speedup, paired trial ({v})", *_ci_cell(c.speedup, "higher"), "baseline ÷ variant time"],
        [
            f"Concurrent-run step-time speedup ({v})",
            *_ci_cell(cc.step_time_ratio if cc else None, "higher"),
            "descriptive; block bootstrap",
        ],
        [
            f"Concurrent-run throughput ({v})",
            fmt(cc.tokens_per_s_ratio if cc else None, 3),
            "as above",
            "",
            "median-step basis = step-time ratio",
        ],
        [
            f"Work time ({v})",
            fmt(cc.work_time_ratio if cc else None, 3),
            "",
            "one measurement: not called",
            "baseline ÷ variant, probe + loop",
        ],
        [
            f"Final val loss ({v})",
            fmt(ratio(tr[v].val_loss, tr["baseline"].val_loss), 4),
            "",
            "gated by tolerance",
            f"|Δ| {fmt(c.val_loss_delta_pct, 3, '%')}",
        ],
    ]
