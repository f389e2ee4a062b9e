"""Load-generator cost: CPU time per streamed request of two HTTP clients (httpx, aiohttp) doing the same minimal
streaming read, and of phase2_ray's own client (loadtest.client, on aiohttp since this benchmark chose it). The capacity search needs a generator that is not the bottleneck; on a machine whose cores
the replicas share, its CPU per request is what it takes from them.

Both clients stream the same completions from one local server (aiohttp.web, on a thread of its own: its CPU is not
counted) that answers like the Serve app does (a first token event, then batches of token events per write, a
usage chunk, `data: [DONE]`), at the same concurrency; the two minimal readers use the same SSE parser
(loadtest.client._sse_events): their difference is the HTTP client. CPU is the client thread's own time (time.thread_time), per request.

Usage: .venv/bin/python benchmarks/client_bench.py [--quick] [--requests 2000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path

import aiohttp
import httpx
from aiohttp import web

from phase2_ray.loadtest.client import _sse_events, stream_completion
from phase2_ray.records import RequestRecord

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench import machine  # noqa: E402

TOKENS, PER_WRITE = 64, 16  # the default config's max_tokens and serve.stream_batch_tokens


def _event(text: str | None, usage: bool = False) -> bytes:
    body: dict = {"choices": [{"text": text, "index": 0}] if text is not None else []}
    if usage:
        body["usage"] = {"prompt_tokens": 8, "completion_tokens": TOKENS}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def _completions(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(_event("a"))
    left = TOKENS - 1
    while left:
        k = min(PER_WRITE, left)
        await resp.write(b"".join(_event("b") for _ in range(k)))
        left -= k
    await resp.write(_event(None, usage=True) + b"data: [DONE]\n\n")
    return resp


def serve_in_thread() -> tuple[str, threading.Event]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready, stop = threading.Event(), threading.Event()

    def run() -> None:
        async def main() -> None:
            app = web.Application()
            app.router.add_post("/v1/completions", _completions)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await runner.cleanup()

        asyncio.run(main())

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return f"http://127.0.0.1:{port}/v1/completions", stop


async def _pool(n: int, conc: int, one) -> int:
    todo, ok = iter(range(n)), 0

    async def worker() -> None:
        nonlocal ok
        for i in todo:
            good = await one(i)  # awaited first: `ok += await ...` reads ok before the await, losing updates
            ok += good

    await asyncio.gather(*(worker() for _ in range(conc)))
    return ok


def _parse(chunks_seen: list[bytes]) -> bool:
    buf, pending, tokens, done = bytearray(), [], 0, False
    for chunk in chunks_seen:
        for data in _sse_events(buf, chunk, pending):
            if data == "[DONE]":
                done = True
            else:
                tokens += bool(json.loads(data).get("choices"))
    return done and tokens == TOKENS


async def with_httpx(url: str, n: int, conc: int) -> int:
    """httpx (the client phase2_ray used before): raw chunks into the SSE parser, [DONE] and token counts."""
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one(_: int) -> bool:
            async with client.stream("POST", url, json={"prompt": "x", "stream": True}) as resp:
                return _parse([c async for c in resp.aiter_bytes()])

        return await _pool(n, conc, one)


async def with_aiohttp(url: str, n: int, conc: int) -> int:
    """The same request and parse with aiohttp."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:

        async def one(_: int) -> bool:
            async with session.post(url, json={"prompt": "x", "stream": True}) as resp:
                return _parse([c async for c in resp.content.iter_any()])

        return await _pool(n, conc, one)


async def with_phase2(url: str, n: int, conc: int) -> int:
    """phase2_ray's own client (loadtest.client.stream_completion on aiohttp): timing every arrival, judging the
    stream, filling its record."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:

        async def one(i: int) -> bool:
            r = await stream_completion(
                session, url, {"prompt": "x", "stream": True}, RequestRecord("m", i), 30
            )
            return r.ok

        return await _pool(n, conc, one)


CLIENTS = {"httpx": with_httpx, "aiohttp": with_aiohttp, "phase2": with_phase2}


def measure(fn, url: str, n: int, conc: int) -> dict:
    asyncio.run(fn(url, max(conc, n // 10), conc))  # warm: imports, connections, caches
    cpu, wall = time.thread_time(), time.perf_counter()
    ok = asyncio.run(fn(url, n, conc))
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    return {"requests": n, "ok": ok, "cpu_ms_per_request": cpu * 1000 / n, "requests_per_s": n / wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few requests each (the test suite runs this)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="httpx and aiohttp alternate this many times")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    n, rounds = (60, 1) if args.quick else (args.requests, args.rounds)
    url, stop = serve_in_thread()
    res: dict = {"machine": machine(), "tokens": TOKENS, "tokens_per_write": PER_WRITE, "rounds": []}
    try:
        for _ in range(rounds):  # alternated: the machine's drift falls on every client
            res["rounds"].append({k: measure(fn, url, n, args.concurrency) for k, fn in CLIENTS.items()})
    finally:
        stop.set()
    for k in CLIENTS:
        xs = sorted(r[k]["cpu_ms_per_request"] for r in res["rounds"])
        res[f"{k}_cpu_ms_per_request"] = xs[len(xs) // 2]
    res["ratio_httpx_over_aiohttp"] = res["httpx_cpu_ms_per_request"] / res["aiohttp_cpu_ms_per_request"]
    print(json.dumps(res["machine"]))
    print(
        f"{n} streamed requests x {rounds} round(s) at c{args.concurrency}, {TOKENS} tokens in writes of {PER_WRITE}: "
        f"client CPU per request httpx {res['httpx_cpu_ms_per_request']:.2f} ms, aiohttp "
        f"{res['aiohttp_cpu_ms_per_request']:.2f} ms (httpx / aiohttp = {res['ratio_httpx_over_aiohttp']:.2f}x); "
        f"phase2_ray's client {res['phase2_cpu_ms_per_request']:.2f} ms"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
