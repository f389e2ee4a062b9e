"""Peak training memory as tensor bytes: what an optimization that trades memory for speed (activation
checkpointing, bf16, a quantized optimizer) changes. Measured on a steady training step of a fresh copy of the
variant's stack, so the timed training run is never slowed by the tracking.

On a GPU: torch.cuda.max_memory_allocated over that step. On the CPU there is no allocator counter, so PyTorch's
own MemTracker (a dispatch mode that follows every tensor storage's life) gives the peak of live tensor bytes:
parameters, gradients, optimizer state, activations and temporaries. Under torch.compile, dynamo steps aside
while a dispatch mode runs, so the CPU figure is then that of the eager graph (said in the result's `method`)."""

from __future__ import annotations

import warnings

import torch

from phase2_ray.core.model import GPTConfig
from phase2_ray.core.specs import OptimizationSettings
from phase2_ray.core.train import Trainer, TrainSettings


def peak_training_memory(
    model_cfg: GPTConfig,
    settings: TrainSettings,
    optim: OptimizationSettings,
    train_tokens: torch.Tensor,
    device: str | None = None,
    init_state: dict | None = None,
) -> dict:
    """{"bytes": peak tensor bytes of one steady training step, "method": how it was measured}. The first step
    (optimizer state allocated, compile done) is not measured; the second is."""
    from dataclasses import replace

    tr = Trainer(
        model_cfg, replace(settings, steps=2, warmup_steps=1), optim, train_tokens, device, init_state
    )
    tr.train_step()
    if tr.device.type == "cuda":
        torch.cuda.synchronize(tr.device)
        torch.cuda.reset_peak_memory_stats(tr.device)
        tr.train_step()
        torch.cuda.synchronize(tr.device)
        return {
            "bytes": int(torch.cuda.max_memory_allocated(tr.device)),
            "method": "torch.cuda.max_memory_allocated",
        }
    from torch.distributed._tools.mem_tracker import MemTracker

    mt = MemTracker()
    mt.track_external(tr.model, tr.opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.compile's note that the tracker's module hooks fire twice
        with mt:
            tr.train_step()
    peak = mt.get_tracker_snapshot("peak")
    total = sum(int(v.get("Total", 0)) for v in peak.values())
    compiled = optim.has("compile")
    method = "live tensor bytes (torch MemTracker)" + (
        ", eager graph: dynamo steps aside while tracking" if compiled else ""
    )
    return {"bytes": total, "method": method}
