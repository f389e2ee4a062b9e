"""Stages 2a/2b: one Ray actor per variant runs the pure-PyTorch training loop and returns metrics + checkpoint.

Everything returned from `train` belongs to the driver's object store, so it outlives the actor."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import asdict

import ray
import torch

from phase2_ray.core.autotune import candidate_stacks, probe, select_stack
from phase2_ray.core.checkpoint import checkpoint_files
from phase2_ray.core.flops import measure_peak_flops
from phase2_ray.core.model import GPTConfig
from phase2_ray.core.optimize import OptimizationSettings
from phase2_ray.core.speedtrial import TrialSettings, paired_trial
from phase2_ray.core.train import STATE_META, STATE_TENSORS, TrainSettings, train
from phase2_ray.placement import CoreAllocator, CoreRotation, pin_all_threads
from phase2_ray.stages.nodes import assigned_device
from phase2_ray.stages.telemetry import TrainTelemetry
from phase2_ray.storage import get_checkpoint, join, put_checkpoint

# Holds the node's free cores for the run; costs no CPU of its own.
CorePool = ray.remote(num_cpus=0)(CoreAllocator)


@ray.remote(num_cpus=0)
class StartBarrier:
    """Holds every concurrent actor until all have finished preparing (an `auto` probe, measuring the matmul peak), so
    their timed training loops run at the same time: a loop that starts later measures a different machine."""

    def __init__(self, parties: int, timeout_s: float = 900.0) -> None:
        self.timeout_s = timeout_s
        self.arrived = 0
        self.parties = parties
        self.all_in = asyncio.Event()

    async def wait(self) -> float:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.all_in.set()
        try:
            # A backstop: an actor that died before arriving must not hold the others forever.
            await asyncio.wait_for(self.all_in.wait(), timeout=self.timeout_s)
        except asyncio.TimeoutError:
            pass
        return time.time()


@ray.remote(num_cpus=0)
class TrainStateStore:
    """The latest saved training state of every run, in an actor the driver owns: it outlives a training actor's
    process, so the restarted actor (Ray retries its `train` call) resumes from there. With storage.uri only the
    state's URI is kept here."""

    def __init__(self) -> None:
        self.latest: dict[str, dict] = {}
        self.attempts: dict[str, list[dict]] = {}

    def begin(self, key: str, pid: int) -> tuple[int, float]:
        """Registers an attempt of run `key`; returns (attempt number from 1, start time of the first)."""
        self.attempts.setdefault(key, []).append({"pid": pid, "start": time.time()})
        return len(self.attempts[key]), self.attempts[key][0]["start"]

    def put(self, key: str, step: int, state: dict, info: dict) -> None:
        self.latest[key] = {"step": step, "state": state, "info": info}

    def get(self, key: str) -> dict | None:
        return self.latest.get(key)

    def export(self) -> dict[str, dict]:
        """Every run's latest state: what the driver writes to the run directory for `--resume`."""
        return self.latest

    def status(self) -> dict:
        """{run key: {"step": last saved step, "attempts": n, "pid": pid of the latest attempt}}."""
        return {
            k: {"step": self.latest.get(k, {}).get("step"), "attempts": len(a), "pid": a[-1]["pid"]}
            for k, a in self.attempts.items()
        }


