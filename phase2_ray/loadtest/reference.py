"""The in-process reference: the served models driven by the same engine with no Serve and no HTTP, one request
at a time, so the report can say what Serve and HTTP add. Also each model's val loss and weight bytes, so the
int8 copy's quality loss is measured on the same windows as its source's."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

import ray
import torch
from tokenizers import Tokenizer

from phase2_ray.core import data as corpus_data
from phase2_ray.core.compress import load_for_serving, weight_bytes
from phase2_ray.core.engine import AsyncBatchEngine
from phase2_ray.core.sampling import SamplingParams
from phase2_ray.core.train import evaluate
from phase2_ray.devices import assigned_device
from phase2_ray.records import RequestRecord
from phase2_ray.report.request_metrics import spread_gap
from phase2_ray.storage import materialize


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
    max_tokens: list[int] | None = None,
    kv_cache_dtype: str = "float32",
) -> dict:
    """The served models, driven by the same engine in this process with no Serve and no HTTP: one request at a
    time, timed from submission to each token's arrival. Also the val loss of each model, so the int8 copy's
    quality loss is measured on the same windows as its source's, and its own bytes: weights, KV cache and the
    measured activation peak at `max_batch` (measured here, where a replica's memory is not being watched). `max_tokens`: per prompt, a
    workload's output lengths (else sampling's)."""
    torch.set_num_threads(threads)
    device = assigned_device()
    out: dict = {}
    for model_id, spec in models.items():
        model, meta, _ = load_for_serving(materialize(spec), device)
        with torch.inference_mode():
            val_loss = evaluate(model, val["tokens"], val["offsets"], val["batch_size"])
        engine = AsyncBatchEngine(model, max_batch, max(1, n), kv_dtype=getattr(torch, kv_cache_dtype))
        activation_bytes = engine.decoder.activation_bytes()
        records = asyncio.run(_sequential(engine, model_id, token_prompts, sampling, n, warmup, max_tokens))
        engine.close()
        out[model_id] = {
            "records": records,
            "val_loss": val_loss,
            "weight_bytes": weight_bytes(model),
            "kv_cache_bytes": engine.decoder.cache_bytes,
            "activation_bytes": activation_bytes,
            "int8": meta.get("int8"),
        }
    return out


async def _sequential(engine, model_id, token_prompts, sampling, n, warmup, max_tokens=None) -> list[dict]:
    records = []
    for i in range(-warmup, n):
        kw = {k: v for k, v in sampling.items() if k != "seed"}
        if max_tokens:
            kw["max_tokens"] = max_tokens[i % len(max_tokens)]
        params = SamplingParams(seed=sampling["seed"] + i, **kw)
        start = time.time()
        t0 = last = time.perf_counter()
        ttft, itl, count, per_yield, gaps = None, [], 0, [], []
        async for tokens in engine.generate(token_prompts[i % len(token_prompts)], params):
            now = time.perf_counter()
            if per_yield:
                gaps.append((now - last) * 1000.0)
            per_yield.append(len(tokens))
            # as the HTTP client counts them (request_metrics): the first yield gives TTFT, every later one its gap
            # spread over the tokens it carries
            if ttft is None:
                ttft = (now - t0) * 1000.0
            else:
                itl.extend(spread_gap((now - last) * 1000.0, len(tokens)))
            count += len(tokens)
            last = now
        if i >= 0:
            rec = RequestRecord(model_id, i, ok=True, start=start, end=time.time(), scheduled=start)
            rec.ttft_ms, rec.e2e_ms, rec.output_tokens, rec.itl_ms = ttft, (last - t0) * 1000.0, count, itl
            rec.tokens_per_write, rec.write_gap_ms = per_yield, gaps
            records.append(asdict(rec))
    return records


def run_reference(cfg, models: dict[str, dict], d, sampling: dict) -> dict:
    """The reference for stage 2c's driver: `models` (model id -> spec) on `d`'s prompts and val windows, in one
    task sized like a replica; returns each model's results."""
    v, sc = cfg.validation, cfg.serve
    tok = Tokenizer.from_str(d.tokenizer_json)
    val = {
        "tokens": d.val_tokens,
        "offsets": corpus_data.val_offsets(
            len(d.val_tokens), cfg.model.block_size, cfg.training.eval_windows
        ),
        "batch_size": cfg.training.batch_size,
    }
    task = inprocess_reference.options(
        num_cpus=min(sc.cpus_per_replica, ray.cluster_resources().get("CPU", 1)), num_gpus=sc.gpus_per_replica
    )
    return ray.get(
        task.remote(
            models,
            [tok.encode(p if isinstance(p, str) else p[0]).ids for p in d.requests],
            val,
            threads=sc.threads_per_replica,
            max_batch=sc.max_batch_size,
            sampling={**sampling, "seed": cfg.training.seed},
            max_tokens=[p[1] for p in d.requests] if d.workload else None,
            kv_cache_dtype=sc.kv_cache_dtype,
            n=v.requests if v.inprocess_reference else 0,
            warmup=v.warmup_requests if v.inprocess_reference else 0,
        )
    )
