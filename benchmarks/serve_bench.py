"""Serving benchmark: the default model through InferenceScalingEngine on Ray Serve, against the in-process
engine and against Serve's own floor (a deployment that streams 64 empty events), all in one run.

Prints every issue-4 target's measured value; `--out FILE` also writes the raw summaries as JSON.
Usage: .venv/bin/python benchmarks/serve_bench.py [--requests 96] [--out FILE]    (~3-4 min on 2 cores)"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import psutil
import ray
import torch
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from ray import serve
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench import machine  # noqa: E402

from phase2_ray.config import load_config  # noqa: E402
from phase2_ray.core.checkpoint import checkpoint_files  # noqa: E402
from phase2_ray.core.model import GPT, GPTConfig  # noqa: E402
from phase2_ray.dataprep import prepare_data  # noqa: E402
from phase2_ray.loadtest.actors import run_level, start_clients  # noqa: E402
from phase2_ray.loadtest.reference import inprocess_reference  # noqa: E402
from phase2_ray.report.serving import request_frame  # noqa: E402
from phase2_ray.report.stats import summarize_requests  # noqa: E402
from phase2_ray.serving.build import APP_NAME, build_app, replica_stats  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PORT = 8321
floor_api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 1})
@serve.ingress(floor_api)
class Floor:
    """Serve's floor: same proxy, same SSE framing and client, no model work. Holds a tiny torch model so its
    RSS is the bare-replica memory floor too."""

    def __init__(self) -> None:
        self.model = torch.nn.Linear(8, 8)

    @floor_api.post("/v1/completions")
    async def completions(self, body: dict):
        n = body.get("max_tokens", 64)

        async def events():
            for _ in range(n):
                yield 'data: {"choices": [{"index": 0, "text": "x", "finish_reason": null}]}\n\n'
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def stats(self) -> dict:
        mem = psutil.Process().memory_full_info()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"rss_mb": mem.rss / 2**20, "uss_mb": mem.uss / 2**20, "peak_rss_mb": peak}


def p(d: dict | None, q: str = "p50") -> float | None:
    return None if not d else d.get(q)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=96, help="measured requests per level")
    ap.add_argument("--out", help="write the JSON summary here")
    args = ap.parse_args()

    cfg = load_config(ROOT / "configs/phase2.yaml")
    v, sc = cfg.validation, cfg.serve
    d = prepare_data(cfg)
    torch.manual_seed(0)
    model_cfg = {**cfg.model.model_dump(), "vocab_size": d.vocab_size}
    files = checkpoint_files(GPT(GPTConfig(**model_cfg)), {"model": model_cfg}, d.tokenizer_json)
    tok = Tokenizer.from_str(d.tokenizer_json)
    lens = [len(tok.encode(x).ids) for x in d.prompts]
    sampling = dict(max_tokens=v.max_tokens, temperature=v.temperature, top_k=v.top_k, top_p=v.top_p)
    load = dict(warmup=8, seed=0, timeout_s=60.0, api_key=None, **sampling)
    out: dict = {"machine": machine(), "prompt_tokens": lens, "max_tokens": v.max_tokens}
    print(json.dumps(out["machine"]))
    print(f"model {model_cfg}; prompts {min(lens)}-{max(lens)} tokens; {v.max_tokens} output tokens")

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    models = {"default": {"checkpoint": files}}
    ref = ray.get(
        inprocess_reference.remote(
            models,
            [tok.encode(x).ids for x in d.prompts],
            {"tokens": d.val_tokens[:4096], "offsets": torch.tensor([0]), "batch_size": 1},
            threads=1,
            max_batch=sc.max_batch_size,
            sampling={**sampling, "seed": 0},
            n=args.requests,
            warmup=8,
        )
    )["default"]
    inproc = summarize_requests(request_frame(ref["records"]))
    out["inprocess"] = inproc

    quiet = {"log_level": "WARNING", "enable_access_log": False}
    serve.start(http_options={"host": "127.0.0.1", "port": PORT}, logging_config=quiet)
    base = f"http://127.0.0.1:{PORT}"
    clients = start_clients(v.clients, "serve-bench")

    def records(model: str, conc: int, n: int, url: str = base) -> list[dict]:
        return run_level(clients, url, model, d.prompts, n=n, concurrency=conc, request_rate=None, **load)

    # The floor and the engine side by side: c1 requests alternate between them in blocks, so this VM's drift
    # (+-20% between minutes) hits both alike.
    floor_h = serve.run(Floor.bind(), name="floor", route_prefix="/floor", logging_config=quiet)
    serve.run(
        build_app({"default": files}, sc, cpus_per_replica=1, num_replicas=1),
        name=APP_NAME,
        route_prefix="/",
        logging_config=quiet,
    )
    floor_recs, c1_recs, c1_window_s, block = [], [], 0.0, 16
    for _ in range(max(1, args.requests // block)):
        floor_recs += records("floor", 1, block, f"{base}/floor")
        recs = records("default", 1, block)
        c1_window_s += max(r["end"] for r in recs) - min(r["start"] for r in recs)
        c1_recs += recs
    out["floor"] = summarize_requests(request_frame(floor_recs))
    out["floor_replica"] = floor_h.stats.remote().result()
    serve.delete("floor")
    c1 = summarize_requests(request_frame(c1_recs))
    # The c1 blocks were interleaved with the floor's: its aggregate rate counts only its own blocks' time.
    c1.update(measured_s=c1_window_s, output_tokens_per_s=c1["output_tokens"] / c1_window_s)
    out["levels"] = {"c1": c1}
    for c in v.concurrency:
        if c != 1:
            out["levels"][f"c{c}"] = summarize_requests(request_frame(records("default", c, args.requests)))
    for name, lv_s in out["levels"].items():
        print(f"{name}: {lv_s['output_tokens_per_s']:.0f} tok/s", flush=True)
    out["replica_memory"] = replica_stats(1)
    out["replicas"] = {}
    for n_rep in (1, 2):
        if n_rep != 1:
            serve.run(
                build_app({"default": files}, sc, cpus_per_replica=1, num_replicas=n_rep),
                name=APP_NAME,
                route_prefix="/",
                logging_config=quiet,
            )
        recs = records("default", v.scaling_concurrency, 2 * args.requests)
        out["replicas"][n_rep] = summarize_requests(request_frame(recs))
        print(
            f"{n_rep} replica(s) at c{v.scaling_concurrency}: "
            f"{out['replicas'][n_rep]['output_tokens_per_s']:.0f} tok/s",
            flush=True,
        )
    serve.shutdown()
    ray.shutdown()

    c1, lv = out["levels"]["c1"], out["levels"]
    mem = out["replica_memory"][0]
    own = mem["models"]["default"]
    top = f"c{max(v.concurrency)}"
    rows = [
        ("TTFT p50 over HTTP, c1 (ms)", p(c1["ttft_ms"]), "<= 10"),
        ("TTFT p99 over HTTP, c1 (ms)", p(c1["ttft_ms"], "p99"), "<= 30"),
        ("  Serve floor TTFT p50, empty stream, same blocks (ms)", p(out["floor"]["ttft_ms"]), "(reference)"),
        (
            "  engine TTFT p50 above the floor (ms)",
            p(c1["ttft_ms"]) - p(out["floor"]["ttft_ms"]),
            "(reported)",
        ),
        ("  in-process TTFT p50 (ms)", p(inproc["ttft_ms"]), "(reference)"),
        ("Serve+HTTP overhead on TTFT p50 (ms)", p(c1["ttft_ms"]) - p(inproc["ttft_ms"]), "<= 5"),
        (
            "Serve+HTTP overhead per token, TPOT p50 (ms)",
            p(c1["tpot_ms"]) - p(inproc["tpot_ms"]),
            "(reported)",
        ),
        ("single stream, per-request output tok/s p50", p(c1["request_tokens_per_s"]), ">= 2000"),
        ("single stream, aggregate output tok/s (c1)", c1["output_tokens_per_s"], ">= 2000"),
        ("  in-process per-request tok/s p50", p(inproc["request_tokens_per_s"]), "(reference)"),
        (
            f"{top} / c1 aggregate output tok/s",
            lv[top]["output_tokens_per_s"] / c1["output_tokens_per_s"],
            ">= 3",
        ),
        (
            "2 replicas / 1 replica at saturation",
            out["replicas"][2]["output_tokens_per_s"] / out["replicas"][1]["output_tokens_per_s"],
            ">= 1.6",
        ),
        ("replica peak RSS (MB)", mem["peak_rss_mb"], "<= 390"),
        ("  replica USS (MB)", mem["uss_mb"], "(reported)"),
        (
            "  bare replica (torch + tiny model) RSS / USS (MB)",
            f"{out['floor_replica']['rss_mb']:.1f} / {out['floor_replica']['uss_mb']:.1f}",
            "(reference)",
        ),
        (
            "  model weights + KV cache (bytes)",
            f"{own['weight_bytes']:,} + {own['kv_cache_bytes']:,}",
            "(reported)",
        ),
        (
            "failed requests (all levels)",
            sum(s["requests"] - s["succeeded"] for s in [*lv.values(), *out["replicas"].values()]),
            "== 0",
        ),
    ]
    print("\n| measure | value | target |\n|---|---|---|")
    for name, value, target in rows:
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"| {name} | {shown} | {target} |")
    print("\nper level (HTTP, 1 replica):")
    for name, s in lv.items():
        print(
            f"  {name}: TTFT p50 {p(s['ttft_ms']):.2f} p99 {p(s['ttft_ms'], 'p99'):.2f} ms, TPOT p50 "
            f"{p(s['tpot_ms']):.3f} ms, {s['output_tokens_per_s']:.0f} tok/s, {s['succeeded']}/{s['requests']} ok"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"\nbenchmark wall {time.time() - t0:.0f} s")
