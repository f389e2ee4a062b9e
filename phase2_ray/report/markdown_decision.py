"""report.md's sections on the run's outcome: the approval gates, the status dashboard, the timeline of its
stages, the checklist of what it verified, and the recommendation (each failed gate, and what would make it pass)."""

from __future__ import annotations

import time

from tabulate import tabulate

from phase2_ray.report.ascii import WIDTH, fmt
from phase2_ray.report.markdown_training import speed_explanation


def gates_table(r: dict) -> str:
    rows = [
        [
            g["name"],
            g["variant"],
            fmt(g["value"], 3) if g["value"] is not None else "not measured",
            g["op"],
            f"{g['threshold']:g}",
            fmt(g["margin"], 3) if g["margin"] is not None else "—",
            g["unit"],
            "PASS" if g["passed"] else "FAIL",
        ]
        for g in r["decision"]["gates"]
    ]
    return (
        "## Approval Gates\n\nMargin = how far the value sits on the passing side of the threshold (negative: missed by).\n\n"
        + tabulate(
            rows,
            headers=["gate", "variant", "value", "op", "threshold", "margin", "unit", "result"],
            tablefmt="github",
        )
        + "\n"
    )


def dashboard(r: dict) -> str:
    titles = {
        "data": "Data + tokenizer",
        "2a": "Baseline training",
        "2b": "Optimized training",
        "speed-trial": "Paired speed trial",
        "2c": "Inference validation",
        "2d": "Final reporting",
    }
    lines = ["┌" + "─" * 62 + "┐", f"│ {'PHASE 2 COMPLETION STATUS':<60} │", "├" + "─" * 62 + "┤"]
    for s in r["stages"]:
        title = titles.get(s["name"], f"Training {s.get('variant')}")
        dur = (s["end"] or time.time()) - s["start"]
        label = f"Stage {s['name']:<5} {title:<26} {s['status'].upper():<8} {dur:6.1f} s"
        lines.append(f"│ {label:<60} │")
    verdict = "APPROVED" if r["decision"]["approved"] else "REJECTED"
    failed = [f"{g['name']}/{g['variant']}" for g in r["decision"]["gates"] if not g["passed"]]
    lines += ["├" + "─" * 62 + "┤", f"│ {'OVERALL RESULT: ' + verdict:<60} │"]
    for f in failed[:6]:
        lines.append(f"│ {'  failed gate: ' + f:<60} │")
    lines.append("└" + "─" * 62 + "┘")
    return "## Phase 2 Completion Dashboard\n\n```\n" + "\n".join(lines) + "\n```\n"


GATE_ADVICE = {
    "training_speedup": "a stack at least {threshold:g}x faster than the baseline on this machine (a larger model, "
    "where compile and bf16 pay; hardware with AMX / AVX-512 BF16, or a GPU), or a lower targets.speedup_min "
    "if a smaller gain is worth shipping",
    "training_speedup_ci_low": "a speedup that stands out of the trial's noise: a faster stack, or more "
    "replicates (speed_trial.replicates) if the gain is real but small",
    "val_loss_delta_pct": "the variant must converge to within {threshold:g}% of the baseline's val loss "
    "(check bf16 / compile numerics, or the learning-rate schedule)",
    "int8_val_loss_delta_pct": "int8 weights must lose at most {threshold:g}% val loss (keep more layers in fp32)",
    "ttft_p50_ms": "TTFT p50 must come down to {threshold:g} ms (fewer requests in flight per replica, more "
    "replicas, a smaller prompt)",
    "output_tokens_per_s": "output throughput must reach {threshold:g} tok/s (larger batches, more replicas)",
    "peak_memory_mb": "the replica's peak RSS must fit {threshold:g} MB (fewer models per replica, a smaller "
    "KV cache: serve.max_batch_size)",
    "model_memory_mb": "the model's weights + KV cache + activations must fit {threshold:g} MB (int8 weights, a smaller "
    "serve.max_batch_size)",
    "success_rate": "every request must succeed: see the errors by type in report.json inference.<model>.errors",
    "ttft_p50_vs_baseline": "this model's TTFT must not be worse than the baseline model's by more than the "
    "tolerance (targets.serving_regression_pct_max)",
    "tpot_p50_vs_baseline": "this model's per-token time must not be worse than the baseline model's by more "
    "than the tolerance (targets.serving_regression_pct_max)",
    "training_completed": "training must finish with finite loss (lower training.lr, keep grad_clip on)",
    "failed_stages": "every stage must finish: see the stage details and the log",
}


