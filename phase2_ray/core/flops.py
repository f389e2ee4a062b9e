"""Model FLOPs utilisation: FLOPs per token from the model shape, peak FLOP/s measured on this machine, never assumed."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from phase2_ray.core.specs import GPTConfig

if TYPE_CHECKING:
    import torch

MFU_FORMULA = (
    "flops/token = 6*N + 12*L*H*Q*T; N = params that multiply (no position table, no embedding lookup; the LM "
    "head counted), Q = head_dim, T = block_size"
)


def non_embedding_params(cfg: GPTConfig) -> int:
    """Parameters that cost compute per token: all but the position table and the embedding lookup (the LM head,
    tied or not, does cost). For a llama: grouped-query attention's narrower k/v projections and the SwiGLU MLP's
    three matrices."""
    d, v, L = cfg.d_model, cfg.vocab_size, cfg.n_layer
    if cfg.arch == "llama":
        hd, f = cfg.head_dim, cfg.hidden
        qkv = d * (cfg.n_head + 2 * cfg.kv_heads) * hd + (cfg.n_head + 2 * cfg.kv_heads) * hd * cfg.qkv_bias
        per_block = 2 * d + qkv + cfg.n_head * hd * d + 3 * d * f  # two RMSNorms, attention, gate/up/down
        return v * d + L * per_block + d
    per_block = 2 * 2 * d + 12 * d * d  # two LayerNorms (weight + bias), qkv + proj (4 d^2), MLP (8 d^2)
    return v * d + L * per_block + 2 * d


def flops_per_token(cfg: GPTConfig) -> int:
    """Training FLOPs per token (forward + backward), as in PaLM appendix B and nanoGPT's estimate_mfu."""
    # attention's scores and weighted sum run per query head: GQA shares k/v heads, not this work
    return 6 * non_embedding_params(cfg) + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.block_size


def measure_peak_flops(
    dtype: torch.dtype | None = None, size: int | None = None, repeats: int = 20, device: str = "cpu"
) -> float:
    """Best observed matmul FLOP/s with the current torch thread count: the denominator of MFU.

    512 x 512 on a CPU (seconds of 8192 x 8192 would steal the run's time); 8192 x 8192 on a GPU, where a small
    matmul measures kernel-launch latency, not the tensor cores."""
    import torch  # here: the report computes MFU from the formulas above in processes without torch

    dtype = dtype or torch.float32
    size = size or (8192 if device == "cuda" else 512)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # first call pays for allocation and kernel selection
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def mfu(cfg: GPTConfig, tokens_per_s: float, peak_flops: float) -> float:
    return flops_per_token(cfg) * tokens_per_s / peak_flops
