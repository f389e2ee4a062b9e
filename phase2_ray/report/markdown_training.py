"""report.md's training sections: each variant's timeline, the speedup breakdown with MFU, the stacks `auto`
probed, seeds and ablation contributions, and the loss curves as an ASCII chart. They read the typed report."""

from __future__ import annotations

import math
import textwrap

from tabulate import tabulate

from phase2_ray.report.ascii import WIDTH, bar, fit, fmt, line_chart, pct
from phase2_ray.report.schema import Report
from phase2_ray.report.schema.training import AutoProbe, Comparison, Speedup, TrainingSummary
from phase2_ray.report.training import stack_label
from phase2_ray.report.verdict import FAIL, PASS, judge


def mfu_cell(value: float | None) -> str:
    return fmt(value * 100 if value is not None else None, 1, "%")


def _arch(rep: Report) -> str:
    """gpt2, or llama with its grouped-query heads (a report from before model.arch: gpt2)."""
    m = rep.config.get("model") or {}  # the stored config is open JSON
    if m.get("arch", "gpt2") != "llama":
        return "gpt2"
    kv = m.get("n_kv_head") or m.get("n_head")
    return f"llama ({m.get('n_head')} query / {kv} key-value heads)"


def _stack(t: TrainingSummary) -> str:
    return stack_label(t.settings.model_dump(mode="json")) if t.settings else "eager fp32"


def training_timeline(rep: Report) -> str:
    tr = rep.training
    if not tr and not any(s.name.startswith(("2a", "2b", "train")) for s in rep.stages):
        return ""  # phase2 validate: nothing was trained
    if not tr:
        return "## Training Timeline\n\nNo variant finished training.\n"
    longest = max(t.stage_s or 0.0 for t in tr.values())
    lines = []
    for v, t in tr.items():
        stage = next((s.name for s in rep.stages if s.variant == v), "?")
        opt = _stack(t)
        opt = "none (eager fp32)" if opt == "eager fp32" else opt
        if t.auto:
            opt = f"auto → {t.auto.chosen}: {opt}"
        lines += [
            f"{v.upper()} TRAINING (Stage {stage})",
            f"├─ Duration: {fmt(t.stage_s, 1, ' s')} stage wall; training loop {fmt(t.train_s, 1, ' s')}, "
            f"of which warm-up/compile steps {fmt(t.warmup_s, 1, ' s')}",
            f"├─ Loss: {fmt(t.initial_loss, 4)} ──► {fmt(t.final_loss, 4)} "
            f"(train, {pct(t.initial_loss, t.final_loss)}); val {fmt(t.initial_val_loss, 4)} ──► {fmt(t.val_loss, 4)}",
            f"├─ Throughput: {fmt(t.tokens_per_s, 0, ' tok/s')} ({t.tokens_per_s_basis}); "
            f"{fmt(t.stage_tokens_per_s, 0, ' tok/s')} whole stage",
            f"├─ Model: {_arch(rep)}, {t.params:,} parameters, {t.steps} steps, {t.tokens:,} tokens",
            f"├─ Optimizations: {opt}",
            *(
                [
                    f"├─ Peak training memory: {fmt(t.peak_memory.bytes / 2**20, 2, ' MB')} ({_memory_vs(rep, v)})"
                ]
                if t.peak_memory and t.peak_memory.bytes is not None
                else []
            ),
            *(
                [
                    f"├─ Restarts: {t.restarts} (its process died; resumed from the state saved at step "
                    f"{t.resumed_from_step})"
                ]
                if t.restarts
                else []
            ),
            f"└─ Status: {t.status.upper()}" + (f" — {t.error}" if t.error else ""),
            "",
            f"   {bar(t.stage_s, longest, 60)} {fmt(t.stage_s, 1, ' s')}",
            "",
        ]
    return "## Training Timeline\n\n```\n" + "\n".join(fit(lines)) + "```\n"


def _memory_vs(rep: Report, v: str) -> str:
    """The memory figure's basis, and for a candidate its ratio to the baseline's."""
    c = rep.comparison.get(v)
    m = c.training_memory if c else None
    method = rep.training[v].peak_memory.method or ""
    return f"{fmt(m.ratio, 3, 'x')} the baseline's; {method}" if m and m.ratio else method


