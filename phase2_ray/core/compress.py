"""SemanticCompressor: post-training weight-only int8 compression of a trained GPT. Pure PyTorch.

Every matrix (attention, MLP and the tied embedding / LM head) is stored as int8 with one fp32 scale per output
row (symmetric, scale = max|w| / 127), and dequantized inside the matmul's input cast. Activations stay fp32, so
the quality loss is the weights' rounding alone; LayerNorms and the position table stay fp32 (they are tiny).

Why weight-only and not torch.ao dynamic quantization: the latter is deprecated in torch 2.13 and, at this model's
sizes (48-wide rows, batch of one token), measured slower here than weight-only (55-70 vs 15-50 us per matmul);
weight-only also saves to safetensors as plain int8 tensors."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from phase2_ray.core.model import GPT


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: returns (int8 weights, fp32 scale per row)."""
    scale = w.detach().abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w.detach() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale.float()


class Int8Linear(nn.Module):
    """y = x @ (q * scale)^T, computed as (x @ q^T) * scale: the scale applies per output column."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale)

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> Int8Linear:
        if lin.bias is not None:
            raise ValueError("Int8Linear takes bias-free layers (the GPT has none)")
        return cls(*quantize_rows(lin.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype)) * self.scale


class Int8Embedding(nn.Module):
    """Row lookup of int8 weights, scaled back per row."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float() * self.scale[ids].unsqueeze(-1)


class SemanticCompressor:
    """Turns a trained fp32 GPT into its int8 weight-only copy (the original is left untouched)."""

    method = "weight-only int8, symmetric per output row"

    def compress(self, model: GPT) -> GPT:
        out = copy.deepcopy(model).eval()
        for blk in out.blocks:
            blk.attn.qkv = Int8Linear.from_linear(blk.attn.qkv)
            blk.attn.proj = Int8Linear.from_linear(blk.attn.proj)
            blk.mlp.fc = Int8Linear.from_linear(blk.mlp.fc)
            blk.mlp.proj = Int8Linear.from_linear(blk.mlp.proj)
        # The embedding and the LM head are one tied matrix: quantize it once and share the buffers.
        q, scale = quantize_rows(out.wte.weight)
        out.wte = Int8Embedding(q, scale)
        out.lm_head = Int8Linear(q, scale)
        return out


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers, each shared storage counted once."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def load_for_serving(spec: dict, device: str = "cpu") -> tuple[GPT, dict, object]:
    """A served model id's (model, meta, tokenizer) from its spec: the checkpoint's files, compressed to int8
    when `spec["int8"]` (on the CPU, from the fp32 weights), then moved to `device`. The Serve replica and the
    in-process reference both load through here, so they serve the same model."""
    from phase2_ray.core.checkpoint import load_checkpoint  # checkpoint imports the model, not this module

    model, meta, tok = load_checkpoint(spec["checkpoint"])
    if spec.get("int8"):
        model = SemanticCompressor().compress(model)
    return model.to(device), meta, tok
