"""A streaming completions client that times each request like vLLM's benchmark does. No Ray here.

Errors travel inside the record (llmperf's habit): one bad request never stops the run."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
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


def stream_completion(
    client: httpx.Client,
    url: str,
    payload: dict,
    record: RequestRecord,
    timeout_s: float,
) -> RequestRecord:
    """POSTs one streaming completion and fills `record` with its timings; never raises."""
    record.start = time.time()
    t0 = time.perf_counter()
    last = None
    texts: list[str] = []
    try:
        with client.stream("POST", url, json=payload, timeout=timeout_s) as resp:
            record.status = resp.status_code
            if resp.status_code != 200:
                body = resp.read().decode("utf-8", "replace")[:300]
                record.error_type, record.error = f"http_{resp.status_code}", body
                return record
            for line in resp.iter_lines():
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
                choice = event["choices"][0]
                if last is None:
                    record.ttft_ms = (now - t0) * 1000.0
                else:
                    record.itl_ms.append((now - last) * 1000.0)
                last = now
                record.output_tokens += 1
                texts.append(choice.get("text", ""))
        if record.output_tokens == 0:
            record.error_type, record.error = "empty", "stream ended without a token"
            return record
        record.e2e_ms = (time.perf_counter() - t0) * 1000.0
        record.ok = True
    except httpx.TimeoutException as e:
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
    variant: str,
    prompts: list[str],
    *,
    n: int,
    warmup: int,
    concurrency: int,
    max_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    timeout_s: float,
) -> list[dict]:
    """Sends `warmup` unrecorded then `n` recorded streaming requests, `concurrency` in flight (closed loop)."""
    url = base_url.rstrip("/") + "/v1/completions"

    def payload(i: int) -> dict:
        return {
            "model": variant,
            "prompt": prompts[i % len(prompts)],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "seed": seed + i,
            "stream": True,
        }

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(limits=limits) as client:
        for i in range(warmup):
            stream_completion(client, url, payload(i), RequestRecord(variant, -1 - i), timeout_s)

        def one(i: int) -> RequestRecord:
            return stream_completion(client, url, payload(i), RequestRecord(variant, i), timeout_s)

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            records = list(pool.map(one, range(n)))
    return [asdict(r) for r in records]
