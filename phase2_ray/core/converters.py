"""Converters: an optimization stack as an ordered list of small objects with hooks where a stack touches training
and serving (the shape of torchtitan's `model.converters`). The built-ins are the first converters; a user's own
class, named in config, is applied and judged exactly like them. Pure PyTorch.

The protocol (a class need not inherit from `Converter`; it needs at least one hook):

    class MyConverter:
        changes_numerics: bool = True      # False: bit-for-bit the same training (the convergence gate is
                                           # then informative, not deciding)
        def __init__(self, **args): ...    # built with the config's `args`
        def convert(self, model: nn.Module) -> nn.Module: ...          # before training
        def optimizer(self, param_groups: list[dict], *, lr: float, betas: tuple[float, float],
                      weight_decay: float) -> torch.optim.Optimizer: ...
        def step_context(self) -> contextlib.AbstractContextManager: ...  # around each forward pass
        def serve(self, model: nn.Module) -> nn.Module: ...            # a loaded checkpoint, before serving

`convert` may change the model in place or wrap it (torch.compile does), but training updates the model's own
parameters: the checkpoint, the val loss and serving read the unwrapped model. Converters compose in order:
`convert` and `serve` chain, `step_context`s nest (the first outermost), and at most one converter builds the
optimizer (the baseline's is AdamW's plain per-tensor loop)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from phase2_ray.core.plugins import HOOKS, hooks_of, load_class


class Converter:
    """Optional base class: documents the hooks and marks those a subclass does not override as absent."""

    changes_numerics: bool = True

    def convert(self, model: nn.Module) -> nn.Module:
        return model

    def optimizer(
        self, param_groups: list[dict], *, lr: float, betas: tuple[float, float], weight_decay: float
    ) -> torch.optim.Optimizer:
        raise NotImplementedError

    def step_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def serve(self, model: nn.Module) -> nn.Module:
        return model


class Compile(Converter):
    """torch.compile (inductor) around the training model: the seed report's headline optimization."""

    def __init__(self, mode: str = "default") -> None:
        modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if mode not in modes:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(modes)}")
        self.mode = mode

    def convert(self, model: nn.Module) -> nn.Module:
        return torch.compile(model, mode=self.mode)


class FusedAdamW(Converter):
    """AdamW's fused kernel: one kernel over every parameter instead of a loop per tensor."""

    def optimizer(self, param_groups, *, lr, betas, weight_decay):
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)


class BF16(Converter):
    """bfloat16 autocast for the forward pass (AMX / AVX512-BF16 on CPU, tensor cores on GPU); the loss stays fp32."""

    device: str | None = None
    """The training device's type, set by the stack that runs it (autocast must name the device it casts on)."""

    def step_context(self):
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return torch.autocast(device_type=device, dtype=torch.bfloat16)


class SDPA(Converter):
    """Pins the attention kernel (math, flash or efficient) instead of letting PyTorch pick per call."""

    def __init__(self, backend: str = "math") -> None:
        from torch.nn.attention import SDPBackend

        kinds = {
            "math": SDPBackend.MATH,
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
        }
        if backend not in kinds:
            raise ValueError(f"backend {backend!r} is not one of {', '.join(kinds)}")
        self.backend, self.kind = backend, kinds[backend]

    def step_context(self):
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel(self.kind)


class Int8(Converter):
    """The SemanticCompressor for serving: int8 weights, one fp32 scale per output row, multiplied by PyTorch's
    int8 kernels (the one chosen by measurement where the model loads, unless `kernel` names one)."""

    def __init__(self, kernel: str = "auto") -> None:
        if kernel not in ("auto", "int8pack", "fbgemm"):
            raise ValueError(f"kernel {kernel!r} is not one of auto, int8pack, fbgemm")
        self.kernel = kernel
        self.info: dict = {}

    def serve(self, model: nn.Module) -> nn.Module:
        from phase2_ray.core.compress import SemanticCompressor

        device = str(next(model.parameters()).device)
        comp = SemanticCompressor(self.kernel, device)
        out = comp.compress_state(model.state_dict(), model.cfg)
        self.info = {"kernel": comp.kernel, "method": comp.method, **comp.choice}
        return out


