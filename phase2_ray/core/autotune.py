"""`auto` optimization: probe candidate stacks for a few steps on this hardware and model, keep the fastest that
learns like fp32 eager. The right stack depends on size and hardware, so it is measured, not assumed."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace

import torch

from phase2_ray.core.model import GPTConfig
from phase2_ray.core.optimize import OptimizationSettings
from phase2_ray.core.train import Trainer, TrainSettings

REFERENCE = "eager-fp32"


def candidate_stacks(include_compile: bool = True) -> dict[str, OptimizationSettings]:
    """The stacks `auto` tries; the first is the fp32 eager reference every other is judged against."""
    c = {
        REFERENCE: OptimizationSettings(),
        "fused": OptimizationSettings(fused_adamw=True),
        "fused+sdpa-math": OptimizationSettings(fused_adamw=True, sdpa_backend="math"),
        "fused+bf16": OptimizationSettings(fused_adamw=True, bf16=True),
    }
    if include_compile:
        c["compile+fused"] = OptimizationSettings(compile=True, fused_adamw=True)
        c["compile+fused+bf16"] = OptimizationSettings(compile=True, fused_adamw=True, bf16=True)
    return c


@dataclass
class ProbeResult:
    name: str
    settings: dict
    median_step_ms: float
    first_step_s: float
    """The first step's wall time: compile and warm-up, paid once per run."""
    mean_loss: float
    loss_delta_pct: float = 0.0
    accepted: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def probe(
    model_cfg: GPTConfig,
    settings: TrainSettings,
    candidates: dict[str, OptimizationSettings],
    train_tokens: torch.Tensor,
    steps: int,
    on_step=None,
    device: str | None = None,
    init_state: dict | None = None,
) -> list[ProbeResult]:
    """Runs every candidate for `steps` steps from the same init on the same batches, interleaved step by step
    (A, B, C, A, B, C, ...) so that the machine's drift over the probe hits all candidates alike."""
    probe_settings = replace(settings, steps=steps, warmup_steps=min(settings.warmup_steps, steps))
    trainers = {
        name: Trainer(model_cfg, probe_settings, opt, train_tokens, device, init_state)
        for name, opt in candidates.items()
    }
    for i in range(steps):
        for tr in trainers.values():
            loss = tr.train_step()
            if on_step is not None:
                on_step(i + 1, loss, tr.times[-1])
    out = []
    for name, tr in trainers.items():
        steady = tr.times[min(3, len(tr.times) - 1) :]
        out.append(
            ProbeResult(
                name=name,
                settings=asdict(candidates[name]),
                median_step_ms=statistics.median(steady) * 1000.0,
                first_step_s=tr.times[0],
                mean_loss=sum(tr.losses) / len(tr.losses),
            )
        )
    return out


def select_stack(results: list[ProbeResult], tolerance_pct: float) -> ProbeResult:
    """Marks each candidate accepted if its mean probe loss is within `tolerance_pct` of the reference's
    (the first result), then returns the fastest accepted one. The reference is always acceptable."""
    if not results:
        raise ValueError("no probe results to choose from")
    ref = results[0]
    for r in results:
        finite = r.mean_loss == r.mean_loss and abs(r.mean_loss) != float("inf")
        r.loss_delta_pct = (
            abs(r.mean_loss - ref.mean_loss) / abs(ref.mean_loss) * 100.0 if finite else float("inf")
        )
        r.accepted = r is ref or (finite and r.loss_delta_pct <= tolerance_pct)
    return min((r for r in results if r.accepted), key=lambda r: r.median_step_ms)
