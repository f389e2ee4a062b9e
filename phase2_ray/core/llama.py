"""The Llama family in plain PyTorch (gpt-fast's and torchtitan's shape): RMSNorm, rotary positions, a SwiGLU MLP,
grouped-query attention, tied or untied embeddings, and Qwen2's optional q/k/v bias.

The modules carry the GPT's names (`wte`, `blocks.N.ln1`, `attn.qkv`, `attn.proj`, `mlp.fc`, `mlp.proj`, `ln_f`,
`lm_head`) so that training, the decode engine, int8 compression and the converters see one layout. As in gpt-fast,
q/k/v are one projection (rows: n_head, then n_kv_head, then n_kv_head heads) and the MLP's gate and up are one
(`mlp.fc`, rows: gate, then up): one matmul each instead of three and two. core/llama_format.py maps this onto
transformers' `LlamaForCausalLM` / `Qwen2ForCausalLM` names both ways; tests/unit/test_llama.py holds it
to transformers' logits."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from phase2_ray.core.model import CausalLM, lm_loss
from phase2_ray.core.specs import GPTConfig

ROPE_TYPES = ("default", "linear", "llama3")
"""rope_scaling types reproduced here (transformers' formulas); dynamic, yarn and longrope are refused at load."""


def check_shape(cfg: GPTConfig) -> None:
    """Raises ValueError naming the first shape setting a llama cannot have."""
    if cfg.d_model % cfg.n_head:
        raise ValueError(f"d_model={cfg.d_model} is not divisible by n_head={cfg.n_head}")
    if cfg.n_head % cfg.kv_heads:
        raise ValueError(f"n_head={cfg.n_head} is not a multiple of n_kv_head={cfg.kv_heads}")
    if cfg.head_dim % 2:
        raise ValueError(f"head_dim = d_model / n_head = {cfg.head_dim} must be even for rotary positions")
    rope_type = (cfg.rope_scaling or {}).get("rope_type", "default")
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope_scaling type {rope_type!r} is not supported ({', '.join(ROPE_TYPES)})")


def inv_frequencies(cfg: GPTConfig) -> torch.Tensor:
    """RoPE's inverse frequencies, (head_dim / 2,), with transformers' linear or llama3 scaling applied."""
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    rs = cfg.rope_scaling or {}
    kind = rs.get("rope_type", "default")
    if kind == "linear":
        return inv / rs["factor"]
    if kind == "llama3":
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) * ~(wavelen > old / low)
        return torch.where(medium, smoothed, scaled)
    return inv


def rope_tables(cfg: GPTConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position and frequency, (block_size, head_dim), in transformers' half-split layout."""
    inv = inv_frequencies(cfg).to(device)
    freqs = torch.outer(torch.arange(cfg.block_size, dtype=torch.float32, device=device), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (..., head_dim), rotated by the rows of cos/sin that broadcast against it."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class GQAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.kv_heads, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)

    def split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., T, (H + 2 KV) hd) -> q (..., H, T, hd), k and v (..., KV, T, hd)."""
        h, kv, hd = self.n_head, self.kv_heads, self.hd
        q, k, v = qkv.split((h * hd, kv * hd, kv * hd), dim=-1)
        return (
            q.unflatten(-1, (h, hd)).transpose(-3, -2),
            k.unflatten(-1, (kv, hd)).transpose(-3, -2),
            v.unflatten(-1, (kv, hd)).transpose(-3, -2),
        )

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.split(self.qkv(x))
        q, k = apply_rope(q, cos, sin).to(x.dtype), apply_rope(k, cos, sin).to(x.dtype)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.n_head)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))


class SwiGLU(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 2 * cfg.hidden, bias=False)  # gate rows, then up rows
        self.proj = nn.Linear(cfg.hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(swiglu(self.fc(x)))


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of the fused projection's output."""
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


class LlamaBlock(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = GQAttention(cfg)
        self.ln2 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cos, sin)
        return x + self.mlp(self.ln2(x))


class Llama(CausalLM):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        check_shape(cfg)
        if cfg.dropout:
            raise ValueError(f"dropout={cfg.dropout}: the llama architecture here has no dropout (set 0)")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # As for the GPT: the residual projections scaled down by depth keep the residual stream's variance flat.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        self.init_rope()

    def init_rope(self) -> None:
        """The rotary tables: derived from the config, not stored (transformers derives them the same way)."""
        cos, sin = rope_tables(self.cfg, self.wte.weight.device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position, and the mean cross-entropy (in fp32) when targets are given."""
        T = self.check_length(idx)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(self.ln_f(x))
        return logits, lm_loss(logits, targets)