def _verdict(sp: Speedup) -> str:
    if sp.ratio is None:
        return "not measured"
    if not sp.significant:
        return "not significant: the CI includes 1.00x"
    return "significantly faster" if (sp.ci_low or 0) > 1 else "significantly SLOWER"


def speed_explanation(rep: Report, v: str) -> str:
    """One plain sentence: what the speed trial shows for variant `v`, read from its figures and its
    training_speedup gate's verdict (pass / fail / inconclusive against the target)."""
    c = rep.comparison[v]
    sp, need = c.speedup, rep.config["targets"]["speedup_min"]
    if c.noop:
        return f"No speedup to claim: {c.noop_reason}."
    if sp.ratio is None or sp.ci_low is None or sp.ci_high is None:
        return "The speed trial did not run, so no speedup was measured."
    ci = f"[{sp.ci_low:.3f}, {sp.ci_high:.3f}]"
    n, seq = sp.replicates, sp.sequential
    after = f"after {n} replicates" + (f" in {seq.looks} looks" if seq and seq.looks > 1 else "")
    verdict = judge(sp.ci_low, sp.ci_high, ">=", need)  # the training_speedup gate's rule, on the interval
    if verdict == PASS:
        return f"{v} is faster: {sp.ratio:.3f}x {ci} {after}, the whole interval at or above the {need:g}x target."
    if verdict == FAIL and sp.ci_high < 1:
        return f"{v} is SLOWER than the baseline on this machine: {sp.ratio:.3f}x {ci} {after}."
    if verdict == FAIL:
        return (
            f"{v} falls short of the {need:g}x target: {sp.ratio:.3f}x {ci} {after}, the whole interval below "
            "it" + (" (faster than the baseline, by less than the target)." if sp.ci_low > 1 else ".")
        )
    budget = seq.max_replicates if seq else None
    why = (
        "the replicate budget"
        if budget and n >= budget
        else ("the time budget" if budget else "a trial of fixed size")
    )
    mde = sp.mde_ratio
    resolve = f" At this size it resolves effects of ±{(mde - 1) * 100:.1f}%." if mde else ""
    return (
        f"Inconclusive: {sp.ratio:.3f}x {ci} {after} ({why}). The target {need:g}x lies inside the interval."
        f"{resolve} A longer trial (speed_trial.max_replicates, speed_trial.max_s) or a quieter machine could "
        "decide."
    )


def speedup_breakdown(rep: Report) -> str:
    if not rep.comparison:
        return ""
    lines = []
    for v, c in rep.comparison.items():
        lines += _variant_speed_lines(rep, v, c) + [""]
    return (
        "## Speedup Breakdown\n\n```\n"
        + "\n".join(fit(lines + _mfu_lines(rep.training)))
        + "\n```\n"
        + _stack_section(rep)
    )


