"""Stages 2a/2b: one Ray actor per variant runs the pure-PyTorch training loop and returns metrics + checkpoint.

Everything returned from `train` belongs to the driver's object store, so it outlives the actor."""

from __future__ import annotations

import os
import socket
import time

import psutil
import ray
import torch

from phase2_ray.core.checkpoint import checkpoint_files
from phase2_ray.core.model import GPTConfig
from phase2_ray.core.optimize import OptimizationSettings
from phase2_ray.core.train import TrainSettings, train


@ray.remote
class TrainerActor:
    def __init__(self, cpu_set: list[int] | None) -> None:
        # A reused worker keeps its old torch thread count: set it from what Ray actually assigned.
        assigned = ray.get_runtime_context().get_assigned_resources()
        threads = max(1, int(assigned.get("CPU", 1)))
        torch.set_num_threads(threads)
        pinned = None
        if cpu_set:
            # Logical CPUs do not isolate; affinity does, so two concurrent actors never share a core.
            psutil.Process().cpu_affinity(cpu_set)
            pinned = cpu_set
        self.placement = {
            "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "torch_threads": torch.get_num_threads(),
            "cpu_affinity": pinned,
            "assigned_resources": assigned,
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
        log_every: int,
    ) -> dict:
        start = time.time()
        steps = settings["steps"]

        def log(step: int, loss: float, dt: float) -> None:
            if log_every and (step % log_every == 0 or step == steps):
                print(f"[{variant}] step {step}/{steps} loss {loss:.4f} step {dt * 1000:.1f} ms", flush=True)

        res = train(
            GPTConfig(**model_cfg),
            TrainSettings(**settings),
            OptimizationSettings(**optim),
            train_tokens,
            val_tokens,
            on_step=log,
        )
        files = checkpoint_files(
            res.model,
            {**meta, "variant": variant, "step": res.steps, "model": model_cfg, "optimizations": res.applied},
            tokenizer_json,
        )
        return {
            "variant": variant,
            "start": start,
            "end": time.time(),
            "placement": self.placement,
            "params": res.params,
            "steps": res.steps,
            "tokens": res.tokens,
            "status": res.status,
            "error": res.error,
            "losses": res.losses,
            "step_times": res.step_times,
            "val_curve": res.val_curve,
            "applied": res.applied,
            "train_s": res.train_s,
            "data_order_sha256": res.data_order_sha256,
            "checkpoint": files,
        }