BUILTINS: dict[str, type] = {
    "compile": Compile,
    "fused_adamw": FusedAdamW,
    "bf16": BF16,
    "sdpa": SDPA,
    "int8": Int8,
}
"""Stable names of the built-in converters (config, report.json and MLflow use these)."""


class ConverterFailed(RuntimeError):
    """A converter's hook raised: the message names the converter and the hook; the cause keeps its traceback."""


def build(spec: dict) -> Any:
    cls = load_class(spec)
    try:
        return cls(**spec.get("args", {}))
    except Exception as e:
        raise ConverterFailed(f"converter {spec['name']!r} ({spec['use']}) could not be built: {e}") from e


class ConverterStack:
    """A variant's converters, in order, applied where training and serving reach their hooks."""

    def __init__(self, specs: list[dict], device: torch.device | str | None = None) -> None:
        self.specs = list(specs)
        self.objs = [build(s) for s in self.specs]
        for o in self.objs:
            if isinstance(o, BF16) and device is not None:
                o.device = torch.device(device).type
        makers = [s["name"] for s, o in zip(self.specs, self.objs, strict=True) if _has(o, "optimizer")]
        if len(makers) > 1:
            raise ConverterFailed(f"converters {makers} each build the optimizer; a stack may have one")

    def _call(self, spec: dict, hook: str, fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except Exception as e:
            raise ConverterFailed(
                f"converter {spec['name']!r} ({spec['use']}) raised in {hook}: {type(e).__name__}: {e}"
            ) from e

    def _with(self, hook: str):
        return [(s, o) for s, o in zip(self.specs, self.objs, strict=True) if _has(o, hook)]

    def convert(self, model: nn.Module) -> nn.Module:
        """The module to run training steps with: every `convert`, in order."""
        out = model
        for s, o in self._with("convert"):
            out = self._call(s, "convert", o.convert, out)
            if not isinstance(out, nn.Module):
                raise ConverterFailed(
                    f"converter {s['name']!r}: convert returned {type(out).__name__}, not a module"
                )
        own = {id(p) for p in model.parameters()}
        if own - {id(p) for p in out.parameters()}:
            raise ConverterFailed(
                "the converted model does not train the model's own parameters: convert must change the model in "
                "place or wrap it (its checkpoint is the original model's weights)"
            )
        return out

    def optimizer(self, model: nn.Module, *, lr: float, betas: tuple[float, float], weight_decay: float):
        # Decay matrices only; norms' gains and biases are left alone (GPT-2 / nanoGPT practice).
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        for s, o in self._with("optimizer"):
            opt = self._call(
                s, "optimizer", o.optimizer, groups, lr=lr, betas=betas, weight_decay=weight_decay
            )
            if not isinstance(opt, torch.optim.Optimizer):
                raise ConverterFailed(f"converter {s['name']!r}: optimizer returned {type(opt).__name__}")
            return opt
        # foreach=False pins the baseline to the plain per-tensor loop so the comparison is explicit.
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay, foreach=False)

    def step_context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        try:
            for s, o in self._with("step_context"):
                stack.enter_context(self._call(s, "step_context", o.step_context))
        except BaseException:
            stack.close()  # the contexts entered before the one that failed are left again (autocast off)
            raise
        return stack

    def serve(self, model: nn.Module) -> nn.Module:
        for s, o in self._with("serve"):
            model = self._call(s, "serve", o.serve, model)
        return model

    @property
    def applied(self) -> list[dict]:
        """What ran: each converter's name, args and the hooks it has (plus what it reported, int8's kernel)."""
        out = []
        for s, o in zip(self.specs, self.objs, strict=True):
            d = {"name": s["name"], "args": s.get("args", {}), "hooks": [h for h in HOOKS if _has(o, h)]}
            if getattr(o, "info", None):
                d["info"] = o.info
            out.append(d)
        return out


def _has(obj: object, hook: str) -> bool:
    return hook in hooks_of(type(obj))
