"""Generation with a preallocated KV cache and continuous batching. Pure PyTorch: the Serve engine and the
in-process reference both drive `BatchDecoder`, so the serving overhead they are compared on is Serve's alone.

Why a lean decode step instead of the model's forward: for a model this small each decoded token is ~50 tiny
ops, so dispatch is the cost. Writing keys/values into a preallocated cache (no `torch.cat` per step), 2-D rows
and `torch.mm` on transposed weight views cut the time per token (benchmarks/RESULTS.md). The modules are
called, not their weights read, so a compressed model (int8 `nn.Module`s with the same call signature) decodes through this too.

Both architectures share the module names (core/llama.py); what differs per step is small and explicit: learned
positions (gpt2) or rotary ones applied to q and k (llama), LayerNorm or RMSNorm, GELU or SwiGLU, and a cache of
n_kv_head heads that grouped-query attention reads for n_head query heads."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from phase2_ray.core.llama import apply_rope, swiglu
from phase2_ray.core.model import GPT


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


@dataclass(eq=False)
class Sequence:
    """One request being decoded: its slot in the cache, position and the tokens produced so far."""

    prompt_len: int
    params: SamplingParams
    generator: torch.Generator
    slot: int = -1
    pos: int = 0
    """Tokens held in the cache for this sequence."""
    tokens: list[int] = field(default_factory=list)
    tag: object = None
    """Caller's handle (e.g. the request's queue); the decoder never looks at it."""

    @property
    def done(self) -> bool:
        return len(self.tokens) >= self.params.max_tokens


class BatchDecoder:
    """Continuous batching over a fixed pool of cache slots.

    `add` prefills a prompt into a free slot and samples its first token; `step` decodes one token for every
    active sequence in one batched forward pass. Finished sequences leave at once and new ones join between steps,
    so a request never waits for a whole batch to finish. Active sequences always occupy slots 0..n-1 (a finished
    one is replaced by the last), so a step reads contiguous cache slices and never gathers."""

    def __init__(self, model: GPT, max_batch: int, kv_dtype: torch.dtype | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        cfg = model.cfg
        self.model = model.eval()
        self.block_size = cfg.block_size
        self.max_batch = max_batch
        self.n_head, self.kv_heads, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.llama = cfg.arch == "llama"
        self.gqa = self.kv_heads != self.n_head
        p = next(model.parameters())
        self.device = p.device
        self.dtype = p.dtype if p.is_floating_point() else torch.float32
        # The cache may be held narrower than the activations (bf16 halves it); attention then runs in its dtype.
        self.kv_dtype = kv_dtype or self.dtype
        # One tensor per layer holding keys (index 0) and values (1): a decode step writes both in one op.
        shape = (2, max_batch, self.kv_heads, cfg.block_size, self.head_dim)
        self.kv = [torch.zeros(shape, dtype=self.kv_dtype, device=self.device) for _ in range(cfg.n_layer)]
        self.active: list[Sequence] = []
        self._plan = _DecodePlan(model)

    @property
    def cache_bytes(self) -> int:
        """Bytes of the preallocated KV cache (all slots, all layers)."""
        return sum(t.numel() * t.element_size() for t in self.kv)

    def activation_bytes(self) -> int:
        """Peak bytes of the tensors a worst case creates beyond the weights and the cache, measured: a prefill of
        a full-context prompt, then one decode step of every slot at the last position, sampled. Call it before
        any request (it writes into the cache), and not in a process whose memory is being measured: the first
        Python dispatch mode imports ~70 MB of torch (the in-process reference measures it, not the replica)."""
        if self.active:
            raise RuntimeError("activation_bytes() needs an idle decoder: it writes into the cache")
        held = [*self.kv, *self.model.parameters(), *self.model.buffers()]
        n, last = self.max_batch, self.block_size - 1
        seqs = [Sequence(1, SamplingParams(1), torch.Generator(device=self.device)) for _ in range(n)]
        with torch.inference_mode(), LiveBytes(held) as live:
            self._prefill(torch.zeros(1, last, dtype=torch.long, device=self.device), 0)
            logits = self._decode(torch.zeros(n, dtype=torch.long, device=self.device), [last] * n)
            sample_rows(logits, seqs)
            del logits
        return live.peak

    @property
    def free_slots(self) -> int:
        return self.max_batch - len(self.active)

    @torch.inference_mode()
    def add(self, prompt_ids: list[int], params: SamplingParams, tag: object = None) -> Sequence:
        """Prefills `prompt_ids` into a free slot and samples the first token (in `seq.tokens`)."""
        params.check()
        if not prompt_ids:
            raise ValueError("prompt must hold at least one token")
        if len(prompt_ids) + params.max_tokens > self.block_size:
            raise ValueError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) "
                f"exceeds the model's context of {self.block_size} tokens"
            )
        if not self.free_slots:
            raise RuntimeError("no free cache slot: call step() until a sequence finishes")
        gen = torch.Generator(device=self.device)
        if params.seed is None:
            gen.seed()
        else:
            gen.manual_seed(params.seed)
        seq = Sequence(len(prompt_ids), params, gen, slot=len(self.active), tag=tag)
        logits = self._prefill(torch.tensor([prompt_ids], dtype=torch.long, device=self.device), seq.slot)
        seq.pos = len(prompt_ids)
        seq.tokens.append(sample(logits, params, gen))
        if seq.done:  # a one-token request never occupies a slot past its prefill
            seq.slot = -1
        else:
            self.active.append(seq)
        return seq

    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """Decodes one token for every active sequence; returns them (finished ones have left the batch)."""
        seqs = list(self.active)
        if not seqs:
            return []
        pos_list = [s.pos for s in seqs]
        tokens = torch.tensor([s.tokens[-1] for s in seqs], dtype=torch.long, device=self.device)
        logits = self._decode(tokens, pos_list)
        for s, t in zip(seqs, sample_rows(logits, seqs), strict=True):
            s.pos += 1
            s.tokens.append(t)
        for s in seqs:
            if s.done:
                self.release(s)
        return seqs

    def release(self, seq: Sequence) -> None:
        """Frees a sequence's slot (when it finishes, or to abort it: a client that went away)."""
        if seq.slot < 0:
            return
        last = self.active[-1]
        if last is not seq:  # move the last sequence's cache into the freed slot to keep slots contiguous
            for kv in self.kv:
                kv[:, seq.slot, :, : last.pos].copy_(kv[:, last.slot, :, : last.pos])
            self.active[seq.slot] = last
            last.slot = seq.slot
        self.active.pop()
        seq.slot = -1

    def _prefill(self, idx: torch.Tensor, slot: int) -> torch.Tensor:
        """Runs one prompt (causal) through the model's own modules, filling `slot`; last position's logits."""
        m, H, hd = self.model, self.n_head, self.head_dim
        T = idx.shape[1]
        x = m.wte(idx)
        if self.llama:
            cos, sin = m.rope_cos[:T], m.rope_sin[:T]
        else:
            x = x + m.wpe(torch.arange(T, device=self.device))
        act = swiglu if self.llama else _gelu
        for layer, blk in enumerate(m.blocks):
            h = blk.attn.qkv(blk.ln1(x))
            if self.llama:
                q, k, v = blk.attn.split(h)  # (1, H, T, hd), (1, KV, T, hd) x 2
                q, k = apply_rope(q, cos, sin).to(x.dtype), apply_rope(k, cos, sin).to(x.dtype)
                self.kv[layer][0, slot : slot + 1, :, :T] = k
                self.kv[layer][1, slot : slot + 1, :, :T] = v
            else:
                qkv = h.view(1, T, 3, H, hd).permute(2, 0, 3, 1, 4)  # (3, 1, H, T, hd)
                self.kv[layer][:, slot : slot + 1, :, :T] = qkv[1:]
                q, k, v = qkv
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.gqa)
            x = x + blk.attn.proj(y.transpose(1, 2).reshape(1, T, H * hd))
            x = x + blk.mlp.proj(act(blk.mlp.fc(blk.ln2(x))))
        return m.lm_head(m.ln_f(x[0, -1:]))[0]

    def _decode(self, tokens: torch.Tensor, pos_list: list[int]) -> torch.Tensor:
        """One token for each of slots 0..B-1 at positions `pos_list`, as (B, C) rows; (B, vocab) logits."""
        p, H, KV, hd = self._plan, self.n_head, self.kv_heads, self.head_dim
        B, t_max = len(pos_list), max(pos_list) + 1
        pos = torch.tensor(pos_list, dtype=torch.long, device=self.device)
        x = p.embed(tokens)
        if self.llama:
            cos, sin = p.rope_cos[pos].unsqueeze(1), p.rope_sin[pos].unsqueeze(1)  # (B, 1, hd): every head
        else:
            x = x + p.pos_embed(pos)
        same_pos = min(pos_list) == t_max - 1
        # Rows at different positions attend to their own filled prefix only.
        mask = None if same_pos else (self._arange[:t_max] <= pos[:, None]).view(B, 1, 1, t_max)
        rows = torch.arange(B, device=self.device)
        narrow = self.kv_dtype != self.dtype
        for layer, (ln1, qkv_w, proj_w, ln2, fc_w, out_w) in enumerate(p.layers):
            kv = self.kv[layer]
            h = p.linear(p.norm(x, ln1), qkv_w)
            if self.llama:
                q, k, v = h.split((H * hd, KV * hd, KV * hd), dim=-1)
                q = apply_rope(q.view(B, H, hd), cos, sin).to(x.dtype)
                k = apply_rope(k.view(B, KV, hd), cos, sin)
                if same_pos:
                    kv[0, :B, :, t_max - 1], kv[1, :B, :, t_max - 1] = k, v.view(B, KV, hd)
                else:
                    kv[0, rows, :, pos], kv[1, rows, :, pos] = k, v.view(B, KV, hd)
            else:
                qkv = h.view(B, 3, H, hd)
                q = qkv[:, 0]
                if same_pos:  # keys and values in one write
                    kv[:, :B, :, t_max - 1] = qkv[:, 1:].transpose(0, 1)
                else:
                    kv[:, rows, :, pos] = qkv[:, 1:]
            q = q.unsqueeze(2)
            if narrow:
                q = q.to(self.kv_dtype)
            y = F.scaled_dot_product_attention(
                q, kv[0, :B, :, :t_max], kv[1, :B, :, :t_max], attn_mask=mask, enable_gqa=self.gqa
            )
            if narrow:
                y = y.to(self.dtype)
            x = x + p.linear(y.reshape(B, H * hd), proj_w)
            x = x + p.linear(p.act(p.linear(p.norm(x, ln2), fc_w)), out_w)
        return p.linear(p.norm(x, p.ln_f), p.head)

    @property
    def _arange(self) -> torch.Tensor:
        if not hasattr(self, "_ar"):
            self._ar = torch.arange(self.block_size, device=self.device)
        return self._ar


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of every tensor storage that ops create while active, and their peak: what a piece of
    PyTorch code allocates, measured rather than estimated (CPU has no allocator statistics to ask). Storages of
    `held` tensors (weights, a cache written in place) are not counted."""

    def __init__(self, held: list[torch.Tensor] = ()) -> None:
        super().__init__()
        self.held = {t.untyped_storage().data_ptr() for t in held}
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            ptr, n = st.data_ptr(), st.nbytes()
            if not n or ptr in self.held:
                continue
            if ptr in self.live:  # a view (or an in-place result) of a storage already counted
                self.live[ptr][1] += 1
            else:
                self.live[ptr] = [n, 1]
                self.now += n
                self.peak = max(self.peak, self.now)
            weakref.finalize(t, self._dropped, ptr)
        return out

    def _dropped(self, ptr: int) -> None:
        """One tensor on `ptr` died; the storage is free when the last one has."""
        entry = self.live.get(ptr)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.now -= self.live.pop(ptr)[0]


class _DecodePlan:
    """The decode step's operands, resolved once: plain `nn.Linear` weights become transposed views used with
    `torch.mm` (one op instead of linear's three); an int8 layer becomes its kernel call; any other module is
    kept and called."""

    def __init__(self, m: GPT) -> None:
        self.embed = _embedding(m.wte)
        if m.cfg.arch == "llama":
            self.rope_cos, self.rope_sin, self.act = m.rope_cos, m.rope_sin, swiglu
        else:
            self.pos_embed, self.act = _embedding(m.wpe), _gelu
        self.layers = [
            (
                blk.ln1,
                _weight(blk.attn.qkv),
                _weight(blk.attn.proj),
                blk.ln2,
                _weight(blk.mlp.fc),
                _weight(blk.mlp.proj),
            )
            for blk in m.blocks
        ]
        self.ln_f = m.ln_f
        self.head = _weight(m.lm_head)

    @staticmethod
    def linear(x: torch.Tensor, w) -> torch.Tensor:
        return torch.mm(x, w) if isinstance(w, torch.Tensor) else w(x)

    @staticmethod
    def norm(x: torch.Tensor, ln: torch.nn.Module) -> torch.Tensor:
        if type(ln) is torch.nn.RMSNorm:
            return F.rms_norm(x, ln.normalized_shape, ln.weight, ln.eps)
        return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _gelu(h: torch.Tensor) -> torch.Tensor:
    return F.gelu(h, approximate="tanh")


def _weight(mod: torch.nn.Module):
    if type(mod) is torch.nn.Linear:
        wt = mod.weight.detach().t()
        if mod.bias is None:
            return wt
        b = mod.bias.detach()
        return lambda x: torch.addmm(b, x, wt)  # a GPT-2 checkpoint's bias, in the same one op
    return getattr(mod, "matmul", mod)  # an int8 layer's bare kernel call, else the module


def _embedding(mod: torch.nn.Module):
    if type(mod) is torch.nn.Embedding:
        w = mod.weight.detach()
        return lambda ids: F.embedding(ids, w)
    return mod


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


def sample_rows(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """`sample` for every row at once: rows that share sampling settings are filtered, normalized and raced in
    one op each (the per-row work left is one draw from the row's own generator), so a batch of 16 costs about
    what one row does. Each row draws exactly what `sample` would draw, so its tokens do not depend on the batch."""
    out: list[int | None] = [None] * len(seqs)
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(seqs):
        groups.setdefault((s.params.temperature, s.params.top_k, s.params.top_p), []).append(i)
    for (temp, top_k, top_p), rows in groups.items():
        if len(rows) == 1:
            out[rows[0]] = sample(logits[rows[0]], seqs[rows[0]].params, seqs[rows[0]].generator)
            continue
        lg = logits[rows].float()
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


def stream_tokens(
    model: GPT,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed: int | None = None,
) -> Iterator[int]:
    """Yields `max_new_tokens` sampled token ids for one prompt (a batch of one through `BatchDecoder`)."""
    dec = BatchDecoder(model, 1)
    params = SamplingParams(max_new_tokens, temperature, top_k, top_p, seed)
    seq = dec.add(prompt_ids, params)
    yield seq.tokens[0]
    while not seq.done:
        dec.step()
        yield seq.tokens[-1]
