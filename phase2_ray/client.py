"""A streaming completions client that times each request like vLLM's benchmark does. No Ray here.

Errors travel inside the record (llmperf's habit): one bad request never stops the run."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field

import httpx


@dataclass
class RequestRecord:
    variant: str
    index: int
    ok: bool = False
    status: int | None = None
    error_type: str | None = None
    error: str | None = None
    start: float = 0.0
    """Epoch seconds when the request was sent."""
    end: float = 0.0
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None
    itl_ms: list[float] = field(default_factory=list)
    text: str = ""


async def stream_completion(
    client: httpx.AsyncClient,
    url: str,
    payload: dict,
    record: RequestRecord,
    timeout_s: float,
    headers: dict | None = None,
) -> RequestRecord:
    """POSTs one streaming completion and fills `record` with its timings; never raises."""
    record.start = time.time()
    t0 = time.perf_counter()
    last = None
    texts: list[str] = []
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, json=payload, headers=headers, timeout=timeout_s) as resp:
                record.status = resp.status_code
                if resp.status_code != 200:
                    body = (await resp.aread()).decode("utf-8", "replace")[:300]
                    record.error_type, record.error = f"http_{resp.status_code}", body
                    return record
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        break
                    now = time.perf_counter()
                    event = json.loads(data)
                    if "error" in event:
                        record.error_type, record.error = "stream_error", str(event["error"])
                        return record
                    if event.get("usage"):
                        record.prompt_tokens = event["usage"].get("prompt_tokens")
                    if not event.get("choices"):  # the closing usage-only chunk carries no token
                        continue
                    if last is None:
                        record.ttft_ms = (now - t0) * 1000.0
                    else:
                        record.itl_ms.append((now - last) * 1000.0)
                    last = now
                    record.output_tokens += 1
                    texts.append(event["choices"][0].get("text", ""))
        if record.output_tokens == 0:
            record.error_type, record.error = "empty", "stream ended without a token"
            return record
        record.e2e_ms = (time.perf_counter() - t0) * 1000.0
        record.ok = True
    except (TimeoutError, httpx.TimeoutException) as e:
        record.error_type, record.error = "timeout", f"{type(e).__name__} after {timeout_s}s"
    except httpx.HTTPError as e:
        record.error_type, record.error = "connection", f"{type(e).__name__}: {e}"
    except (ValueError, KeyError, IndexError) as e:
        record.error_type, record.error = "bad_response", f"{type(e).__name__}: {e}"
    finally:
        record.end = time.time()
        record.text = "".join(texts)
    return record


def run_requests(
    base_url: str,
    model: str,
    prompts: list[str],
    *,
    n: int,
    warmup: int,
    concurrency: int,
    max_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float = 1.0,
    seed: int,
    timeout_s: float,
    first_index: int = 0,
    request_rate: float | None = None,
    api_key: str | None = None,
) -> list[dict]:
    """Sends `warmup` unrecorded then `n` recorded streaming requests and returns their records.

    Closed loop (llmperf): `concurrency` requests in flight, each sent as soon as one finishes. With
    `request_rate`: open loop, Poisson arrivals at that mean rate (at most `concurrency` in flight)."""
    return asyncio.run(
        _run(
            base_url,
            model,
            prompts,
            n=n,
            warmup=warmup,
            concurrency=concurrency,
            payload_args=dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p),
            seed=seed,
            timeout_s=timeout_s,
            first_index=first_index,
            request_rate=request_rate,
            api_key=api_key,
        )
    )


async def _run(
    base_url,
    model,
    prompts,
    *,
    n,
    warmup,
    concurrency,
    payload_args,
    seed,
    timeout_s,
    first_index,
    request_rate,
    api_key,
) -> list[dict]:
    url = base_url.rstrip("/") + "/v1/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None

    def payload(i: int) -> dict:
        p = prompts[i % len(prompts)]
        return {"model": model, "prompt": p, "seed": seed + i, "stream": True, **payload_args}

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one(i: int) -> RequestRecord:
            return await stream_completion(
                client, url, payload(i), RequestRecord(model, i), timeout_s, headers
            )

        async def closed_loop(indices: list[int]) -> list[RequestRecord]:
            todo = iter(indices)
            out: list[RequestRecord] = []

            async def worker() -> None:
                for i in todo:  # a shared iterator: each worker takes the next index when it is free
                    out.append(await one(i))

            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(indices)))))
            return out

        if warmup:
            await closed_loop([-1 - i for i in range(warmup)])
        indices = list(range(first_index, first_index + n))
        if request_rate is None:
            records = await closed_loop(indices)
        else:
            rng = random.Random(seed)
            gate = asyncio.Semaphore(concurrency)

            async def timed(i: int) -> RequestRecord:
                async with gate:
                    return await one(i)

            tasks = []
            for i in indices:
                tasks.append(asyncio.create_task(timed(i)))
                await asyncio.sleep(rng.expovariate(request_rate))
            records = list(await asyncio.gather(*tasks))
    return [asdict(r) for r in sorted(records, key=lambda r: r.index)]
