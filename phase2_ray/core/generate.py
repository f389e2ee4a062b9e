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

import itertools
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from phase2_ray.core.llama import apply_rope, swiglu
from phase2_ray.core.model import CausalLM
from phase2_ray.core.sampling import SamplingParams, sample_rows


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

    def __init__(self, model: CausalLM, max_batch: int, kv_dtype: torch.dtype | None = None) -> None:
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
        # Prompts prefilled in one pass, at most this many tokens (a context, or 512 for a short one): its mask
        # grows with the square, and activation_bytes() measures exactly this worst case.
        self.pack_tokens = max(self.block_size - 1, 512)

    @property
    def cache_bytes(self) -> int:
        """Bytes of the preallocated KV cache (all slots, all layers)."""
        return sum(t.numel() * t.element_size() for t in self.kv)

    def activation_bytes(self) -> int:
        """Peak bytes of the tensors a worst case creates beyond the weights and the cache, measured: a packed
        prefill of `pack_tokens` tokens of full-context prompts (the mask counted), then one decode step of every
        slot at the last position, sampled. Call it before
        any request (it writes into the cache), and not in a process whose memory is being measured: the first
        Python dispatch mode imports ~70 MB of torch (the in-process reference measures it, not the replica)."""
        if self.active:
            raise RuntimeError("activation_bytes() needs an idle decoder: it writes into the cache")
        held = [*self.kv, *self.model.parameters(), *self.model.buffers()]
        n, last = self.max_batch, self.block_size - 1
        seqs = [Sequence(1, SamplingParams(1), torch.Generator(device=self.device)) for _ in range(n)]
        with torch.inference_mode(), LiveBytes(held) as live:
            sizes = [min(last, self.pack_tokens - i) for i in range(0, self.pack_tokens, last)]
            self._prefill_packed([[0] * t for t in sizes], [0] + [-1] * (len(sizes) - 1))
            logits = self._decode(torch.zeros(n, dtype=torch.long, device=self.device), [last] * n)
            sample_rows(logits, seqs)
            del logits
        return live.peak

    @property
    def free_slots(self) -> int:
        return self.max_batch - len(self.active)

    def add(self, prompt_ids: list[int], params: SamplingParams, tag: object = None) -> Sequence:
        """Prefills `prompt_ids` into a free slot and samples the first token (in `seq.tokens`)."""
        (out,) = self.add_many([(prompt_ids, params, tag)])
        if isinstance(out, Exception):
            raise out
        return out

    def _check(self, prompt_ids: list[int], params: SamplingParams) -> None:
        params.check()
        if not prompt_ids:
            raise ValueError("prompt must hold at least one token")
        if len(prompt_ids) + params.max_tokens > self.block_size:
            raise ValueError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) "
                f"exceeds the model's context of {self.block_size} tokens"
            )

    @torch.inference_mode()
    def add_many(
        self, requests: list[tuple[list[int], SamplingParams, object]]
    ) -> list[Sequence | Exception]:
        """`add` for several requests at once: their prompts are prefilled packed together (one forward pass per
        context's worth of tokens, each prompt attending to itself only), so a burst of arrivals costs a few
        passes instead of one per request. Returns each request's Sequence, or the ValueError that refused it."""
        out: list[Sequence | Exception] = []
        seqs: list[tuple[Sequence, list[int]]] = []
        next_slot = len(self.active)
        for prompt_ids, params, tag in requests:
            try:
                self._check(prompt_ids, params)
            except ValueError as e:
                out.append(e)
                continue
            gen = torch.Generator(device=self.device)
            if params.seed is None:
                gen.seed()
            else:
                gen.manual_seed(params.seed)
            seq = Sequence(len(prompt_ids), params, gen, tag=tag)
            # a one-token request never occupies a slot: its prefill writes no cache
            if params.max_tokens > 1:
                if next_slot >= self.max_batch:
                    raise RuntimeError("no free cache slot: call step() until a sequence finishes")
                seq.slot, next_slot = next_slot, next_slot + 1
            seqs.append((seq, prompt_ids))
            out.append(seq)
        # Packs of at most pack_tokens tokens: never more than activation_bytes() measured.
        packs: list[list[tuple[Sequence, list[int]]]] = []
        for item in seqs:
            if packs and sum(len(p) for _, p in packs[-1]) + len(item[1]) <= self.pack_tokens:
                packs[-1].append(item)
            else:
                packs.append([item])
        for pack in packs:
            logits = self._prefill_packed([p for _, p in pack], [s.slot for s, _ in pack])
            group = [s for s, _ in pack]
            for seq, t in zip(group, sample_rows(logits, group), strict=True):
                seq.pos = seq.prompt_len
                seq.tokens.append(t)
                if not seq.done:
                    self.active.append(seq)
        return out

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
        """One prompt (1, T) into `slot`; its last position's logits."""
        return self._prefill_packed([idx[0].tolist()], [slot])[0]

    def _prefill_packed(self, prompts: list[list[int]], slots: list[int]) -> torch.Tensor:
        """Runs prompts packed into one sequence through the model's own modules, each attending causally to
        itself only, and writes each one's keys and values into its slot (none for slot -1); (n, vocab) logits
        of each prompt's last position."""
        m, H, hd = self.model, self.n_head, self.head_dim
        lens = [len(p) for p in prompts]
        N, dev = sum(lens), self.device
        idx = torch.tensor([[t for p in prompts for t in p]], dtype=torch.long, device=dev)
        if len(prompts) == 1:
            pos, mask = torch.arange(N, device=dev), None
        else:
            pos = torch.cat([torch.arange(t, device=dev) for t in lens])
            seg = torch.repeat_interleave(torch.arange(len(lens), device=dev), torch.tensor(lens, device=dev))
            mask = (seg[:, None] == seg[None, :]) & (pos[:, None] >= pos[None, :])
        starts = [0, *itertools.accumulate(lens)][:-1]
        x = m.wte(idx)
        if self.llama:
            cos, sin = m.rope_cos[pos], m.rope_sin[pos]
        else:
            x = x + m.wpe(pos)
        act = swiglu if self.llama else _gelu
        for layer, blk in enumerate(m.blocks):
            h = blk.attn.qkv(blk.ln1(x))
            if self.llama:
                q, k, v = blk.attn.split(h)  # (1, H, N, hd), (1, KV, N, hd) x 2
                q, k = apply_rope(q, cos, sin).to(x.dtype), apply_rope(k, cos, sin).to(x.dtype)
                kv_pair = torch.stack((k, v))  # (2, 1, KV, N, hd)
            else:
                kv_pair = h.view(1, N, 3, H, hd).permute(2, 0, 3, 1, 4)  # (3, 1, H, N, hd)
                q, k, v = kv_pair
                kv_pair = kv_pair[1:]
            for slot, start, t in zip(slots, starts, lens, strict=True):
                if slot >= 0:
                    self.kv[layer][:, slot : slot + 1, :, :t] = kv_pair[..., start : start + t, :]
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=self.gqa
            )
            x = x + blk.attn.proj(y.transpose(1, 2).reshape(1, N, H * hd))
            x = x + blk.mlp.proj(act(blk.mlp.fc(blk.ln2(x))))
        last = torch.tensor([st + t - 1 for st, t in zip(starts, lens, strict=True)], device=dev)
        return m.lm_head(m.ln_f(x[0, last]))

    def _decode(self, tokens: torch.Tensor, pos_list: list[int]) -> torch.Tensor:
        """One token for each of slots 0..B-1 at positions `pos_list`, as (B, C) rows; (B, vocab) logits."""
        p, H, KV, hd = self._plan, self.n_head, self.kv_heads, self.head_dim
        B, t_max = len(pos_list), max(pos_list) + 1
        pos = torch.tensor(pos_list, dtype=torch.long, device=self.device)
        x = p.embed(tokens)
        same_pos = min(pos_list) == t_max - 1
        if self.llama:  # (B or 1, 1, hd): every head of a row at its position
            if same_pos:
                cos, sin = p.rope_cos[t_max - 1 : t_max, None], p.rope_sin[t_max - 1 : t_max, None]
            else:
                cos, sin = p.rope_cos.index_select(0, pos)[:, None], p.rope_sin.index_select(0, pos)[:, None]
        else:
            x = x + p.pos_embed(pos)
        # Rows at different positions attend to their own filled prefix only.
        mask = None if same_pos else (self._arange[:t_max] <= pos[:, None]).view(B, 1, 1, t_max)
        rows = torch.arange(B, device=self.device)
        narrow = self.kv_dtype != self.dtype
        for layer, (ln1, qkv_w, proj_w, ln2, fc_w, out_w) in enumerate(p.layers):
            kv = self.kv[layer]
            h = p.linear(p.norm(x, ln1), qkv_w)
            if self.llama:
                heads = h.view(B, H + 2 * KV, hd)
                qk = apply_rope(heads[:, : H + KV], cos, sin).to(x.dtype)  # q and k rotated in one pass
                q, k, v = qk[:, :H], qk[:, H:], heads[:, H + KV :]
                if same_pos:
                    kv[0, :B, :, t_max - 1], kv[1, :B, :, t_max - 1] = k, v
                else:  # one scattered write of both (each index_put costs more than the stack)
                    kv[:, rows, :, pos] = torch.stack((k, v), dim=1)
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
            keys, values = kv[0, :B, :, :t_max], kv[1, :B, :, :t_max]
            if self.gqa:
                y = _grouped_attention(q, keys, values, mask)
            else:
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
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

    def __init__(self, m: CausalLM) -> None:
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


def _grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """One query position per row against a grouped-query cache: q (B, H, 1, hd), k and v (B, KV, T, hd). The
    H / KV query heads that share a key/value head are one matmul's rows, so no head is repeated (SDPA's
    enable_gqa on CPU repeats them, and is slower here: benchmarks/RESULTS.md)."""
    B, H, _, hd = q.shape
    KV = k.shape[1]
    s = torch.matmul(q.view(B, KV, H // KV, hd), k.transpose(-1, -2)).mul_(hd**-0.5)  # (B, KV, G, T)
    if mask is not None:  # (B, 1, 1, T): the row's filled prefix
        s = s.masked_fill_(~mask, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v).view(B, H, 1, hd)


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


def stream_tokens(
    model: CausalLM,
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