def recommendation(r: dict) -> str:
    """The closing verdict: approved with what was shown, or each failed gate, by how much, and what would
    have to change for it to pass."""
    dec = r["decision"]
    gates = dec["gates"]
    if dec["approved"]:
        shown = [
            f"- {g['name']} ({g['variant']}): {fmt(g['value'], 3)} {g['op']} {g['threshold']:g} {g['unit']}".rstrip()
            for g in gates
            if g["name"].startswith("training_speedup")
        ]
        return (
            "## Recommendation\n\n**Proceed to Phase 3 — Production Deployment.** "
            f"All {len(gates)} gates passed; the speedup is measured, beyond the trial's noise and above its floor:\n\n"
            + "\n".join(shown)
            + "\n"
        )
    out = [
        "## Recommendation\n",
        "**Do not proceed to Phase 3 yet.**" + (f" The run {r['failure']}." if r.get("failure") else ""),
    ]
    for v, c in r.get("comparison", {}).items():
        sp = c["speedup"]
        if c.get("noop") or (sp.get("ratio") and sp["ci_low"] <= 1 <= sp["ci_high"]):
            out.append(f"\nNo measurable speedup on this machine ({v}): {speed_explanation(r, v)}")
    out.append("\nFailed gates, by how much they missed, and what would have to change:\n")
    for g in gates:
        if g["passed"]:
            continue
        miss = (
            "not measured"
            if g["value"] is None
            else f"{fmt(g['value'], 3)} {g['unit']} vs {g['op']} {g['threshold']:g}"
            + (f", missed by {fmt(-g['margin'], 3)}" if g["margin"] is not None and g["margin"] < 0 else "")
            + (f" ({g['veto']})" if g.get("veto") else "")
        )
        advice = GATE_ADVICE.get(g["name"], "").format(threshold=g["threshold"])
        out.append(
            f"- **{g['name']}** ({g['variant']}): {miss}." + (f" To pass: {advice}." if advice else "")
        )
    return "\n".join(out) + "\n"


def checklist(r: dict) -> str:
    tr, inf, comp = r["training"], r["inference"], r.get("comparison", {})
    checks = []

    def add(ok: bool, text: str) -> None:
        checks.append(f"[{'x' if ok else ' '}] {text}")

    for v, t in tr.items():
        add(t["status"] == "ok", f"{v}: trained {t['steps']} steps with finite loss")
        add(
            t["val_loss"] is not None
            and t["initial_val_loss"] is not None
            and t["val_loss"] < t["initial_val_loss"],
            f"{v}: val loss fell ({fmt(t['initial_val_loss'], 4)} → {fmt(t['val_loss'], 4)})",
        )
    for v, c in comp.items():
        add(c["same_data_order"], f"{v} and baseline saw the same batches in the same order (schedule hash)")
        add(tr[v]["tokens"] == tr["baseline"]["tokens"], f"{v} and baseline trained on the same token budget")
    for v, i in inf.items():
        add(
            bool(i.get("model_bytes")),
            f"{v}: loaded in the Serve replica, sha256 verified "
            f"({fmt((i.get('model_bytes') or {}).get('weights'), 0)} weight bytes)",
        )
        add(
            i["succeeded"] == i["requests"],
            f"{v}: {i['succeeded']}/{i['requests']} streamed requests succeeded over HTTP",
        )
    for v in tr:
        if v not in inf:
            add(False, f"{v}: inference validation ran")
    add(r["decision"]["approved"], "every approval gate passed")
    return (
        "## Validation Checklist\n\nChecks this run performed, with their outcome:\n\n```\n"
        + "\n".join(checks)
        + "\n```\n"
    )


def run_timeline(r: dict, width: int = 60) -> str:
    stages = [s for s in r["stages"] if s.get("start")]
    if not stages:
        return ""
    t0 = r["started_at"]
    t1 = max((s["end"] or s["start"]) for s in stages)
    span = max(t1 - t0, 1e-6)
    labels = [s["name"] + (f" {s['variant']}" if s.get("variant") else "") for s in stages]
    # The label column grows with the longest name (an isolated re-run's is ~40 characters) and the bars
    # shrink to match: label, two times and the bar fit the block's 100 columns.
    lw = max(16, *map(len, labels))
    width = max(10, min(width, WIDTH - lw - 19))
    lines = [f"{'stage':<{lw}} {'start':>7} {'end':>7}  0 s{' ' * (width - 8)}{span:.0f} s"]
    for s, label in zip(stages, labels, strict=True):
        a = round((s["start"] - t0) / span * width)
        b = max(a + 1, round(((s["end"] or s["start"]) - t0) / span * width))
        lines.append(
            f"{label:<{lw}} {s['start'] - t0:6.1f}s {(s['end'] or s['start']) - t0:6.1f}s  "
            f"{' ' * a}{'▓' * (b - a)}"
        )
    # The overlap that matters is the concurrent pair's (isolated re-runs are meant not to overlap).
    tr = [s for s in stages if s["name"] in ("2a", "2b")]
    note = ""
    if len(tr) >= 2:
        ov = min(x["end"] for x in tr) - max(x["start"] for x in tr)
        note = (
            f"\nTraining actors overlapped for {max(ov, 0):.1f} s (they ran concurrently)."
            if ov > 0
            else "\nTraining actors did NOT overlap."
        )
    return "## Timeline of the Run\n\n```\n" + "\n".join(lines) + note + "\n```\n"
