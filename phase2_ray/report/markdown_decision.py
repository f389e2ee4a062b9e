"""report.md's sections on the run's outcome: the approval gates, the status dashboard, the timeline of its
stages, the checklist of what it verified, and the recommendation (each failed gate, and what would make it pass)."""

from __future__ import annotations

import time

from tabulate import tabulate

from phase2_ray.report.ascii import WIDTH, fmt
from phase2_ray.report.markdown_training import speed_explanation
from phase2_ray.report.schema import Report
from phase2_ray.report.schema.decision import Gate
from phase2_ray.report.verdict import APPROVED, FAIL, INCONCLUSIVE, PASS, REJECTED, RULE_TEXT

# These sections read the typed report (report/schema): attributes, not string keys.


def gates_table(rep: Report) -> str:
    dec = rep.decision
    rows = [
        [
            g.name,
            g.variant,
            fmt(g.value, 3) if g.value is not None else "not measured",
            _interval(g),
            g.op,
            f"{g.threshold:g}",
            fmt(g.margin, 3) if g.margin is not None else "—",
            g.unit,
            g.rule,
            g.verdict.upper() + ("" if g.deciding else " (shown)"),
            g.outcome or "—",
        ]
        for g in dec.gates
    ]
    return (
        "## Approval Gates\n\n"
        + (dec.rule + "\n\n" if dec.rule else "")
        + "Interval = the figure's interval (a figure measured once is its own). Margin = how far the value sits "
        "on the passing side of the threshold (negative: missed by). Rules: "
        + "; ".join(RULE_TEXT.values())
        + ". Outcome (relative gates): the ratio against its margin band, better / equivalent / worse / "
        "inconclusive. (shown): the baseline's own targets, reported, not deciding.\n\n"
        + tabulate(
            rows,
            headers=[
                "gate",
                "variant",
                "value",
                "interval",
                "op",
                "threshold",
                "margin",
                "unit",
                "rule",
                "verdict",
                "outcome",
            ],
            tablefmt="github",
        )
        + "\n"
        + candidates_table(rep)
    )


def _interval(g: Gate) -> str:
    return "—" if g.low is None or g.high is None else f"[{fmt(g.low, 3)}, {fmt(g.high, 3)}]"


def candidates_table(rep: Report) -> str:
    """Each candidate's own outcome, and whether it decides the run."""
    cands = rep.decision.candidates
    if not cands:
        return ""
    rows = [
        [m, c.role, c.outcome.upper(), ", ".join(c.failed) or "—", ", ".join(c.inconclusive) or "—"]
        for m, c in cands.items()
    ]
    return (
        "\n### Candidates\n\n"
        + tabulate(
            rows,
            headers=["candidate", "role", "outcome", "failed gates", "inconclusive gates"],
            tablefmt="github",
        )
        + "\n"
    )


def dashboard(rep: Report) -> str:
    titles = {
        "data": "Data + tokenizer",
        "2a": "Baseline training",
        "2b": "Optimized training",
        "speed-trial": "Paired speed trial",
        "2c": "Inference validation",
        "2d": "Final reporting",
    }
    lines = ["┌" + "─" * 62 + "┐", f"│ {'PHASE 2 COMPLETION STATUS':<60} │", "├" + "─" * 62 + "┤"]
    for s in rep.stages:
        title = titles.get(s.name, f"Training {s.variant}")
        dur = (s.end or time.time()) - s.start
        label = f"Stage {s.name:<5} {title:<26} {s.status.upper():<8} {dur:6.1f} s"
        lines.append(f"│ {label:<60} │")
    verdict = rep.decision.outcome.upper()
    open_ = [
        (g.verdict, f"{g.name}/{g.variant}") for g in rep.decision.gates if g.verdict != PASS and g.deciding
    ]
    lines += ["├" + "─" * 62 + "┤", f"│ {'OVERALL RESULT: ' + verdict:<60} │"]
    for v, f in open_[:6]:
        lines.append(f"│ {'  ' + ('failed' if v == FAIL else 'undecided') + ' gate: ' + f:<60} │")
    lines.append("└" + "─" * 62 + "┘")
    return "## Phase 2 Completion Dashboard\n\n```\n" + "\n".join(lines) + "\n```\n"


