"""A streaming completions client that times each request like vLLM's benchmark does. No Ray here.

Errors travel inside the record (llmperf's habit): one bad request never stops the run.

A request counts as ok when its stream is whole, as the API defines it: a chunk with a `finish_reason`, then
`data: [DONE]` where the server sends one (OpenAI, vLLM and phase2_ray do; transformers serve ends the body instead),
and at least one token. Output tokens are the server's own `usage.completion_tokens` (asked for with
`stream_options.include_usage`; a server that sends no usage has its token events counted); usage must account
for every token event (one event may carry several tokens, never none). The server packs several token events into one HTTP write, so timings
are taken per arrival (one received chunk of the body), and an arrival's gap is spread over its tokens."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict

import aiohttp

from phase2_ray.loadtest.plan import Endpoint, LevelSpec
from phase2_ray.records import RequestRecord
from phase2_ray.report.request_metrics import spread_gap


def _sse_events(buf: bytearray, chunk: bytes, pending: list[str]) -> list[str]:
    """Feeds one received chunk into the line buffer `buf`; returns the data of each SSE event it completes.

    `pending` holds the data lines of the event being read (an event ends at a blank line, per the SSE spec;
    an event that never got its blank line is dropped)."""
    buf += chunk
    done: list[str] = []
    while (nl := buf.find(b"\n")) >= 0:
        line = bytes(buf[:nl]).rstrip(b"\r").decode("utf-8")
        del buf[: nl + 1]
        if not line:
            if pending:
                done.append("\n".join(pending))
                pending.clear()
        elif line.startswith("data:"):
            data = line[5:]
            pending.append(data[1:] if data.startswith(" ") else data)
        # comments (":...") and other fields (event:, id:, retry:) carry nothing we time
    return done


async def stream_completion(
    client: aiohttp.ClientSession,
    url: str,
    payload: dict,
    record: RequestRecord,
    timeout_s: float,
    headers: dict | None = None,
    *,
    scheduled: float | None = None,
) -> RequestRecord:
    """POSTs one streaming completion and fills `record` with its timings; never raises.

    `scheduled`: the request's scheduled arrival as a `time.perf_counter()` value (open loop). When given,
    TTFT and E2E count from it rather than from the send, so time spent waiting for a slot is not hidden."""
    key = (headers or {}).get("Authorization", "").removeprefix("Bearer ")

    def scrub(text: str) -> str:  # a server or gateway may echo the key it got in an error body
        return text.replace(key, "***") if key else text

    record.start = time.time()
    sent = time.perf_counter()
    t0 = sent if scheduled is None else scheduled
    record.queue_ms = (sent - t0) * 1000.0
    record.scheduled = record.start - (sent - t0)
    last = done_at = None
    finished = closed_at = None  # when a chunk carried a finish_reason; when the body ended without [DONE]
    usage = False  # whether the stream carried a usage object (then it must account for every token)
    texts: list[str] = []
    buf, pending = bytearray(), []
    try:
        async with asyncio.timeout(timeout_s):
            async with client.post(url, json=payload, headers=headers) as resp:
                record.status = resp.status
                if resp.status != 200:
                    body = (await resp.read()).decode("utf-8", "replace")[:300]
                    record.error_type, record.error = f"http_{resp.status}", scrub(body)
                    return record
                # Raw chunks, not lines: every token event parsed from one chunk arrived at the same time.
                async for chunk in resp.content.iter_any():
                    now = time.perf_counter()
                    if done_at is not None:
                        continue  # read to the end so the connection can be reused; nothing counts now
                    k = 0
                    for data in _sse_events(buf, chunk, pending):
                        if data == "[DONE]":
                            done_at = now
                            break
                        event = json.loads(data)
                        if "error" in event:
                            record.error_type, record.error = "stream_error", scrub(str(event["error"]))
                            return record
                        tokens, had_usage, closes = _event_tokens(event, record)
                        usage |= had_usage
                        finished = now if closes else finished
                        texts += tokens
                        k += len(tokens)
                    if k:
                        _count_write(record, k, now, t0, last)
                        last = now
                if done_at is None:
                    closed_at = time.perf_counter()  # the server ended the body without [DONE]
    except STREAM_ERRORS as e:
        _failed(record, e, whole=done_at is not None, timeout_s=timeout_s)
    finally:
        record.end = time.time()
        record.text = "".join(texts)
    if record.error_type is None:
        # whole: [DONE], or (a server that sends none) a finish_reason before the body ended
        _judge(record, done_at if done_at is not None else (closed_at if finished else None), t0, usage)
    return record


STREAM_ERRORS = (
    TimeoutError,
    aiohttp.ClientError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
)
"""What a stream can raise: timeouts (asyncio's and aiohttp's), a broken connection, a malformed event."""


def _count_write(record: RequestRecord, k: int, now: float, t0: float, last: float | None) -> None:
    """`k` tokens that arrived together at `now`: the first write sets TTFT; a later one's gap since the previous
    write is spread over its tokens for ITL (the write gap itself is kept too)."""
    record.output_tokens += k
    record.tokens_per_write.append(k)
    if last is None:
        record.ttft_ms = (now - t0) * 1000.0
    else:
        gap = (now - last) * 1000.0
        record.write_gap_ms.append(gap)
        record.itl_ms.extend(spread_gap(gap, k))


def _failed(record: RequestRecord, e: Exception, *, whole: bool, timeout_s: float) -> None:
    """Why a stream that raised `e` failed (`whole`: [DONE] had already arrived, so a stall or a broken
    connection after it costs nothing)."""
    if isinstance(e, TimeoutError):  # asyncio.timeout's, and aiohttp's own timeouts (subclasses)
        if not whole:
            record.error_type, record.error = "timeout", f"{type(e).__name__} after {timeout_s}s"
    elif isinstance(e, aiohttp.ClientError):
        if not whole and record.status == 200:  # the body broke off mid-stream (bad chunked read)
            record.error_type = "truncated"
            record.error = (
                f"stream cut without [DONE] after {record.output_tokens} tokens: {type(e).__name__}: {e}"
            )
        elif not whole:
            record.error_type, record.error = "connection", f"{type(e).__name__}: {e}"
    else:  # a malformed event (not JSON, missing fields)
        record.error_type, record.error = "bad_response", f"{type(e).__name__}: {e}"


def _event_tokens(event: dict, record: RequestRecord) -> tuple[list[str], bool, bool]:
    """One SSE event of a completions or chat stream: the tokens it carries (their texts), whether it carried a
    usage object (copied into `record`), and whether it closes the answer (a finish_reason)."""
    usage = bool(event.get("usage"))
    if usage:
        record.prompt_tokens = event["usage"].get("prompt_tokens")
        record.completion_tokens = event["usage"].get("completion_tokens")
    if not event.get("choices"):  # the closing usage-only chunk carries no token
        return [], usage, False
    choice = event["choices"][0]
    closes = bool(choice.get("finish_reason"))
    if "text" in choice:  # completions: every event is one token (its text may be empty)
        if closes and not choice["text"]:
            return [], usage, closes  # a closing event that carries only the finish_reason (transformers)
        return [choice["text"] or ""], usage, closes
    # chat: a delta with content is a token; a role-only opening delta, or a closing one that only carries the
    # finish_reason, is not (OpenAI's and vLLM's streams have both)
    delta = choice.get("delta") or {}
    if "content" not in delta or ("role" in delta and not delta["content"]):
        return [], usage, closes
    return [delta["content"] or ""], usage, closes


def _judge(record: RequestRecord, done_at: float | None, t0: float, usage: bool = True) -> None:
    """Marks a stream that raised nothing ok, or says why it is not (vLLM counts only whole answers)."""
    if done_at is None:
        record.error_type = "truncated"
        record.error = f"stream ended without [DONE] or a finish_reason after {record.output_tokens} tokens"
    elif record.output_tokens == 0:
        record.error_type, record.error = "empty", "stream ended without a token"
    elif usage and (record.completion_tokens is None or record.completion_tokens < record.output_tokens):
        # fewer events than tokens is allowed (one event may carry several); more is not: each carries one at least
        record.error_type = "token_count_mismatch"
        record.error = (
            f"{record.output_tokens} token events arrived but usage.completion_tokens is "
            f"{record.completion_tokens}"
        )
    else:
        if (
            usage
        ):  # the server's own count: one event may carry several tokens (and events are what ITL spreads)
            record.token_events, record.output_tokens = record.output_tokens, record.completion_tokens
        record.e2e_ms = (done_at - t0) * 1000.0
        record.ok = True


def run_requests(endpoint: Endpoint, spec: LevelSpec) -> list[dict]:
    """Sends `spec.warmup` then `spec.n` streaming requests and returns their records, tagged with the spec's
    level and round: warm-ups first (indices -1, -2, ..., `warmup: True`, kept so a failing warm-up shows), then
    the measured ones, each group sorted by index.

    Closed loop (llmperf): `concurrency` requests in flight, each sent as soon as one finishes. With
    `request_rate`: open loop, Poisson arrivals at that mean rate (at most `concurrency` in flight); each
    request's latencies count from its scheduled arrival, so waiting for a free slot is not hidden.
    Warm-ups always run closed loop.

    `exact_rate` (open loop): arrivals conditioned on their count (poisson_schedule's `exact`).
    `stop_when_full` (open loop, the capacity search): an arrival that finds `concurrency` requests in flight
    stops the level (over-saturation: the queue only grows from there); it and the later arrivals are recorded
    as `not_sent` failures, so they count as missed."""
    return asyncio.run(_run(endpoint, spec))


def poisson_schedule(start: float, n: int, rate: float, seed: int, exact: bool = False) -> list[float]:
    """`n` absolute arrival times from `start`: the first at `start`, then cumulative exponential gaps of mean
    1/rate drawn from random.Random(seed) (vLLM's benchmark: send, then wait a gap).

    `exact`: a Poisson process conditioned on its count instead: `n` arrivals uniform over exactly n / rate
    seconds, sorted. A short level then offers the rate it names (free gaps drift: 44 arrivals meant for 19 req/s
    came at 32 once), so levels of a search differ by their rate, not by their luck."""
    rng = random.Random(seed)
    if exact:
        return sorted(start + rng.uniform(0, n / rate) for _ in range(n))
    times, t = [], start
    for _ in range(n):
        times.append(t)
        t += rng.expovariate(rate)
    return times


def _payload(model: str, prompt: str | tuple, i: int, seed: int, chat: bool, payload_args: dict) -> dict:
    """Request i's body: the prompt (a workload's (prompt, max_tokens) pairs set max_tokens), a per-request seed."""
    text, limit = (prompt, None) if isinstance(prompt, str) else prompt
    body = {"model": model, "seed": seed + i, "stream": True, **payload_args}
    # the server's own token count, in a closing chunk (OpenAI servers send it only when asked)
    body["stream_options"] = {"include_usage": True}
    if chat:  # the prompt as one user message; the server applies the model's chat template
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    if limit is not None:
        body["max_tokens"] = limit
    return body


async def _run(endpoint: Endpoint, spec: LevelSpec) -> list[dict]:
    route, prompts, seed = endpoint.route(spec.model), endpoint.prompts, endpoint.seed
    concurrency = spec.concurrency
    chat = route.api == "chat"
    url = route.base_url.rstrip("/") + ("/v1/chat/completions" if chat else "/v1/completions")
    headers = {"Authorization": f"Bearer {route.api_key}"} if route.api_key else None

    # aiohttp, not httpx: 2.6x less of the generator's CPU per streamed request, same bytes and parser
    # (benchmarks/client_bench.py); the timeout is asyncio's, per request, in stream_completion.
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

        async def one(i: int, scheduled: float | None = None) -> RequestRecord:
            # route.model: the name its server knows it by; records keep the model id (spec.model)
            body = _payload(route.model, prompts[i % len(prompts)], i, seed, chat, endpoint.payload_args)
            record = RequestRecord(spec.model, i, level=spec.level, round=spec.round, warmup=i < 0)
            return await stream_completion(
                client, url, body, record, endpoint.timeout_s, headers, scheduled=scheduled
            )

        async def closed_loop(indices: list[int]) -> list[RequestRecord]:
            todo = iter(indices)
            out: list[RequestRecord] = []

            async def worker() -> None:
                for i in todo:  # a shared iterator: each worker takes the next index when it is free
                    out.append(await one(i))

            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(indices)))))
            return out

        warm = await closed_loop([-1 - i for i in range(spec.warmup)]) if spec.warmup else []
        indices = list(range(spec.first_index, spec.first_index + spec.n))
        if spec.request_rate is None:
            records = await closed_loop(indices)
        else:
            records = await _open_loop(one, spec, indices, seed)
    warm.sort(key=lambda r: r.index)
    records.sort(key=lambda r: r.index)
    return [asdict(r) for r in warm + records]


async def _open_loop(one, spec: LevelSpec, indices: list[int], seed: int) -> list[RequestRecord]:
    """Poisson arrivals at spec.request_rate, at most spec.concurrency in flight: each request's clock runs from
    its scheduled arrival (no coordinated omission); with spec.stop_when_full, arrivals that find every slot
    taken end the level and are recorded as not sent."""
    concurrency = spec.concurrency
    gate = asyncio.Semaphore(concurrency)

    async def timed(i: int, at: float, lag_ms: float) -> RequestRecord:
        async with gate:  # a request waiting here keeps its clock running from `at`
            r = await one(i, at)
        r.send_lag_ms = lag_ms
        return r

    tasks, unsent = [], []
    # Absolute targets, not relative sleeps: a late wake-up never pushes the later arrivals back.
    # Each client and round draws its own arrivals (seeded by its first index): the same seed everywhere would
    # send k clients' requests in bursts of k and repeat one pattern every round.
    arrivals = poisson_schedule(
        time.perf_counter(), spec.n, spec.request_rate, seed * 1_000_003 + spec.first_index, spec.exact_rate
    )
    schedule = list(zip(indices, arrivals, strict=True))
    for k, (i, at) in enumerate(schedule):
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        if spec.stop_when_full and gate.locked():
            unsent = schedule[k:]
            break
        # how late this process woke up for the arrival: the generator's own lag, not the server's
        lag_ms = max(0.0, (time.perf_counter() - at) * 1000.0)
        tasks.append(asyncio.create_task(timed(i, at, lag_ms)))
    records = list(await asyncio.gather(*tasks))
    wall0 = time.time() - time.perf_counter()  # perf_counter -> epoch seconds
    for i, at in unsent:
        r = RequestRecord(
            spec.model, i, level=spec.level, round=spec.round, error_type="not_sent", scheduled=wall0 + at
        )
        r.error = f"not sent: {concurrency} requests were in flight (over-saturated)"
        r.start = r.end = wall0 + at
        records.append(r)
    return records
