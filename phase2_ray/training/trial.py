"""The speedup measurement: paired, interleaved trials (core.speedtrial) of each variant's stack, as trained
(`auto`'s choice included), against the baseline's, replicated with fresh models over the free cores."""

from __future__ import annotations

import os
import time

import ray
import torch

from phase2_ray.config import Config
from phase2_ray.core.model import GPTConfig
from phase2_ray.core.specs import OptimizationSettings, same_stack
from phase2_ray.core.speedtrial import TrialSettings, paired_trial
from phase2_ray.core.train import TrainSettings
from phase2_ray.dataprep import PreparedData
from phase2_ray.devices import assigned_device
from phase2_ray.records import Stage, TrainResult
from phase2_ray.report.stats import sequential_speedup
from phase2_ray.report.training import looks_of
from phase2_ray.report.verdict import INCONCLUSIVE, judge
from phase2_ray.runlog import RunLog, error_text
from phase2_ray.training.actors import loop_settings
from phase2_ray.training.placement import node_cores, pin_all_threads


@ray.remote
def speed_trial(
    model_cfg: GPTConfig,
    settings: TrainSettings,
    baseline: dict,
    variants: dict[str, dict],
    train_tokens: torch.Tensor,
    trial: dict,
    replicates: list[tuple[int, int, bool]],
    cores: list[int] | None,
    init_state: dict | None = None,
) -> dict[str, list[dict]]:
    """Paired speed trials (core.speedtrial) of every variant's stack against the baseline's, one per
    (replicate index, seed, A built first), on `cores` when given. Returns {variant: [replicate result]}; each replicate
    builds fresh models."""
    assigned = ray.get_runtime_context().get_assigned_resources()
    torch.set_num_threads(max(1, int(assigned.get("CPU", 1))))
    before = sorted(os.sched_getaffinity(0)) if cores else None
    if cores:
        pin_all_threads(cores)
    device = assigned_device()
    out: dict[str, list[dict]] = {v: [] for v in variants}
    try:
        for index, seed, a_first in replicates:
            for v, stack in variants.items():
                r = paired_trial(
                    model_cfg,
                    settings,
                    OptimizationSettings.from_dict(baseline),
                    OptimizationSettings.from_dict(stack),
                    train_tokens,
                    TrialSettings(**trial, seed=seed, a_first=a_first),
                    device=device,
                    init_state=init_state,
                )
                r.update(
                    seed=seed,
                    replicate=index,
                    cores=cores,
                    pid=os.getpid(),
                    node_id=ray.get_runtime_context().get_node_id(),
                    device=device,
                )
                out[v].append(r)
    finally:
        if before:
            pin_all_threads(before)  # this worker process may run other tasks next
    return out


def replicate_plan(indices: range, n_slots: int, seed: int) -> list[list[tuple[int, int, bool]]]:
    """(index, seed, A built first) per replicate, per core set. Which model is built first alternates within
    every core set and between them, so it is balanced over the run; the seed shuffles the pairs' orders."""
    per_slot: list[list[tuple[int, int, bool]]] = [[] for _ in range(n_slots)]
    for i in indices:
        j, m = i % n_slots, i // n_slots
        per_slot[j].append((i, seed * 1000 + i, (m + j) % 2 == 0))
    return per_slot


def undecided(
    reps: list[dict], max_replicates: int, confidence: float, speedup_min: float
) -> tuple[bool, dict]:
    """Whether a variant's speedup interval still straddles the target after its latest look (the
    sequential rule the report applies: stats.sequential_speedup, verdict.judge), and that interval."""
    sp = sequential_speedup([x["pairs"] for x in reps], looks_of(reps), max_replicates, confidence=confidence)
    return judge(sp["ci_low"], sp["ci_high"], ">=", speedup_min) == INCONCLUSIVE, sp


