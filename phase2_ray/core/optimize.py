"""KernelOptimizer: the optimization stack a variant asks for, applied where the hardware supports it, and recorded."""

from __future__ import annotations

import contextlib

import torch

from phase2_ray.core.specs import OptimizationSettings


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

    def step_context(self) -> contextlib.ExitStack:
        """Context for each forward pass: bf16 autocast and the SDPA backend, as configured."""
        stack = contextlib.ExitStack()
        self.applied["bf16_autocast"] = self.settings.bf16
        if self.settings.bf16:
            stack.enter_context(torch.autocast(device_type=self.device.type, dtype=torch.bfloat16))
        backend = self.settings.sdpa_backend
        self.applied["sdpa_backend"] = backend
        if backend != "default":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            kinds = {
                "math": SDPBackend.MATH,
                "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION,
            }
            if backend not in kinds:
                raise ValueError(f"sdpa_backend {backend!r} is not one of default, {', '.join(kinds)}")
            stack.enter_context(sdpa_kernel(kinds[backend]))
        return stack