GATE_ADVICE = {
    "training_speedup": "a stack at least {threshold:g}x faster than the baseline on this machine (a larger model, "
    "where compile and bf16 pay; hardware with AMX / AVX-512 BF16, or a GPU), or a lower targets.speedup_min "
    "if a smaller gain is worth shipping",
    "val_loss_delta_pct": "the variant must converge to within {threshold:g}% of the baseline's val loss "
    "(check bf16 / compile numerics, or the learning-rate schedule)",
    "training_memory_ratio": "peak training memory must be at most {threshold:g}x the baseline's (a stack that "
    "trades memory for speed: activation checkpointing, bf16, a smaller optimizer state)",
    "served_val_loss_delta_pct": "the served copy must lose at most {threshold:g}% val loss against its source "
    "(a gentler serve converter)",
    "int8_val_loss_delta_pct": "int8 weights must lose at most {threshold:g}% val loss (keep more layers in fp32)",
    "ttft_p50_ms": "TTFT p50 must come down to {threshold:g} ms (fewer requests in flight per replica, more "
    "replicas, a smaller prompt)",
    "output_tokens_per_s": "output throughput must reach {threshold:g} tok/s (larger batches, more replicas)",
    "replica_peak_memory_mb": "the replica's peak RSS must fit {threshold:g} MB (fewer models per replica, a smaller "
    "KV cache: serve.max_batch_size)",
    "model_memory_mb": "the model's weights + KV cache + activations must fit {threshold:g} MB (int8 weights, a smaller "
    "serve.max_batch_size)",
    "success_rate": "every request must succeed: see the errors by type in report.json inference.<model>.errors",
    "ttft_p50_vs_baseline": "this model's TTFT must not be worse than the baseline model's by more than the "
    "tolerance (targets.serving_regression_pct_max)",
    "tpot_p50_vs_baseline": "this model's per-token time must not be worse than the baseline model's by more "
    "than the tolerance (targets.serving_regression_pct_max)",
    "e2e_p50_vs_baseline": "this model's end-to-end latency must not be worse than the baseline model's by more "
    "than the tolerance (targets.serving_regression_pct_max)",
    "ttft_p99_vs_baseline": "this model's TTFT tail must not be worse than the baseline model's by more than the "
    "tolerance (targets.serving_regression_pct_max)",
    "output_tps_vs_baseline": "this model's output tokens per second must not be lower than the baseline model's "
    "by more than the tolerance (targets.serving_regression_pct_max)",
    "goodput_vs_baseline": "this model's share of requests meeting the SLO must not be lower than the baseline "
    "model's by more than the tolerance (targets.serving_regression_pct_max)",
    "decode_rate_p50_vs_baseline": "this model's per-request decode rate must not be lower than the baseline "
    "model's by more than the tolerance (targets.serving_regression_pct_max)",
    "training_completed": "training must finish with finite loss (lower training.lr, keep grad_clip on)",
    "failed_stages": "every stage must finish: see the stage details and the log",
}


def recommendation(rep: Report) -> str:
    """The closing verdict: approved with what was shown; rejected with each failed gate, by how much, and what
    would have to change; inconclusive with each undecided gate and what more evidence would take."""
    dec = rep.decision
    gates, outcome = dec.gates, dec.outcome
    roles = "".join(f"\n- {m} ({c.role}): **{c.outcome.upper()}**" for m, c in dec.candidates.items())
    if outcome == APPROVED:
        shown = [
            f"- {g.name} ({g.variant}): {fmt(g.value, 3)} {_interval(g)} {g.op} {g.threshold:g} {g.unit}".rstrip()
            for g in gates
            if g.name.startswith("training_speedup")
        ]
        return (
            "## Recommendation\n\n**Proceed to Phase 3 — Production Deployment.** "
            "Every deciding gate passed on its whole interval"
            + (f"; the speedup is at or above its target:\n\n{chr(10).join(shown)}" if shown else ".")
            + ("\n\nCandidates:" + roles if roles else "")
            + "\n"
        )
    head = {
        REJECTED: "**Do not proceed to Phase 3 yet.**",
        INCONCLUSIVE: "**Inconclusive: the evidence could not decide.** Neither approve nor reject on this run.",
    }[outcome]
    out = ["## Recommendation\n", head + (f" The run {rep.failure}." if rep.failure else "")]
    if roles:
        out.append("\nCandidates:" + roles)
    for v in rep.comparison:
        out.append(f"\nSpeed ({v}): {speed_explanation(rep, v)}")
    failed = [g for g in gates if g.verdict == FAIL and g.deciding]
    undecided = [g for g in gates if g.verdict == INCONCLUSIVE and g.deciding]
    if failed:
        out.append("\nFailed gates, by how much they missed, and what would have to change:\n")
        out += [_gate_line(g) for g in failed]
    if undecided:
        out.append("\nUndecided gates (the interval straddles the threshold; more evidence could decide):\n")
        out += [
            f"- **{g.name}** ({g.variant}): {fmt(g.value, 3)} {_interval(g)} {g.unit} vs "
            f"{g.op} {g.threshold:g}".rstrip()
            + (f" ({g.detail})" if g.detail else "")
            + "."
            for g in undecided
        ]
    return "\n".join(out) + "\n"


