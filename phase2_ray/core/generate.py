"""Token-by-token sampling with a KV cache: the prompt is prefilled once, then each step feeds one token."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from phase2_ray.core.model import GPT


@torch.inference_mode()
def stream_tokens(
    model: GPT,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> Iterator[int]:
    """Yields `max_new_tokens` sampled token ids, one per forward step (greedy when temperature == 0)."""
    if not prompt_ids:
        raise ValueError("prompt must hold at least one token")
    if len(prompt_ids) + max_new_tokens > model.cfg.block_size:
        raise ValueError(
            f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) "
            f"exceeds block_size={model.cfg.block_size}"
        )
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    logits, cache = model.forward_cached(idx, None, 0)
    pos = len(prompt_ids)
    for i in range(max_new_tokens):
        nxt = _sample(logits, temperature, top_k, gen)
        yield int(nxt)
        if i + 1 < max_new_tokens:  # the last token needs no forward pass of its own
            logits, cache = model.forward_cached(nxt.view(1, 1), cache, pos)
            pos += 1


def _sample(
    logits: torch.Tensor, temperature: float, top_k: int | None, gen: torch.Generator
) -> torch.Tensor:
    logits = logits[0].float()
    if temperature <= 0:
        return logits.argmax()
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)[0]