def _variant_speed_lines(rep: Report, v: str, c: Comparison) -> list[str]:
    """The speed claim of variant `v`, then what the concurrent run observed, convergence and data order."""
    b, t, sp = rep.training["baseline"], rep.training[v], c.speedup
    cc = c.concurrent
    st = cc.step_time_ratio if cc else None
    seq = sp.sequential
    conf = f"{((seq.overall_confidence if seq else None) or sp.confidence or 0.95) * 100:g}%"
    reps = c.speed_trial.replicates if c.speed_trial else []
    looks = (
        [
            f"  sequential: {seq.looks} look(s) at {', '.join(map(str, seq.replicates_at_look))} "
            f"replicates (budget {seq.max_replicates}); this look's interval at "
            f"{seq.look_confidence * 100:.2f}% (alpha spent over the looks); it resolves effects of "
            f"±{(sp.mde_ratio - 1) * 100:.1f}%"
        ]
        if seq and sp.mde_ratio
        else []
    )
    source = "paired speed trial" if "speed_trial" in c.model_fields_set else "concurrent-run median ratio"
    lines = [
        f"{v} vs baseline",
        f"Speedup ({source}): {fmt(sp.ratio, 3, 'x')}   {conf} CI [{fmt(sp.ci_low, 3)}, "
        f"{fmt(sp.ci_high, 3)}] — {_verdict(sp)}",
        f"  {len(reps)} replicates x {(sp.pairs or 0) // max(len(reps), 1)} ABBA pairs; replicate ratios "
        + ", ".join(fmt(x, 3) for x in sp.replicate_ratios or []),
        *looks,
        *textwrap.wrap(
            speed_explanation(rep, v), WIDTH - 4, initial_indent="  => ", subsequent_indent="     "
        ),
        "Observed during the concurrent training (descriptive; not the speed claim):",
        f"  median step time:  {fmt(b.step_ms.p50 if b.step_ms else None, 2)} → "
        f"{fmt(t.step_ms.p50 if t.step_ms else None, 2)} ms = {fmt(st and st.ratio, 3, 'x')} "
        f"[{fmt(st and st.ci_low, 2)}, {fmt(st and st.ci_high, 2)}] (block bootstrap)",
        f"  throughput:        {fmt(b.tokens_per_s, 0)} → {fmt(t.tokens_per_s, 0)} tok/s = "
        f"{fmt(cc and cc.tokens_per_s_ratio, 3, 'x')} (median-step basis: equals the step-time ratio)",
        f"  work time:         {fmt(b.work_s, 1)} → {fmt(t.work_s, 1)} s = "
        f"{fmt(cc and cc.work_time_ratio, 3, 'x')} (baseline ÷ {v}; what a user waits for)",
        f"    of which {v}: "
        + (f"`auto` probe {fmt(t.auto.probe_s, 1)} s, " if t.auto else "")
        + f"warm-up/compile beyond the median step {fmt(t.compile_warmup_s, 1)} s",
        "  Why these can differ from the trial: the two actors ran on different cores next to different "
        "processes,",
        "  and the machine drifts; work time also pays one-time costs (probe, compile, evals).",
        f"Val loss change:             {fmt(c.val_loss_delta_pct, 3, '%')} vs tolerance "
        f"{fmt(c.val_loss_tolerance_pct, 3, '%')}",
        f"  tolerance: {c.val_loss_tolerance_basis}",
        f"Same data order:             {'yes' if c.same_data_order else 'NO'} (batch schedule sha256 "
        f"{t.data_order_sha256})",
    ]
    if c.isolated_speedup is not None:
        iso = c.isolated_speedup
        lines.append(
            f"Concurrent vs isolated:      {fmt(st and st.ratio, 3, 'x')} concurrent, {fmt(iso.ratio, 3, 'x')} "
            f"alone [{fmt(iso.ci_low, 2)}, {fmt(iso.ci_high, 2)}] → {fmt(c.concurrent_vs_isolated_pct, 1, '%')}"
        )
    return lines


def _mfu_lines(tr: dict[str, TrainingSummary]) -> list[str]:
    first = next(iter(tr.values())).mfu
    lines = [
        "MFU (model FLOPs utilisation, steady state)",
        *(f"  {part.strip()}" for part in first.formula.split(";", 1)),
        f"  flops/token = {first.flops_per_token:,}",
        f"  peak = {first.peak_basis}",
    ]
    for v, t in tr.items():
        m = t.mfu
        lines.append(
            f"  {v:<12} {mfu_cell(m.value):>8}  = "
            f"{fmt((m.achieved_flops or 0) / 1e9, 2)} GFLOP/s ÷ {fmt((m.peak_flops or 0) / 1e9, 2)} GFLOP/s "
            f"({m.peak_dtype} peak)"
        )
    return lines


def _stack_section(rep: Report) -> str:
    """What each variant ran with: for `auto` variants, every probed candidate and why the winner won; every
    seed's run; with more than two variants, each one's contribution."""
    out = [_auto_table(v, t.auto) for v, t in rep.training.items() if t.auto]
    if any(len(t.repeats) > 1 for t in rep.training.values()):
        out.append(_seeds_table(rep.training))
    if len(rep.training) > 2:
        out.append(_contributions_table(rep))
    return "".join(out)