@ray.remote
class TrainerActor:
    def __init__(self) -> None:
        # A reused worker keeps its old torch thread count: set it from what Ray actually assigned.
        assigned = ray.get_runtime_context().get_assigned_resources()
        self.threads = max(1, int(assigned.get("CPU", 1)))
        torch.set_num_threads(self.threads)
        self.placement = {
            "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "torch_threads": torch.get_num_threads(),
            "assigned_resources": assigned,
            "cpu_affinity": None,
        }

    def train(
        self,
        variant: str,
        model_cfg: dict,
        settings: dict,
        optim: dict,
        train_tokens: torch.Tensor,
        val_tokens: torch.Tensor,
        tokenizer_json: str,
        meta: dict,
        opts: dict,
    ) -> dict:
        start = time.time()
        # Logical CPUs do not isolate; affinity does, so concurrent actors never share a core. Either all
        # concurrent actors rotate through the cores together (crossover), or each holds cores from the pool.
        rot = opts.get("rotation")
        rotation = CoreRotation(rot["slots"], rot["index"], rot["period_s"]) if rot else None
        pool = None if rotation else opts.get("core_pool")
        key = opts.get("job_key", variant)
        # A restarted actor (its process died) finds its own cores, attempt count and saved state again.
        cores = ray.get(pool.acquire.remote(self.threads, key)) if pool is not None else None
        store = opts.get("state_store")
        attempt, first_start = ray.get(store.begin.remote(key, os.getpid())) if store else (1, start)
        saved = ray.get(store.get.remote(key)) if store else None
        start = first_start
        try:
            if rotation:
                rotation.tick(time.time())
            elif cores:
                pin_all_threads(cores)
            # A rotating actor has no fixed cores: its placement is its slot index in the shared rotation.
            self.placement["cpu_affinity"] = None if rotation else cores
            args = (variant, model_cfg, settings, optim, train_tokens, val_tokens, tokenizer_json, meta, opts)
            self.barrier_passed = False
            try:
                out = self._train(*args, start, rotation, saved)
            except BaseException:
                if opts.get("barrier") is not None and not self.barrier_passed:
                    opts["barrier"].wait.remote()  # arrive anyway, so the others start instead of waiting
                raise
            if rotation:
                rotation.tick(time.time())
                out["placement"]["core_rotation"] = {
                    "slots": rotation.slots,
                    "index": rotation.index,
                    "period_s": rotation.period_s,
                    "switches": rotation.switches,
                    "seconds_on": rotation.seconds_on,
                }
            out["restarts"] = attempt - 1
            return out
        finally:
            if cores:
                pool.release.remote(key)

    def _train(
        self,
        variant,
        model_cfg,
        settings,
        optim,
        train_tokens,
        val_tokens,
        tokenizer_json,
        meta,
        opts,
        start,
        rotation,
        saved,
    ):
        steps = settings["steps"]
        log_every = opts.get("log_every", 0)
        label = f"{variant} seed {settings['seed']}"

        tele = TrainTelemetry(
            opts.get("run_id", "?"),
            variant,
            label,
            steps,
            settings["batch_size"] * model_cfg["block_size"],
            bar=opts.get("progress", False),
        )

        def log(step: int, loss: float, dt: float) -> None:
            if rotation is not None:
                rotation.tick(time.time())
            tele.step(step, loss, dt)
            if log_every and (step % log_every == 0 or step == steps):
                print(f"[{label}] step {step}/{steps} loss {loss:.4f} step {dt * 1000:.1f} ms", flush=True)

        gpt_cfg, train_settings = GPTConfig(**model_cfg), TrainSettings(**settings)
        device = assigned_device()
        auto = optim.pop("auto", False)
        auto_compile = optim.pop("auto_compile", True)
        probe_info = None
        resume = None
        if saved is not None:
            # Continue as the first attempt chose: the same stack (no second `auto` probe), from its last state.
            optim, probe_info = dict(saved["info"]["optim"]), saved["info"]["auto"]
            state = saved["state"]
            resume = get_checkpoint(state["uri"], (STATE_TENSORS, STATE_META)) if "uri" in state else state
            print(
                f"[{label}] resuming from step {saved['step']} (a previous attempt's saved state)", flush=True
            )
        elif auto:
            t0 = time.perf_counter()
            results = probe(
                gpt_cfg,
                train_settings,
                candidate_stacks(include_compile=auto_compile),
                train_tokens,
                opts["auto_probe_steps"],
                # Keep rotating with the other actors while probing, or this actor would squat on their core.
                on_step=(lambda *_: rotation.tick(time.time())) if rotation else None,
                device=device,
            )
            chosen = select_stack(results, opts["auto_tolerance_pct"])
            optim = dict(chosen.settings)
            probe_info = {
                "chosen": chosen.name,
                "probe_s": time.perf_counter() - t0,
                "steps": opts["auto_probe_steps"],
                "tolerance_pct": opts["auto_tolerance_pct"],
                "candidates": [r.to_dict() for r in results],
            }
            print(f"[{label}] auto chose {chosen.name} ({chosen.median_step_ms:.1f} ms/step)", flush=True)
        settings_obj = OptimizationSettings(**optim)
        # The MFU denominator: best matmul rate in this process, with its threads and cores, per dtype it uses.
        if rotation is not None:
            rotation.tick(time.time())
        peaks = {"float32": measure_peak_flops(torch.float32, device=device)}
        if settings_obj.bf16:
            peaks["bfloat16"] = measure_peak_flops(torch.bfloat16, device=device)
        barrier = opts.get("barrier")
        waited = 0.0
        if barrier is not None:
            t_wait = time.perf_counter()
            ray.get(barrier.wait.remote())
            self.barrier_passed = True
            waited = time.perf_counter() - t_wait
            if rotation is not None:
                rotation.tick(time.time())
        store, key = opts.get("state_store"), opts.get("job_key", variant)
        info = {"optim": optim, "auto": probe_info}

        def save_state(step: int, files: dict[str, bytes]) -> None:
            # Waits until the store has it: a process killed right after must not lose a state it announced.
            state = files
            if opts.get("storage_uri"):
                state = {
                    "uri": put_checkpoint(
                        files, join(opts["storage_uri"], "train-state", key), last=STATE_META
                    )
                }
            ray.get(store.put.remote(key, step, state, info))

        try:
            res = train(
                gpt_cfg,
                train_settings,
                settings_obj,
                train_tokens,
                val_tokens,
                on_step=log,
                device=device,
                resume=resume,
                checkpoint_every=opts.get("checkpoint_every", 0) if store else 0,
                on_checkpoint=save_state,
            )
        finally:
            tele.close()
        files = checkpoint_files(
            res.model,
            {**meta, "variant": variant, "step": res.steps, "model": model_cfg, "optimizations": res.applied},
            tokenizer_json,
        )
        uri = None
        if not opts.get("keep_checkpoint", True):
            files = None  # a further seed or an isolated re-run: only its metrics matter
        elif opts.get("storage_uri"):
            # Too large for the object store (the user says): the weights go to storage, only the URI travels.
            uri = put_checkpoint(files, join(opts["storage_uri"], variant))
            files = None
        return {
            "variant": variant,
            "seed": settings["seed"],
            "start": start,
            "end": time.time(),
            "placement": dict(self.placement),
            "params": res.params,
            "model": model_cfg,
            "steps": res.steps,
            "tokens": res.tokens,
            "status": res.status,
            "error": res.error,
            "losses": res.losses,
            "step_times": res.step_times,
            "val_curve": res.val_curve,
            "applied": res.applied,
            "settings": asdict(settings_obj),
            "auto": probe_info,
            "start_barrier_wait_s": waited,
            "peak_flops": peaks,
            "device": device,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "cuda_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
            "train_s": res.train_s,
            "data_order_sha256": res.data_order_sha256,
            "resumed_from_step": res.resumed_from,
            "checkpoint": files,
            "checkpoint_uri": uri,
        }


@ray.remote
def speed_trial(
    model_cfg: dict,
    settings: dict,
    baseline: dict,
    variants: dict[str, dict],
    train_tokens: torch.Tensor,
    trial: dict,
    replicates: list[tuple[int, int, bool]],
    cores: list[int] | None,
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
                    GPTConfig(**model_cfg),
                    TrainSettings(**settings),
                    OptimizationSettings(**baseline),
                    OptimizationSettings(**stack),
                    train_tokens,
                    TrialSettings(**trial, seed=seed, a_first=a_first),
                    device=device,
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
