"""report.json's `training` and `comparison` sections from the training actors' and the speed trial's raw results:
each variant's run summary (throughput, MFU, losses), and each variant against the baseline (the speed claim,
the concurrent-run ratios, convergence)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from phase2_ray.core.flops import MFU_FORMULA, flops_per_token, mfu
from phase2_ray.core.specs import GPTConfig, OptimizationSettings, same_stack
from phase2_ray.report.stats import (
    block_bootstrap_ratio_ci,
    paired_speedup,
    pct_change_abs,
    ratio,
    sequential_speedup,
    summarize_training,
    t_half_width,
)

TRIAL_REPLICATE_KEYS = (
    "replicate",
    "seed",
    "pid",
    "node_id",
    "build_order",
    "warmup_s",
    "steps_per_stack",
    "losses_equal",
    "cores",
    "look",
    "pairs",
)
"""What report.json keeps of each speed-trial replicate: enough to recompute the speedup from its pairs."""


def step_frame(training: dict[str, dict]) -> pd.DataFrame:
    rows = [
        {"variant": v, "step": i + 1, "loss": loss, "step_s": dt}
        for v, r in training.items()
        for i, (loss, dt) in enumerate(zip(r["losses"], r["step_times"], strict=True))
    ]
    return pd.DataFrame(rows, columns=["variant", "step", "loss", "step_s"])


def mfu_peak(training: dict[str, dict]) -> tuple[str | None, float | None, str | None]:
    """(dtype, FLOP/s, variant) of the one MFU denominator for the whole run: the best matmul rate any actor
    measured, in any dtype it may compute in (where bf16 has no fast path its peak is below fp32's). Per-actor
    peaks differ with the core and the moment; dividing each variant by its own would make the MFU ratio differ
    from the throughput ratio."""
    peaks = [(dt, p, v) for v, r in training.items() for dt, p in (r.get("peak_flops") or {}).items()]
    return max(peaks, key=lambda x: x[1]) if peaks else (None, None, None)


def summarize_run(v: str, r: dict, extra_runs, *, skip: int, tokens_per_step: int, peak: tuple) -> dict:
    """report.json's `training.<v>`: one training actor's raw result, with the further seeds of the same
    variant and phase from `extra_runs` as `repeats`."""
    summary = summarize_training(r["step_times"], tokens_per_step, skip)
    tps = summary["tokens_per_s"]
    probe_s = (r.get("auto") or {}).get("probe_s") or 0.0
    same_phase = [x for x in extra_runs if x["variant"] == v and x.get("phase") == r.get("phase")]
    return {
        **{k: r[k] for k in ("status", "error", "params", "steps", "tokens", "seed")},
        "phase": r.get("phase"),
        "train_s": r["train_s"],
        "stage_s": r["end"] - r["start"],
        # What a user waits for: the `auto` probe, compile and the loop; not the wait at the start barrier
        # for the other actor, nor the matmul peak this tool measures for MFU.
        "work_s": probe_s + r["train_s"],
        "work_basis": "auto probe + training loop (init, compile, steps, evals); excludes waiting for "
        "the other actor and the MFU peak measurement",
        "stage_tokens_per_s": r["tokens"] / r["train_s"] if r["train_s"] > 0 else None,
        "tokens_per_s": tps,
        "tokens_per_s_basis": f"median step, steady steps {skip + 1}-{r['steps']}",
        "tokens_per_s_mean": summary["tokens_per_s_mean"],
        "steady_s": summary["steady_s"],
        "warmup_s": summary["warmup_s"],
        "compile_warmup_s": summary["warmup_s"]
        - (summary["step_ms"]["p50"] / 1000 * skip if summary["step_ms"] else 0),
        "step_ms": summary["step_ms"],
        "mfu": _mfu(r, tps, peak),
        "initial_loss": r["losses"][0] if r["losses"] else None,
        "final_loss": r["losses"][-1] if r["losses"] else None,
        "initial_val_loss": r["val_curve"][0][1] if r["val_curve"] else None,
        "val_loss": r["val_curve"][-1][1] if r["val_curve"] else None,
        "loss_curve": [[i + 1, x] for i, x in enumerate(r["losses"])],
        "val_curve": [list(p) for p in r["val_curve"]],
        "val_windows": r.get("val_windows"),
        "optimizations": r["applied"],
        "settings": r["settings"],
        "stack": stack_label(r["settings"]),
        "peak_memory": r.get("peak_memory"),
        "auto": r.get("auto"),
        "start_barrier_wait_s": r.get("start_barrier_wait_s"),
        "placement": r["placement"],
        "device": r.get("device"),
        "data_order_sha256": r["data_order_sha256"],
        "checkpoint_uri": r.get("checkpoint_uri"),
        "restarts": r.get("restarts", 0),
        "resumed_from_step": r.get("resumed_from_step"),
        "cuda_max_allocated_mb": r.get("cuda_max_allocated_mb"),
        "repeats": [_repeat_summary(r, summary)]
        + [
            _repeat_summary(x, summarize_training(x["step_times"], tokens_per_step, skip)) for x in same_phase
        ],
        "start": r["start"],
        "end": r["end"],
    }


def _mfu(r: dict, tps: float | None, peak: tuple) -> dict:
    peak_dtype, peak_flops, peak_from = peak
    gpt = GPTConfig(**r["model"])
    fpt = flops_per_token(gpt)
    return {
        "value": mfu(gpt, tps, peak_flops) if fpt and tps and peak_flops else None,
        "flops_per_token": fpt,
        "achieved_flops": fpt * tps if fpt and tps else None,
        "peak_flops": peak_flops,
        "peak_dtype": peak_dtype,
        "peak_from": peak_from,
        "peaks_measured": r["peak_flops"],
        "peak_basis": f"best {8192 if r.get('device') == 'cuda' else 512}^2 matmul measured by any "
        f"training actor of this run, fastest dtype ({r['placement']['torch_threads']} threads); "
        "one denominator for every variant",
        "formula": MFU_FORMULA,
    }


def _repeat_summary(r: dict, summary: dict) -> dict:
    return {
        "seed": r["seed"],
        "phase": r.get("phase"),
        "status": r["status"],
        "val_loss": r["val_curve"][-1][1] if r["val_curve"] else None,
        "step_ms_p50": summary["step_ms"]["p50"] if summary["step_ms"] else None,
        "tokens_per_s": summary["tokens_per_s"],
        "train_s": r["train_s"],
    }


def compare_variant(
    v: str,
    summary: dict[str, dict],
    raw: dict[str, dict],
    extra_runs,
    trial: list[dict] | None,
    *,
    skip: int,
    seed: int,
    confidence: float,
    val_loss_tol_pct: float,
    max_replicates: int | None = None,
    speedup_min: float = 1.05,
) -> dict:
    """report.json's `comparison.<v>`: variant `v` against the baseline. The speed claim comes from the paired
    trial; the concurrent run's ratios are descriptive; convergence is |Δ val loss| against its tolerance."""
    base, t = summary["baseline"], summary[v]
    c = {"vs": "baseline", **speed_claim(base, t, trial, confidence, max_replicates)}
    conc = block_bootstrap_ratio_ci(
        raw["baseline"]["step_times"][skip:], raw[v]["step_times"][skip:], seed=seed
    )
    c["concurrent"] = {
        "step_time_ratio": conc,
        "tokens_per_s_ratio": ratio(t["tokens_per_s"], base["tokens_per_s"]),
        "mfu_ratio": ratio(t["mfu"]["value"], base["mfu"]["value"]),
        "work_time_ratio": ratio(base["work_s"], t["work_s"]),
        "basis": "observed while both variants trained at once on different cores: median step time "
        "baseline / variant (moving-block bootstrap CI), tokens/s and MFU from the same medians (equal "
        "ratios by construction), work time = probe + loop. Not the speed claim: which core shares the "
        "driver and Ray's processes, and the machine's drift, differ between the two actors.",
    }
    c["same_data_order"] = t["data_order_sha256"] == base["data_order_sha256"]
    mb, mv = (x.get("peak_memory") or {} for x in (base, t))
    c["training_memory"] = {
        "baseline_bytes": mb.get("bytes"),
        "variant_bytes": mv.get("bytes"),
        "ratio": ratio(mv.get("bytes"), mb.get("bytes")),
        "method": mv.get("method") or mb.get("method"),
        "basis": "peak tensor bytes of one steady training step (variant / baseline; below 1 = less memory), "
        "measured on a fresh copy of each stack after training: deterministic, so it has no interval",
    }
    # Only a stack whose converters say they change numerics is held to the convergence gate; one that says it
    # does not (activation checkpointing recomputes the same values) shows its Δ val loss without deciding by it.
    declared = OptimizationSettings.from_dict(t["settings"]).changes_numerics()
    # a claim of unchanged numerics is believed only as far as the losses bear it out
    c["changes_numerics"] = declared or not _identical(raw["baseline"], raw[v])
    if not declared and c["changes_numerics"]:
        c["changes_numerics_note"] = "its converters declare changes_numerics = False, but its losses differ"
    sp = c["speedup"]
    band = max(speedup_min - 1.0, 0.0)  # the speedup gate's margin: within it, no effect worth the name
    if (
        not c["noop"]
        and band > 0
        and _identical(raw["baseline"], raw[v])
        and c["training_memory"]["ratio"] in (None, 1.0)
        and sp.get("ci_low") is not None
        and 1 / (1 + band) <= sp["ci_low"] <= 1.0 <= sp["ci_high"] <= 1 + band
    ):
        # A converter whose hooks change nothing (or nothing that matters) is refused like the baseline's own stack.
        # Only when the trial shows it equivalent: an interval that merely holds 1 is too little evidence (a real
        # speedup measured by too few replicates), and stays inconclusive.
        c["noop"] = True
        c["noop_reason"] = (
            f"{stack_label(t['settings'])} changes nothing measurable: the baseline's loss at every step, bit for "
            f"bit, the same peak memory, and a speed ratio shown equivalent to 1 ({sp['ci_low']:.3f}, "
            f"{sp['ci_high']:.3f}, within ±{band * 100:g}%)"
        )
    c.update(
        convergence(
            base["repeats"], t["repeats"], val_loss_tol_pct, base.get("val_windows"), t.get("val_windows")
        )
    )
    iso_b, iso_v = _isolated(extra_runs, "baseline", base["seed"]), _isolated(extra_runs, v, t["seed"])
    if iso_b and iso_v and t["phase"] == "concurrent":
        iso = block_bootstrap_ratio_ci(iso_b["step_times"][skip:], iso_v["step_times"][skip:], seed=seed)
        c["isolated_speedup"] = iso
        c["concurrent_vs_isolated_pct"] = (
            (conc["ratio"] / iso["ratio"] - 1) * 100 if iso["ratio"] and conc["ratio"] else None
        )
    return c


def _identical(a: dict, b: dict) -> bool:
    """Whether two runs trained bit-identically (every step's loss and every val point equal)."""
    return (
        bool(a.get("losses")) and a["losses"] == b.get("losses") and a.get("val_curve") == b.get("val_curve")
    )


def _isolated(extra_runs, variant: str, seed: int) -> dict | None:
    """The isolated re-run (alone on the machine) of `variant` with `seed`, if the run made one."""
    return next(
        (
            x
            for x in extra_runs
            if x["variant"] == variant and x.get("phase") == "isolated" and x["seed"] == seed
        ),
        None,
    )


def speed_claim(
    base: dict, t: dict, trial: list[dict] | None, confidence: float, max_replicates: int | None = None
) -> dict:
    """The speedup of variant `t` over `base` from the paired speed trial, with its raw pairs (so it
    recomputes from report.json) and the no-op check: a variant that runs the baseline's own stack is no
    speedup whatever the trial measured. A sequential trial (replicates carry their `look`) is judged at its
    last look's spent confidence (stats.sequential_speedup); a trial of one fixed size at `confidence`."""
    reps = trial or []
    if max_replicates and reps and all(x.get("look") is not None for x in reps):
        looks = looks_of(reps)
        sp = sequential_speedup([x["pairs"] for x in reps], looks, max_replicates, confidence=confidence)
    else:
        sp = paired_speedup([x["pairs"] for x in reps], confidence=confidence)
    noop = same_stack(base["settings"], t["settings"])
    return {
        "speedup": sp,
        "speedup_basis": "paired speed trial: both stacks train side by side in one process on the same "
        "cores, timed in ABBA / BAAB blocks; per-pair ratio = baseline block time / variant block time; "
        f"{sp['method'] if sp.get('ratio') else 'not measured'}",
        "noop": noop,
        "noop_reason": (
            f"{'auto kept' if t.get('auto') else 'configured as'} the baseline's own stack "
            f"({stack_label(t['settings'])}): the same code, so no speedup can be claimed"
            if noop
            else None
        ),
        "speed_trial": {
            "replicates": [{k: x.get(k) for k in TRIAL_REPLICATE_KEYS} for x in reps],
            "max_replicates": max_replicates,
            "confidence": confidence,
        },
    }


def looks_of(reps: list[dict]) -> list[int]:
    """Replicates counted at each look of a sequential trial (each replicate carries the look it was run in)."""
    per: dict[int, int] = {}
    for x in reps:
        per[x["look"]] = per.get(x["look"], 0) + 1
    out, n = [], 0
    for k in sorted(per):
        n += per[k]
        out.append(n)
    return out


def stack_label(settings: dict) -> str:
    """A stored stack in one line (today's converters, or a pre-converter report's switches)."""
    return OptimizationSettings.from_dict(settings).label()


def convergence(
    base_runs: list[dict],
    var_runs: list[dict],
    fixed_tol_pct: float,
    base_windows: list[float] | None = None,
    var_windows: list[float] | None = None,
    confidence: float = 0.95,
) -> dict:
    """|Δ val loss| between the variant and the baseline, and the tolerance it is held to.

    With one seed the tolerance is the configured one, and the signed change (+ = the variant's loss is higher)
    gets an interval from the val windows: both final models are scored on the same fixed windows, so the
    windows pair, and Student's t over the per-window differences (relative to the baseline's mean) says how
    far the change could be on this distribution of text. With >= 2 seeds of the baseline the tolerance is
    derived from seed-to-seed variance, like MLPerf's reference convergence points: 2 standard deviations of the
    baseline's final val loss, relative to its mean (the spread a different seed alone produces ~95% of the
    time), and the seed means are compared as measured."""
    b = [x["val_loss"] for x in base_runs if x["val_loss"] is not None and math.isfinite(x["val_loss"])]
    o = [x["val_loss"] for x in var_runs if x["val_loss"] is not None and math.isfinite(x["val_loss"])]
    out = {
        "val_loss_delta_pct": pct_change_abs(float(np.mean(o)), float(np.mean(b)))
        if b and o and len(o) == len(var_runs)
        else None,
        "val_loss_seeds": len(b),
    }
    paired = (
        len(b) == 1
        and base_windows
        and var_windows
        and len(base_windows) == len(var_windows) >= 2
        and all(map(math.isfinite, var_windows))
    )
    if paired:
        bw, d = np.asarray(base_windows), np.asarray(var_windows) - np.asarray(base_windows)
        scale = 100.0 / float(bw.mean())
        half = t_half_width(d, confidence)
        out["val_loss_change_pct"] = float(d.mean()) * scale
        out["val_loss_change_ci"] = [float(d.mean() - half) * scale, float(d.mean() + half) * scale]
        out["val_loss_change_basis"] = (
            f"signed change over {d.size} val windows paired by window; {confidence * 100:g}% Student-t interval"
        )
    if len(b) >= 2:
        sd = float(np.std(b, ddof=1))
        out["val_loss_tolerance_pct"] = 2 * sd / float(np.mean(b)) * 100.0
        out["val_loss_tolerance_basis"] = f"2 x seed-to-seed std of baseline val loss over {len(b)} seeds"
    else:
        out["val_loss_tolerance_pct"] = fixed_tol_pct
        out["val_loss_tolerance_basis"] = "targets.val_loss_delta_pct_max (one seed)"
    return out
