"""An asyncio front for `BatchDecoder`: requests and the decode loop share one event loop.

The Serve replica and the in-process reference both use this class, so the reference differs from the served
path by exactly Serve + HTTP. Stdlib + PyTorch only.

Tokens reach each request's asyncio queue once per decode step. A consumer that falls behind finds several
tokens waiting and sends them in one write: the transport's per-message cost then stops capping tokens/s."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import torch

from phase2_ray.core.generate import BatchDecoder
from phase2_ray.core.model import CausalLM
from phase2_ray.core.sampling import SamplingParams


class Overloaded(RuntimeError):
    """More requests are waiting for a cache slot than the engine accepts; the caller should retry later."""


@dataclass(eq=False)
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    queue: asyncio.Queue
    cancelled: bool = False
    submitted: float = 0.0


_END = object()

FIRST_TOKEN_YIELDS = 8
"""Event-loop turns the decode loop gives up after admitting requests, before its next step. A first token leaves
the process only after several turns of the loop (the handler resumes, builds the response, Serve moves the
chunk on), and each turn used to wait behind a whole decode step, which showed as TTFT above Serve's floor.
Chosen by measurement (benchmarks/RESULTS.md, serving run 4): fewer turns left TTFT high, more cost throughput
with 16 requests in flight."""


class AsyncBatchEngine:
    """Continuous batching on the caller's event loop: waiting requests take free cache slots between steps.

    The decode loop is an asyncio task, not a thread: with one core per replica a decode thread would hold the
    GIL against the event loop that parses requests and writes chunks (CPython hands it over every 5 ms). On the
    loop, a step (~0.5 ms) runs between I/O callbacks, and `await asyncio.sleep(0)` after each step lets new
    requests in and finished chunks out."""

    def __init__(
        self,
        model: CausalLM,
        max_batch: int,
        max_waiting: int,
        min_step_ms: float = 0.0,
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        self.decoder = BatchDecoder(model, max_batch, kv_dtype)
        self.max_waiting = max_waiting
        self.min_step_s = min_step_ms / 1000.0
        """Each decode step takes at least this long (it waits out the rest without holding the loop): a
        slower model simulated with a known service time, so a capacity search has a known answer."""
        self._waiting: collections.deque[_Request] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.steps = 0
        self.batched_tokens = 0
        self.max_batch_seen = 0
        self.first_token_ms: collections.deque[float] = collections.deque(maxlen=100_000)
        """Submission -> first token inside the engine (queueing + prefill), per request: the server's share
        of TTFT."""

    @property
    def alive(self) -> bool:
        return self._task is None or not self._task.done()

    def stats(self) -> dict:
        return {
            "decode_steps": self.steps,
            "active": len(self.decoder.active),
            "waiting": len(self._waiting),
            "mean_batch": self.batched_tokens / self.steps if self.steps else None,
            "max_batch_seen": self.max_batch_seen,
            "max_batch": self.decoder.max_batch,
            "kv_cache_bytes": self.decoder.cache_bytes,
            "kv_cache_dtype": str(self.decoder.kv_dtype).removeprefix("torch."),
            "engine_first_token_ms": _quantiles(self.first_token_ms),
        }

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[list[int]]:
        """Yields lists of new token ids (one or more each) until `params.max_tokens` have come.

        Validation errors raise ValueError before anything is queued; a full queue raises Overloaded."""
        params.check()
        if not prompt_ids:
            raise ValueError("prompt encodes to no tokens")
        if len(prompt_ids) + params.max_tokens > self.decoder.block_size:
            raise ValueError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                f"the model's context of {self.decoder.block_size} tokens"
            )
        # Requests queued for free slots are admitted at the next step: only those beyond the free slots wait.
        if len(self._waiting) - self.decoder.free_slots >= self.max_waiting:
            raise Overloaded(f"{len(self._waiting)} requests already wait for a slot")
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="decode-loop")
        req = _Request(prompt_ids, params, asyncio.Queue(), submitted=time.perf_counter())
        self._waiting.append(req)
        self._wake.set()
        done = False
        try:
            while not done:
                items = [await req.queue.get()]
                while not req.queue.empty():
                    items.append(req.queue.get_nowait())
                out: list[int] = []
                for it in items:
                    if it is _END:
                        done = True
                    elif isinstance(it, BaseException):
                        raise it
                    else:
                        out.append(it)
                if out:
                    yield out
        finally:
            req.cancelled = not done  # a client that went away frees its slot at the next step

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        dec = self.decoder
        while True:
            if not self._waiting and not dec.active:
                self._wake.clear()
                await self._wake.wait()
            batch = []
            while self._waiting and len(batch) < dec.free_slots:
                req = self._waiting.popleft()
                if not req.cancelled:
                    batch.append(req)
            admitted = len(batch)
            # admitted together, prefilled packed: a burst of arrivals costs a few forward passes, not one each
            try:
                added = dec.add_many([(r.prompt_ids, r.params, r) for r in batch])
            except Exception as e:  # noqa: BLE001 - reported to those requests, the loop goes on
                added = [e] * len(batch)
            for req, seq in zip(batch, added, strict=True):
                if isinstance(seq, Exception):
                    req.queue.put_nowait(seq)
                    continue
                req.queue.put_nowait(seq.tokens[0])
                self.first_token_ms.append((time.perf_counter() - req.submitted) * 1000.0)
                if seq.done:
                    req.queue.put_nowait(_END)
            for seq in [s for s in dec.active if s.tag.cancelled]:
                dec.release(seq)
            if admitted:
                for _ in range(FIRST_TOKEN_YIELDS):
                    await asyncio.sleep(0)
            if dec.active:
                started = time.perf_counter()
                n = len(dec.active)
                try:
                    stepped = dec.step()
                except Exception as e:  # noqa: BLE001 - fail this batch's requests, keep serving others
                    stepped = []
                    for seq in list(dec.active):
                        seq.tag.queue.put_nowait(e)
                        dec.release(seq)
                self.steps += 1
                self.batched_tokens += n
                self.max_batch_seen = max(self.max_batch_seen, n)
                for seq in stepped:
                    seq.tag.queue.put_nowait(seq.tokens[-1])
                    if seq.done:
                        seq.tag.queue.put_nowait(_END)
                if self.min_step_s:
                    # paced from the step's own start: the compute is part of the step's time, not added to it
                    await asyncio.sleep(max(0.0, started + self.min_step_s - time.perf_counter()))
            await asyncio.sleep(0)


def _quantiles(xs) -> dict | None:
    """Nearest-rank p50/p90/p99 of a window of samples (None when empty)."""
    if not xs:
        return None
    s = sorted(xs)
    return {f"p{q}": s[min(len(s) - 1, int(q / 100 * len(s)))] for q in (50, 90, 99)} | {"n": len(s)}


class IncrementalDetokenizer:
    """Text of each new token, holding back bytes until a multi-byte character is complete.

    Decodes only a short window (the previous read offset onwards), as vLLM and TGI do, instead of the whole
    output for every token."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.tok.decode(self.ids[self.prefix : self.read]) if self.read > self.prefix else ""
        text = self.tok.decode(self.ids[self.prefix :])
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(before) :]
        return ""

    def flush(self) -> str:
        """The text held back at the end of the output: bytes of an unfinished character, as the tokenizer's own
        decode renders them (U+FFFD), so that the whole text equals `decode(all ids)`."""
        before = self.tok.decode(self.ids[self.prefix : self.read]) if self.read > self.prefix else ""
        text = self.tok.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return text[len(before) :]
