"""Stages 2a/2b on Ray: one actor per training run drives the pure-PyTorch loop (core.train) and returns a
TrainResult with its checkpoint. Everything returned from `train` belongs to the driver's object store, so it
outlives the actor. The driver's helper actors it talks to (core pool, start barrier, state store) are
training/coordination.py."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import ray
import torch

from phase2_ray.config import ModelConfig, TrainingConfig, VariantConfig
from phase2_ray.core.autotune import candidate_level, probe, select_stack
from phase2_ray.core.checkpoint import checkpoint_files
from phase2_ray.core.flops import measure_peak_flops
from phase2_ray.core.memory import peak_training_memory
from phase2_ray.core.model import GPTConfig
from phase2_ray.core.specs import OptimizationSettings, tokens_per_step
from phase2_ray.core.train import STATE_META, STATE_TENSORS, TrainSettings, train
from phase2_ray.devices import assigned_device
from phase2_ray.records import TrainJob, TrainResult
from phase2_ray.storage import get_checkpoint, join, put_checkpoint
from phase2_ray.telemetry import TrainTelemetry
from phase2_ray.training.placement import CoreRotation, pin_all_threads


def loop_settings(training: TrainingConfig, seed: int) -> TrainSettings:
    """The core loop's settings: the training section's own fields (its sub-sections are not the loop's)."""
    names = {f.name for f in fields(TrainSettings)}
    return TrainSettings(**{**training.model_dump(include=names), "seed": seed})


@dataclass
class TrainSpec:
    """What a training actor is asked to do: one job, with the config's own sections (not rebuilt dicts)."""

    run_id: str
    job: TrainJob
    model: ModelConfig
    vocab_size: int
    training: TrainingConfig
    stack: VariantConfig
    optim: OptimizationSettings
    """The variant's stack, resolved (converters imported and hashed by the driver)."""
    auto_candidates: dict[str, OptimizationSettings] | None
    """What `auto` tries (stacks.auto_candidates), when the variant asks for it."""
    tokenizer_json: str
    config_json: dict[str, Any]
    """The run's redacted config, kept in the checkpoint's metadata."""
    progress: str = "off"
    """bar (a person at a terminal), lines (a plain line per interval: CI logs, `ray job logs`) or off."""
    storage_uri: str | None = None
    """Set when checkpoints and saved states go to storage instead of the object store."""
    chat_template: str | None = None
    """model.init_from's chat template, kept in the checkpoint's metadata (serving applies it to chat requests)."""


@dataclass
class TrainHandles:
    """The driver's helper actors a training run uses, each optional."""

    core_pool: Any = None
    state_store: Any = None
    barrier: Any = None
    rotation: dict | None = None
    """{"slots", "index", "period_s"}: this run's place in a shared core rotation."""


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
        self.barrier_passed = False

    def train(
        self,
        spec: TrainSpec,
        handles: TrainHandles,
        train_tokens: torch.Tensor,
        val_tokens: torch.Tensor,
        init_state: dict | None = None,
    ) -> TrainResult:
        start = time.time()
        # Logical CPUs do not isolate; affinity does, so concurrent actors never share a core. Either all
        # concurrent actors rotate through the cores together (crossover), or each holds cores from the pool.
        rot = handles.rotation
        rotation = CoreRotation(rot["slots"], rot["index"], rot["period_s"]) if rot else None
        pool = None if rotation else handles.core_pool
        key, store = spec.job.key, handles.state_store
        # A restarted actor (its process died) finds its own cores, attempt count and saved state again.
        cores = ray.get(pool.acquire.remote(self.threads, key)) if pool is not None else None
        attempt, first_start = ray.get(store.begin.remote(key, os.getpid())) if store else (1, start)
        saved = ray.get(store.get.remote(key)) if store else None
        try:
            if rotation:
                rotation.tick(time.time())
            elif cores:
                pin_all_threads(cores)
            # A rotating actor has no fixed cores: its placement is its slot index in the shared rotation.
            self.placement["cpu_affinity"] = None if rotation else cores
            self.barrier_passed = False
            try:
                out = self._train(
                    spec, handles, train_tokens, val_tokens, first_start, rotation, saved, init_state
                )
            except BaseException:
                if handles.barrier is not None and not self.barrier_passed:
                    handles.barrier.wait.remote()  # arrive anyway, so the others start instead of waiting
                raise
            if rotation:
                rotation.tick(time.time())
                out.placement["core_rotation"] = {
                    "slots": rotation.slots,
                    "index": rotation.index,
                    "period_s": rotation.period_s,
                    "switches": rotation.switches,
                    "seconds_on": rotation.seconds_on,
                }
            out.restarts = attempt - 1
            out.phase = spec.job.phase
            return out
        finally:
            if cores:
                pool.release.remote(key)

    def _choose_stack(
        self, spec: TrainSpec, gpt_cfg, settings, train_tokens, rotation, saved, label, init_state=None
    ):
        """(stack as a dict, auto's probe record, state to resume from): a resumed run continues as its first
        attempt chose (no second probe); `auto` probes the candidates on this hardware; else the config's."""
        stack = asdict(spec.optim)
        if saved is not None:
            state = saved["state"]
            resume = get_checkpoint(state["uri"], (STATE_TENSORS, STATE_META)) if "uri" in state else state
            print(
                f"[{label}] resuming from step {saved['step']} (a previous attempt's saved state)", flush=True
            )
            return dict(saved["info"]["optim"]), saved["info"]["auto"], resume
        if not spec.stack.auto:
            return stack, None, None
        ac = spec.training.auto
        t0 = time.perf_counter()
        results = probe(
            gpt_cfg,
            settings,
            spec.auto_candidates,
            train_tokens,
            ac.probe_steps,
            # Keep rotating with the other actors while probing, or this actor would squat on their core.
            on_step=(lambda *_: rotation.tick(time.time())) if rotation else None,
            device=assigned_device(),
            init_state=init_state,
            rounds=ac.rounds,
            block_steps=ac.block_steps,
            seed=spec.training.seed,
        )
        chosen = select_stack(results, ac.tolerance_pct, ac.min_gain_pct)
        probe_info = {
            "chosen": chosen.name,
            "probe_s": time.perf_counter() - t0,
            "steps": ac.probe_steps,
            "rounds": ac.rounds,
            "block_steps": ac.block_steps,
            "tolerance_pct": ac.tolerance_pct,
            "min_gain_pct": ac.min_gain_pct,
            "candidate_confidence": candidate_level(len(results) - 1),  # the level select_stack judged at
            "candidates": [r.to_dict() for r in results],
        }
        why = (
            f"{chosen.speedup:.3f}x [{chosen.ci_low:.3f}, {chosen.ci_high:.3f}]"
            if chosen.speedup
            else "the reference"
        )
        print(f"[{label}] auto chose {chosen.name} ({why})", flush=True)
        return dict(chosen.settings), probe_info, None

    def _wait_for_start(self, barrier, rotation) -> float:
        """Seconds spent at the start barrier: the concurrent runs' timed loops start together."""
        if barrier is None:
            return 0.0
        t_wait = time.perf_counter()
        ray.get(barrier.wait.remote())
        self.barrier_passed = True
        if rotation is not None:
            rotation.tick(time.time())
        return time.perf_counter() - t_wait

    def _train(
        self,
        spec: TrainSpec,
        handles: TrainHandles,
        train_tokens,
        val_tokens,
        start,
        rotation,
        saved,
        init_state,
    ):
        job, tc = spec.job, spec.training
        label = f"{job.variant} seed {job.seed}"
        model_cfg = spec.model.gpt_fields(spec.vocab_size)
        gpt_cfg = GPTConfig(**model_cfg)
        settings = loop_settings(tc, job.seed)
        tele, on_step = _telemetry(spec, label, settings, gpt_cfg.block_size, rotation)
        device = assigned_device()
        optim, probe_info, resume = self._choose_stack(
            spec, gpt_cfg, settings, train_tokens, rotation, saved, label, init_state
        )
        stack = OptimizationSettings.from_dict(optim)
        if rotation is not None:
            rotation.tick(time.time())
        peaks = _peak_flops(stack, device)
        waited = self._wait_for_start(handles.barrier, rotation)
        store = handles.state_store
        save_state = _state_saver(spec, store, {"optim": optim, "auto": probe_info})

        try:
            res, trained = train(
                gpt_cfg,
                settings,
                stack,
                train_tokens,
                val_tokens,
                on_step=on_step,
                device=device,
                resume=resume,
                checkpoint_every=tc.fault_tolerance.checkpoint_every if store else 0,
                on_checkpoint=save_state,
                init_state=init_state,
            )
        finally:
            tele.close()
        files, uri = self._checkpoint(spec, res, trained, model_cfg)
        memory = None
        if res.status == "ok" and job.primary:
            memory = _memory_of_a_step(gpt_cfg, settings, stack, train_tokens, device, init_state)
        # the loop's record, completed with where and how it ran
        return replace(
            res,
            variant=job.variant,
            seed=job.seed,
            start=start,
            end=time.time(),
            placement=dict(self.placement),
            model=model_cfg,
            settings=asdict(stack),
            auto=probe_info,
            peak_memory=memory,
            start_barrier_wait_s=waited,
            peak_flops=peaks,
            checkpoint=files,
            checkpoint_uri=uri,
            **_device_fields(device),
        )

    @staticmethod
    def _checkpoint(
        spec: TrainSpec, res: TrainResult, trained, model_cfg: dict
    ) -> tuple[dict[str, bytes] | None, str | None]:
        """(files through the object store, or their storage URI): only a variant's primary run keeps one."""
        if not spec.job.primary:
            return None, None  # a further seed or an isolated re-run: only its metrics matter
        meta = {
            "run_id": spec.run_id,
            "config": spec.config_json,
            "variant": spec.job.variant,
            "step": res.steps,
            "model": model_cfg,
            "optimizations": res.applied,
        }
        if spec.chat_template:
            meta["chat_template"] = spec.chat_template
        files = checkpoint_files(trained, meta, spec.tokenizer_json)
        if spec.storage_uri:
            # Too large for the object store (the user says): the weights go to storage, only the URI travels.
            return None, put_checkpoint(files, join(spec.storage_uri, spec.job.variant))
        return files, None


def _telemetry(spec: TrainSpec, label: str, settings, block_size: int, rotation):
    """The actor's progress (bar, log lines, Ray metrics) and the loop's per-step callback, which also keeps the
    core rotation going."""
    tc = spec.training
    tele = TrainTelemetry(
        spec.run_id,
        spec.job.variant,
        label,
        settings.steps,
        tokens_per_step(settings.batch_size, block_size),
        spec.progress,
        interval_s=tc.progress_interval_s,
        log_every=tc.log_every,
    )

    def on_step(step: int, loss: float, dt: float) -> None:
        if rotation is not None:
            rotation.tick(time.time())
        tele.step(step, loss, dt)

    return tele, on_step


def _memory_of_a_step(gpt_cfg, settings, stack, train_tokens, device, init_state) -> dict:
    """Peak tensor memory of one steady step, on a fresh copy of the stack (the timed run is not tracked); a probe
    that raises loses the figure, not the training result."""
    try:
        return peak_training_memory(gpt_cfg, settings, stack, train_tokens, device, init_state)
    except Exception as e:
        return {"bytes": None, "method": None, "error": f"{type(e).__name__}: {e}"}


def _peak_flops(stack: OptimizationSettings, device: str) -> dict[str, float]:
    """The MFU denominator: best matmul rate in this process, with its threads and cores, per dtype it uses."""
    peaks = {"float32": measure_peak_flops(torch.float32, device=device)}
    if stack.has("bf16"):
        peaks["bfloat16"] = measure_peak_flops(torch.bfloat16, device=device)
    return peaks


def _device_fields(device: str) -> dict[str, Any]:
    cuda = device == "cuda"
    return {
        "device": device,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "cuda_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def _state_saver(spec: TrainSpec, store, info: dict):
    """on_checkpoint for the core loop: the state into the driver's store (or storage.uri, its URI in the store)."""

    def save_state(step: int, files: dict[str, bytes]) -> None:
        # Waits until the store has it: a process killed right after must not lose a state it announced.
        state: dict = files
        if spec.storage_uri:
            where = join(spec.storage_uri, "train-state", spec.job.key)
            state = {"uri": put_checkpoint(files, where, last=STATE_META)}
        ray.get(store.put.remote(spec.job.key, step, state, info))

    return save_state