def _auto_table(v: str, a: AutoProbe) -> str:
    rows = [
        [
            c.name,
            fmt(c.median_step_ms, 2),
            fmt(c.first_step_s, 2),
            fmt(c.speedup, 3),
            f"[{fmt(c.ci_low, 3)}, {fmt(c.ci_high, 3)}]" if c.ci_low is not None else "—",
            fmt(c.loss_delta_pct, 3),
            "yes" if c.accepted else "no",
            "yes" if c.faster else "no",
            "<-" if c.name == a.chosen else "",
        ]
        for c in a.candidates
    ]
    headers = [
        "stack",
        "median ms/step",
        "first step s",
        "speedup",
        "95% CI (rounds)",
        "Δ loss %",
        "accepted",
        "faster",
        "chosen",
    ]
    rule = (
        f"timed in {a.rounds} paired rounds of {a.block_steps} steps; kept eager fp32 unless a stack whose "
        f"loss is within {a.tolerance_pct}% of it is faster beyond noise (its whole interval above "
        f"{1 + a.min_gain_pct / 100:g}x"
        + (f", each at {a.candidate_confidence * 100:.1f}%: 95% over all" if a.candidate_confidence else "")
        + "), the simpler stack on a tie"
    )
    return (
        f"\n`{v}` is `auto`: {len(rows)} candidate stacks probed for {a.steps} steps each "
        f"({fmt(a.probe_s, 1, ' s')}), {rule}.\n\n"
        + tabulate(rows, headers=headers, tablefmt="github")
        + "\n"
    )


def _seeds_table(tr: dict[str, TrainingSummary]) -> str:
    rows = [
        [v, x.seed, x.phase, fmt(x.val_loss, 4), fmt(x.step_ms_p50, 2), fmt(x.tokens_per_s, 0)]
        for v, t in tr.items()
        for x in t.repeats
    ]
    return (
        "\n### Seeds\n\nEvery variant trained once per seed; the val-loss gate compares seed means and takes its "
        "tolerance from the baseline's seed-to-seed spread.\n\n"
        + tabulate(
            rows, headers=["variant", "seed", "run", "val loss", "median ms/step", "tok/s"], tablefmt="github"
        )
        + "\n"
    )


def _contributions_table(rep: Report) -> str:
    rows = []
    for v, t in rep.training.items():
        c = rep.comparison.get(v)
        opts = _stack(t)
        opts = "" if opts == "eager fp32" else opts
        rows.append(
            [
                v,
                opts or "(none)",
                fmt(c.speedup.ratio, 3, "x") if c else "1 (reference)",
                f"[{fmt(c.speedup.ci_low, 2)}, {fmt(c.speedup.ci_high, 2)}]" if c else "",
                _verdict(c.speedup) if c else "",
                fmt(c.val_loss_delta_pct, 3, "%") if c else "",
                mfu_cell(t.mfu.value if t.mfu else None),
            ]
        )
    return (
        "\n### Each optimization's contribution\n\n"
        + tabulate(
            rows,
            headers=["variant", "settings", "speedup", "95% CI", "verdict", "Δ val loss", "MFU"],
            tablefmt="github",
        )
        + "\n"
    )


def loss_chart(rep: Report, width: int = 72, height: int = 14) -> str:
    curves = {v: [p[1] for p in t.loss_curve] for v, t in rep.training.items() if t.loss_curve}
    curves = {v: c for v, c in curves.items() if all(math.isfinite(x) for x in c)}
    if not curves:
        return ""
    lines, legend = line_chart(curves, width, height)
    vals = [f"{v}: final val loss {fmt(t.val_loss, 4)}" for v, t in rep.training.items()]
    verdict = "".join(
        f"\n{v} vs baseline: |Δ val loss| = {fmt(c.val_loss_delta_pct, 3, '%')}"
        for v, c in rep.comparison.items()
    )
    return (
        "## Loss Convergence Comparison\n\n```\nTraining loss (per-step, column-averaged)   "
        + legend
        + "\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(vals)
        + verdict
        + "\n```\n"
    )
