"""Stage 2c's Ray glue: the in-process reference task, load-generator actors and the replica sweep."""

from __future__ import annotations

import asyncio
import time

import ray
import torch

from phase2_ray.client import run_requests
from phase2_ray.core.compress import load_for_serving, weight_bytes
from phase2_ray.core.engine import AsyncBatchEngine
from phase2_ray.core.generate import SamplingParams
from phase2_ray.core.train import evaluate
from phase2_ray.stages.nodes import assigned_device
from phase2_ray.stages.telemetry import RequestTelemetry
from phase2_ray.storage import materialize


@ray.remote(num_cpus=0)
class LoadClient:
    """Runs on any node (num_cpus=0: it waits on sockets); records travel back to the driver as results, and
    each level's TTFTs and request counts also go to Ray's metrics."""

    def __init__(self, run_id: str) -> None:
        self.telemetry = RequestTelemetry(run_id)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def run(self, base_url: str, model: str, prompts: list[str], level: str = "", **kwargs) -> list[dict]:
        records = run_requests(base_url, model, prompts, **kwargs)
        self.telemetry.record(records, level)
        return records


def start_clients(n: int, run_id: str) -> list:
    """`n` load-generator actors named `<run_id>:2c:client<i>`, spread over the cluster's nodes."""
    return [
        LoadClient.options(name=f"{run_id}:2c:client{i}", scheduling_strategy="SPREAD").remote(run_id)
        for i in range(n)
    ]


def run_level(
    clients: list,
    base_url: str,
    model: str,
    prompts: list[str],
    *,
    n: int,
    concurrency: int,
    first_index: int = 0,
    **kw,
):
    """One load level split over the clients (each its share of requests and concurrency); merged records.
    Request indices (and so their sampling seeds) start at `first_index`."""
    k = max(1, min(len(clients), concurrency, n))
    refs = []
    first = first_index
    for i in range(k):
        share_n = n // k + (i < n % k)
        share_c = concurrency // k + (i < concurrency % k)
        rate = kw.get("request_rate")
        refs.append(
            clients[i].run.remote(
                base_url,
                model,
                prompts,
                n=share_n,
                concurrency=share_c,
                first_index=first,
                **{**kw, "request_rate": rate / k if rate else None},
            )
        )
        first += share_n
    return [r for part in ray.get(refs) for r in part]


@ray.remote(num_cpus=1)
def inprocess_reference(
    models: dict[str, dict],
    token_prompts: list[list[int]],
    val: dict,
    *,
    threads: int,
    max_batch: int,
    sampling: dict,
    n: int,
    warmup: int,
) -> dict:
    """The served models, driven by the same engine in this process with no Serve and no HTTP: one request at a
    time, timed from submission to each token's arrival. Also the val loss and weight bytes of each model, so
    the int8 copy's quality loss is measured on the same windows as its source's."""
    torch.set_num_threads(threads)
    device = assigned_device()
    out: dict = {}
    for model_id, spec in models.items():
        model, _, _ = load_for_serving(materialize(spec), device)
        with torch.inference_mode():
            val_loss = evaluate(model, val["tokens"], val["offsets"], val["batch_size"])
        engine = AsyncBatchEngine(model, max_batch, max_waiting=max(1, n))
        records = asyncio.run(_sequential(engine, model_id, token_prompts, sampling, n, warmup))
        engine.close()
        out[model_id] = {"records": records, "val_loss": val_loss, "weight_bytes": weight_bytes(model)}
    return out


async def _sequential(engine, model_id, token_prompts, sampling, n, warmup) -> list[dict]:
    records = []
    for i in range(-warmup, n):
        params = SamplingParams(
            seed=sampling["seed"] + i, **{k: v for k, v in sampling.items() if k != "seed"}
        )
        start = time.time()
        t0 = last = time.perf_counter()
        ttft, itl, count = None, [], 0
        async for tokens in engine.generate(token_prompts[i % len(token_prompts)], params):
            now = time.perf_counter()
            for j, _ in enumerate(tokens):  # tokens that arrive together are 0 ms apart, as at an HTTP client
                if ttft is None:
                    ttft = (now - t0) * 1000.0
                else:
                    itl.append((now - last) * 1000.0 if j == 0 else 0.0)
                count += 1
            last = now
        if i >= 0:
            records.append(
                {
                    "variant": model_id,
                    "index": i,
                    "ok": True,
                    "start": start,
                    "end": time.time(),
                    "ttft_ms": ttft,
                    "e2e_ms": (last - t0) * 1000.0,
                    "output_tokens": count,
                    "itl_ms": itl,
                }
            )
    return records