def _still_undecided(
    cfg: Config,
    base_settings: dict,
    active: dict[str, dict],
    out: dict[str, list[dict]],
    look: int,
    log: RunLog,
) -> dict[str, dict]:
    """After a look: the variants whose interval still straddles targets.speedup_min within the replicate budget
    (each look logged). A no-op is rejected whatever it measures: no more evidence can change that."""
    sp, left = cfg.speed_trial, {}
    for v, settings in active.items():
        if same_stack(base_settings, settings):
            continue
        more, s = undecided(out[v], sp.max_replicates, sp.confidence, cfg.targets.speedup_min)
        log.event(
            "trial.look",
            f"speed trial look {look}: {v} {s['ratio']:.3f}x [{s['ci_low']:.3f}, {s['ci_high']:.3f}] "
            f"after {len(out[v])} replicates"
            + (" (straddles the target: more replicates)" if more else " (decided)"),
            variant=v,
            look=look,
            replicates=len(out[v]),
        )
        if more:
            left[v] = settings
    return left


def run_speed_trial(
    cfg: Config, training: dict[str, TrainResult], d: PreparedData, log: RunLog, st: Stage
) -> dict[str, list[dict]]:
    """Fills `st` (already listed as running, so an interrupt marks it); returns {variant: [replicate results]}.

    Sequential: a first look of `speed_trial.replicates`, then `look_replicates` more for each variant whose
    interval still straddles targets.speedup_min, until it clears it, the replicate budget is spent, or the next
    look would end past `max_s`. Every look's interval is at its spent alpha (stats.look_levels), so looking
    again does not raise the error rate. A variant that runs the baseline's own stack gets one look: it is
    rejected whatever it measures."""
    base = training.get("baseline")
    variants = {v: r.settings for v, r in training.items() if v != "baseline" and r.status == "ok"}
    if base is None or base.status != "ok" or not variants:
        st.status, st.end, st.detail = "skipped", time.time(), "no pair of trained variants to compare"
        return {}
    pc, sp = cfg.training.placement, cfg.speed_trial
    cores = node_cores(pc.pin_cpus)
    per = pc.cpus_per_actor
    slots: list[list[int] | None] = (
        [cores[i * per : (i + 1) * per] for i in range(len(cores) // per)] if cores else [None, None]
    )
    slots = slots[: sp.replicates] or [None]
    trial = {"pairs": sp.pairs, "block_steps": sp.block_steps, "warmup_steps": sp.warmup_steps}
    model = GPTConfig(**cfg.model.gpt_fields(d.vocab_size))
    log.event(
        "trial.start",
        f"speed trial: {', '.join(variants)} vs baseline, {sp.replicates} replicates first (up to "
        f"{sp.max_replicates}, {sp.max_s:g} s) x {sp.pairs} ABBA pairs of {sp.block_steps}-step blocks on "
        f"{len(slots)} core set(s)",
    )
    tokens = ray.put(d.train_tokens)
    init = ray.put(d.init.state) if d.init else None  # the trained models' starting weights, timed alike
    out: dict[str, list[dict]] = {v: [] for v in variants}
    active = dict(variants)
    refs: list = []
    look, done, t0, last = 0, 0, time.time(), None
    try:
        while active:
            n = min(sp.replicates if look == 0 else sp.look_replicates, sp.max_replicates - done)
            if n <= 0:
                break
            if last is not None and time.time() - t0 + last[0] * n / last[1] > sp.max_s:
                log.event("trial.budget", f"speed trial: time budget {sp.max_s:g} s reached")
                break
            started = time.time()
            plan = replicate_plan(range(done, done + n), len(slots), cfg.training.seed)
            refs = [
                speed_trial.options(num_cpus=per, num_gpus=pc.gpus_per_actor).remote(
                    model,
                    loop_settings(cfg.training, cfg.training.seed),
                    base.settings,
                    active,
                    tokens,
                    trial,
                    plan[i],
                    slot,
                    init,
                )
                for i, slot in enumerate(slots)
                if plan[i]
            ]
            for part in ray.get(refs):
                for v, reps in part.items():
                    out[v] += [{**r, "look": look} for r in reps]
            done, look, last = done + n, look + 1, (time.time() - started, n)
            active = _still_undecided(cfg, base.settings, active, out, look, log)
        st.status = "ok"
    except ray.exceptions.RayError as e:
        st.status, st.detail = "failed", error_text(e)
        out = {}
    finally:
        if st.status != "ok":  # failed or interrupted: on a shared cluster nothing else would stop them
            for ref in refs:
                ray.cancel(ref, force=True)
    st.end = time.time()
    log.event("trial.done", f"speed trial: {st.status} in {st.end - st.start:.1f}s", status=st.status)
    return out
