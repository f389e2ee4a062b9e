"""Servers nobody here wrote, and a proxy in front of them, for benchmarks/endpoint_bench.py and the endpoint tests.

- `export_model`: a seeded phase2_ray checkpoint exported as a Hugging Face directory (phase2 export's own code).
- `TransformersServe`: `transformers serve DIR` in a subprocess on a free port (OpenAI-compatible; its streams end
  with a finish_reason and no `data: [DONE]`).
- `DelayProxy`: forwards to an upstream server, adding a fixed delay before each streamed SSE event; it can
  demand an API key, and can stop listening after some requests (a server that dies mid-run)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
from aiohttp import web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_model(
    out: Path,
    *,
    block_size: int = 128,
    n_layer: int = 1,
    n_head: int = 2,
    d_model: int = 32,
    seed: int = 0,
    steps: int = 150,
    arch: str = "gpt2",
    n_kv_head: int | None = None,
) -> Path:
    """A seeded GPT with a tokenizer trained on a slice of the stdlib corpus, trained a little on it (an untrained
    one samples stray bytes that no server can turn into text), saved as a checkpoint and exported by phase2
    export's code to `out/export` (the directory transformers serve loads and init_from reads)."""
    import torch

    from phase2_ray.core import data
    from phase2_ray.core.checkpoint import checkpoint_files, save_dir
    from phase2_ray.core.model import GPTConfig, build_model
    from phase2_ray.export import export_hf

    corpus = data.load_corpus(data.stdlib_files(), 100_000, 0.1)
    tok = data.train_tokenizer(corpus.train_text, 512)
    torch.manual_seed(seed)
    shape = dict(
        vocab_size=tok.get_vocab_size(),
        block_size=block_size,
        n_layer=n_layer,
        n_head=n_head,
        d_model=d_model,
        arch=arch,
    )
    if arch == "llama":
        shape["n_kv_head"] = n_kv_head
    model = build_model(GPTConfig(**shape))
    ids = data.encode(tok, corpus.train_text).long()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        starts = torch.randint(
            0, len(ids) - block_size - 1, (16,), generator=torch.Generator().manual_seed(step)
        )
        x = torch.stack([ids[i : i + block_size] for i in starts])
        y = torch.stack([ids[i + 1 : i + block_size + 1] for i in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    meta = {
        "run_id": None,
        "variant": "baseline",
        "step": 0,
        "model": {**shape, "dropout": 0.0, "bias": False},
    }
    save_dir(checkpoint_files(model, meta, tok.to_str()), out / "run" / "checkpoints" / "baseline")
    return export_hf(out / "run", out / "export", "baseline")


class TransformersServe:
    """`transformers serve DIR --port P` for the life of a `with` block; the model id is DIR's path."""

    def __init__(
        self, model_dir: Path, *, continuous_batching: bool = False, timeout_s: float = 120.0
    ) -> None:
        self.model_dir, self.port = str(model_dir), free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        cli = Path(sys.executable).with_name("transformers")
        args = [str(cli), "serve", self.model_dir, "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--log-level", "warning", "--device", "cpu"]
        if continuous_batching:
            # its paged KV cache, sized for this host's RAM by default (14 GB resident here); 8,192 tokens hold
            # 16 requests of 512 tokens
            args += ["--continuous-batching", "--cb-block-size", "32", "--cb-num-blocks", "256"]
        self.args, self.timeout_s, self.proc = args, timeout_s, None

    def __enter__(self) -> TransformersServe:
        import httpx

        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.proc = subprocess.Popen(self.args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise RuntimeError(f"transformers serve did not answer within {self.timeout_s} s")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class DelayProxy:
    """An OpenAI-compatible endpoint in front of `upstream` (a base URL ending in /v1) on a free port, in a thread.

    `delay_ms`: added per SSE event of a streamed answer, cumulatively (event k is forwarded k delays after it
    arrived): a server slower by a known amount per token.
    `api_key`: requests without `Authorization: Bearer <api_key>` get 401. `die_after`: the POST after that many
    has its connection cut, and the proxy stops listening (refused from then on): a server that died mid-run."""

    def __init__(
        self,
        upstream: str,
        *,
        delay_ms: float = 0.0,
        api_key: str | None = None,
        die_after: int | None = None,
    ) -> None:
        self.upstream, self.delay_s = upstream.rstrip("/"), delay_ms / 1000
        self.api_key, self.die_after = api_key, die_after
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.posts = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        async def stop() -> None:
            await self.session.close()
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        async with self.session.get(f"{self.upstream}/models") as r:
            return web.Response(body=await r.read(), status=r.status, content_type="application/json")

    async def _post(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        self.posts += 1
        if self.die_after is not None and self.posts > self.die_after:
            for site in list(self.runner.sites):  # stop listening: later connections are refused
                await site.stop()
            request.transport.abort()  # and this one is cut
            return web.Response(status=500)
        body = await request.read()
        async with self.session.post(
            f"{self.upstream}/{request.match_info['path']}",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as r:
            out = web.StreamResponse(
                status=r.status, headers={"Content-Type": r.headers.get("Content-Type", "")}
            )
            await out.prepare(request)
            # A reader task stamps each chunk as it arrives, so waiting here never delays the stamps (a wait in
            # this loop would postpone the next read, and a delay counted from a late read compounds).
            chunks: asyncio.Queue = asyncio.Queue()

            async def read() -> None:
                async for chunk in r.content.iter_any():
                    chunks.put_nowait((time.perf_counter(), chunk))
                chunks.put_nowait(None)

            reader = asyncio.ensure_future(read())
            buf, k = b"", 0
            while (item := await chunks.get()) is not None:
                arrived, chunk = item
                buf += chunk
                *events, buf = buf.split(b"\n\n")
                for e in events:
                    k += 1
                    # event k leaves k delays after it arrived: a server slower by `delay` per token, not one whose
                    # every token is late by one delay (that would shift the stream, not slow it)
                    await self._wait_until(arrived + k * self.delay_s)
                    await out.write(e + b"\n\n")
            await reader
            if buf:
                await out.write(buf)
            await out.write_eof()
            return out

    @staticmethod
    async def _wait_until(due: float) -> None:
        """Sleeps until `due`. asyncio's timer grain (1 ms, epoll) makes each wait up to ~1 ms late, but the due
        times are absolute, so the lateness never adds up over a stream; nothing busy-waits (the reader task
        must keep stamping arrivals)."""
        left = due - time.perf_counter()
        if left > 0:
            await asyncio.sleep(left)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self.session = aiohttp.ClientSession()
            app = web.Application()
            app.router.add_get("/v1/models", self._models)
            app.router.add_post("/v1/{path:.*}", self._post)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()


def main(argv: list[str] | None = None) -> int:
    """A self-check of these helpers: an export served by transformers serve, one streamed answer direct and one
    through a proxy that adds 5 ms per event; prints both times. `--quick`: a model trained 20 steps."""
    import argparse
    import json
    import tempfile

    import httpx

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument(
        "--quick", action="store_true", help="a model trained 20 steps (what the test suite runs)"
    )
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        export = export_model(Path(tmp), steps=20 if args.quick else 150)
        with TransformersServe(export) as server, DelayProxy(server.url, delay_ms=5.0) as proxy:
            body = {
                "model": str(export),
                "prompt": "def main(",
                "max_tokens": 16,
                "stream": True,
                "temperature": 0.0,
            }

            def timed(url: str) -> dict:
                t0 = time.perf_counter()
                with httpx.stream("POST", f"{url}/completions", json=body, timeout=60) as r:
                    events = sum(1 for line in r.iter_lines() if line.startswith("data:"))
                return {"seconds": round(time.perf_counter() - t0, 4), "events": events}

            timed(server.url)  # the server's first request pays its warm-up
            out = {"direct": timed(server.url), "proxy +5 ms/event": timed(proxy.url)}
    print(json.dumps(out))
    slowed = out["proxy +5 ms/event"]
    # every event forwarded 5 ms later than the one before: at least most of that shows end to end
    return 0 if slowed["seconds"] > out["direct"]["seconds"] + 0.8 * 0.005 * slowed["events"] else 1


if __name__ == "__main__":
    sys.exit(main())
