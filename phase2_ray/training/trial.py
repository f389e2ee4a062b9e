"""The speedup measurement: paired, interleaved trials (core.speedtrial) of each variant's stack, as trained
(`auto`'s choice included), against the baseline's, replicated with fresh models over the free cores."""

from __future__ import annotations

import os
import time

import ray
import torch

from phase2_ray.config import Config
from phase2_ray.core.model import GPTConfig
from phase2_ray.core.optimize import OptimizationSettings
from phase2_ray.core.speedtrial import TrialSettings, paired_trial
from phase2_ray.core.train import TrainSettings
from phase2_ray.dataprep import PreparedData
from phase2_ray.devices import assigned_device
from phase2_ray.records import Stage, TrainResult
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
                    OptimizationSettings(**baseline),
                    OptimizationSettings(**stack),
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


def replicate_plan(replicates: int, n_slots: int, seed: int) -> list[list[tuple[int, int, bool]]]:
    """(index, seed, A built first) per replicate, per core set. Which model is built first alternates within
    every core set and between them, so it is balanced over the run; the seed shuffles the pairs' orders."""
    per_slot: list[list[tuple[int, int, bool]]] = [[] for _ in range(n_slots)]
    for i in range(replicates):
        j, m = i % n_slots, i // n_slots
        per_slot[j].append((i, seed * 1000 + i, (m + j) % 2 == 0))
    return per_slot


def run_speed_trial(
    cfg: Config, training: dict[str, TrainResult], d: PreparedData, log: RunLog, st: Stage
) -> dict[str, list[dict]]:
    """Fills `st` (already listed as running, so an interrupt marks it); returns {variant: [replicate results]}."""
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
    plan = replicate_plan(sp.replicates, len(slots), cfg.training.seed)
    trial = {"pairs": sp.pairs, "block_steps": sp.block_steps, "warmup_steps": sp.warmup_steps}
    model = GPTConfig(**cfg.model.gpt_fields(d.vocab_size))
    log.event(
        "trial.start",
        f"speed trial: {', '.join(variants)} vs baseline, {sp.replicates} replicates x {sp.pairs} ABBA pairs "
        f"of {sp.block_steps}-step blocks on {len(slots)} core set(s)",
    )
    tokens = ray.put(d.train_tokens)
    init = ray.put(d.init.state) if d.init else None  # the trained models' starting weights, timed alike
    refs = [
        speed_trial.options(num_cpus=per, num_gpus=pc.gpus_per_actor).remote(
            model,
            loop_settings(cfg.training, cfg.training.seed),
            base.settings,
            variants,
            tokens,
            trial,
            plan[i],
            slot,
            init,
        )
        for i, slot in enumerate(slots)
    ]
    out: dict[str, list[dict]] = {v: [] for v in variants}
    try:
        for part in ray.get(refs):
            for v, reps in part.items():
                out[v] += reps
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
