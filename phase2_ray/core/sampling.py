"""Choosing the next token from logits: greedy, temperature, top-k and top-p, one row or a batch of rows, each row
drawing from its own seeded generator so that a request's tokens do not depend on what else is decoded with it.
Pure PyTorch; the decoder (generate.py) calls it after every forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    """0 = greedy."""
    top_k: int | None = None
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    seed: int | None = None

    def check(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")


def sample(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> int:
    """One token id from a row of logits: greedy at temperature 0, else top-k / top-p filtered sampling.

    Filters work on the sorted top candidates only (k of them, or all when top_k is unset), which is cheaper
    than masking the full vocabulary and gives the same distribution."""
    logits = logits.float()
    if params.temperature <= 0:
        return int(logits.argmax())
    k = logits.numel() if params.top_k is None else min(params.top_k, logits.numel())
    if k < logits.numel() or params.top_p < 1.0:
        vals, ids = torch.topk(logits, k)  # sorted, largest first
    else:
        vals, ids = logits, None
    probs = torch.softmax(vals / params.temperature, dim=-1)
    if params.top_p < 1.0:
        # Keep tokens while the mass *before* them is below top_p (the first token is always kept).
        probs = probs * ((torch.cumsum(probs, 0) - probs) < params.top_p)
    # argmax(p / E) with E ~ Exp(1) draws index i with probability p_i / sum(p) (the exponential race):
    # one pass, cheaper than torch.multinomial's setup for one draw.
    choice = int((probs / torch.empty_like(probs).exponential_(generator=gen)).argmax())
    return choice if ids is None else int(ids[choice])


def sample_rows(logits: torch.Tensor, seqs: list) -> list[int]:
    """`sample` for every row at once: rows that share sampling settings are filtered, normalized and raced in
    one op each (the per-row work left is one draw from the row's own generator), so a batch of 16 costs about
    what one row does. Each row draws exactly what `sample` would draw, so its tokens do not depend on the batch.
    `seqs`: the decoder's sequences (generate.Sequence: their params and generator)."""
    out: list[int | None] = [None] * len(seqs)
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(seqs):
        groups.setdefault((s.params.temperature, s.params.top_k, s.params.top_p), []).append(i)
    for (temp, top_k, top_p), rows in groups.items():
        if len(rows) == 1:
            out[rows[0]] = sample(logits[rows[0]], seqs[rows[0]].params, seqs[rows[0]].generator)
            continue
        lg = (logits if len(rows) == len(seqs) else logits[rows]).float()  # one group: no gather
        if temp <= 0:
            picks = lg.argmax(dim=-1).tolist()
        else:
            k = lg.shape[-1] if top_k is None else min(top_k, lg.shape[-1])
            if k < lg.shape[-1] or top_p < 1.0:
                vals, ids = torch.topk(lg, k, dim=-1)
            else:
                vals, ids = lg, None
            probs = torch.softmax(vals / temp, dim=-1)
            if top_p < 1.0:
                probs = probs * ((torch.cumsum(probs, -1) - probs) < top_p)
            noise = torch.empty_like(probs)
            for j, r in enumerate(rows):
                noise[j].exponential_(generator=seqs[r].generator)
            choice = (probs / noise).argmax(dim=-1, keepdim=True)
            picks = (choice if ids is None else ids.gather(-1, choice)).view(-1).tolist()
        for r, t in zip(rows, picks, strict=True):
            out[r] = t
    return out
