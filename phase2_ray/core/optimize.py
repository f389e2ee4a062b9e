"""KernelOptimizer: the optimization stack a variant asks for, applied where the hardware supports it, and recorded."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(kw_only=True)
class OptimizationSettings:
    compile: bool = False
    """Wrap the model in torch.compile (inductor)."""
    compile_mode: str = "default"
    """torch.compile mode: default, reduce-overhead or max-autotune."""
    fused_adamw: bool = False
    """Use AdamW's fused kernel (one kernel over all parameters) instead of the per-tensor loop."""
    bf16: bool = False
    """bfloat16 autocast for the forward pass (AMX on CPU, tensor cores on GPU); loss stays fp32."""


class KernelOptimizer:
    """Applies OptimizationSettings to a model and its optimizer; `applied` says what actually took effect."""

    def __init__(self, settings: OptimizationSettings, device: torch.device) -> None:
        self.settings = settings
        self.device = device
        self.applied: dict[str, object] = {}

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to run training steps with (the same parameters as `model`)."""
        if not self.settings.compile:
            self.applied["compile"] = False
            return model
        self.applied["compile"] = self.settings.compile_mode
        return torch.compile(model, mode=self.settings.compile_mode)

    def make_optimizer(
        self, model: torch.nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float]
    ) -> torch.optim.AdamW:
        # Decay matrices only; norms' gains and biases are left alone (GPT-2 / nanoGPT practice).
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = self.settings.fused_adamw
        self.applied["fused_adamw"] = fused
        # foreach=False pins the baseline to the plain per-tensor loop so the comparison is explicit.
        kwargs = {"fused": True} if fused else {"foreach": False}
        return torch.optim.AdamW(groups, lr=lr, betas=betas, **kwargs)

    def autocast(self) -> contextlib.AbstractContextManager:
        on = self.settings.bf16
        self.applied["bf16_autocast"] = on
        if not on:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