def _gate_line(g: Gate) -> str:
    miss = (
        "not measured"
        if g.value is None
        else f"{fmt(g.value, 3)} {g.unit} {_interval(g)} vs {g.op} {g.threshold:g}".replace(" —", "")
        + (f", missed by {fmt(-g.margin, 3)}" if g.margin is not None and g.margin < 0 else "")
        + (f" ({g.veto})" if g.veto else "")
    )
    advice = GATE_ADVICE.get(g.name, "").format(threshold=g.threshold)
    return f"- **{g.name}** ({g.variant}): {miss}." + (f" To pass: {advice}." if advice else "")


def checklist(rep: Report) -> str:
    tr, inf, comp = rep.training, rep.inference, rep.comparison
    checks = []

    def add(ok: bool, text: str) -> None:
        checks.append(f"[{'x' if ok else ' '}] {text}")

    for v, t in tr.items():
        add(t.status == "ok", f"{v}: trained {t.steps} steps with finite loss")
        add(
            t.val_loss is not None and t.initial_val_loss is not None and t.val_loss < t.initial_val_loss,
            f"{v}: val loss fell ({fmt(t.initial_val_loss, 4)} → {fmt(t.val_loss, 4)})",
        )
    for v, c in comp.items():
        add(
            bool(c.same_data_order),
            f"{v} and baseline saw the same batches in the same order (schedule hash)",
        )
        add(tr[v].tokens == tr["baseline"].tokens, f"{v} and baseline trained on the same token budget")
    elsewhere = {m for m, e in rep.serving.endpoints.items() if e.kind == "external"}
    for v, i in inf.items():
        if v in elsewhere:  # served by another server: this run loaded nothing of it
            add(i.succeeded == i.requests, f"{v}: {i.succeeded}/{i.requests} streamed requests succeeded")
            continue
        add(
            i.model_bytes is not None,
            f"{v}: loaded in the Serve replica, sha256 verified "
            f"({fmt(i.model_bytes.weights if i.model_bytes else None, 0)} weight bytes)",
        )
        add(
            i.succeeded == i.requests,
            f"{v}: {i.succeeded}/{i.requests} streamed requests succeeded over HTTP",
        )
    for v in tr:
        if v not in inf:
            add(False, f"{v}: inference validation ran")
    add(rep.decision.outcome == APPROVED, "every deciding gate passed on its whole interval")
    return (
        "## Validation Checklist\n\nChecks this run performed, with their outcome:\n\n```\n"
        + "\n".join(checks)
        + "\n```\n"
    )


def run_timeline(rep: Report, width: int = 60) -> str:
    stages = [s for s in rep.stages if s.start]
    if not stages:
        return ""
    t0 = rep.started_at
    t1 = max((s.end or s.start) for s in stages)
    span = max(t1 - t0, 1e-6)
    labels = [s.name + (f" {s.variant}" if s.variant else "") for s in stages]
    # The label column grows with the longest name (an isolated re-run's is ~40 characters) and the bars
    # shrink to match: label, two times and the bar fit the block's 100 columns.
    lw = max(16, *map(len, labels))
    width = max(10, min(width, WIDTH - lw - 19))
    lines = [f"{'stage':<{lw}} {'start':>7} {'end':>7}  0 s{' ' * (width - 8)}{span:.0f} s"]
    for s, label in zip(stages, labels, strict=True):
        end = s.end or s.start
        a = round((s.start - t0) / span * width)
        b = max(a + 1, round((end - t0) / span * width))
        lines.append(f"{label:<{lw}} {s.start - t0:6.1f}s {end - t0:6.1f}s  {' ' * a}{'▓' * (b - a)}")
    # The overlap that matters is the concurrent pair's (isolated re-runs are meant not to overlap).
    tr = [s for s in stages if s.name in ("2a", "2b")]
    note = ""
    if len(tr) >= 2:
        ov = min(x.end or x.start for x in tr) - max(x.start for x in tr)
        note = (
            f"\nTraining actors overlapped for {max(ov, 0):.1f} s (they ran concurrently)."
            if ov > 0
            else "\nTraining actors did NOT overlap."
        )
    return "## Timeline of the Run\n\n```\n" + "\n".join(lines) + note + "\n```\n"
