"""The model's shape and a variant's optimization stack as plain dataclasses, without torch: the report, `phase2
report` and `phase2 compare` read them (MFU from the shape, the no-op check from the stacks) in processes that never
import torch. The modules that build models and optimizers import them from here."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(kw_only=True)
class GPTConfig:
    vocab_size: int
    """Tokenizer vocabulary size; the embedding and tied LM head have this many rows."""
    block_size: int = 128
    """Longest sequence (prompt + generated tokens) the model sees; sizes the position table."""
    n_layer: int = 2
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block; must divide d_model."""
    d_model: int = 48
    """Residual stream width."""
    dropout: float = 0.0
    """Dropout in attention and MLP (0 keeps both variants' numerics comparable)."""
    bias: bool = False
    """Biases on the attention and MLP projections (GPT-2 checkpoints have them; our own models do not)."""


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
    sdpa_backend: str = "default"
    """Attention kernel: default (PyTorch picks), math, flash or efficient."""
    delay_pct: float = 0.0
    """A calibration instrument, not an optimization: after each training step, busy-wait this percentage of the
    step's own compute time, so a known slowdown of this stack (true ratio 1 + delay_pct/100) can be placed
    anywhere to check the verdict (A/A runs, a known effect, an effect at the threshold)."""


def same_stack(a: OptimizationSettings | dict, b: OptimizationSettings | dict) -> bool:
    """Whether two stacks run the same code: the no-op check (a variant equal to its baseline is no speedup)."""

    def effective(x: OptimizationSettings | dict) -> dict:
        # a stored stack may predate a field (delay_pct): missing fields are their defaults
        d = {
            **asdict(OptimizationSettings()),
            **(asdict(x) if isinstance(x, OptimizationSettings) else dict(x)),
        }
        if not d.get("compile"):
            d.pop("compile_mode", None)  # only matters when compiling
        return d

    return effective(a) == effective(b)
