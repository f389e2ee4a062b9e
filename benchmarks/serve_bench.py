"""Serving benchmark: the default model through InferenceScalingEngine on Ray Serve, side by side in one run with
- Serve's floor: a deployment behind the same proxy that parses the request, tokenizes the prompt and streams the
  same SSE framing (CompletionStream, the same writes per token) with no model: what the engine adds is the rest;
- a bare replica: the engine's own class, code and runtime env with no model loaded: the memory floor;
- the in-process engine (no Serve, no HTTP).

The replica serves what a pipeline run serves: two fp32 models and the int8 copy of one. Prints each issue-15
target with its value and verdict; `--out FILE` also writes the raw summaries as JSON.

usage: .venv/bin/python benchmarks/serve_bench.py [--requests 96] [--out FILE]    (~2 min on 2 cores)
       .venv/bin/python benchmarks/serve_bench.py --quick    (what the test suite runs: fewer requests, no
       2-replica level; inside a running Ray with Serve up it deploys into that Serve and deletes only its apps)"""

# No `from __future__ import annotations`: FastAPI must see the Floor handler's `Request` annotation as a class.
import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path

import psutil
import ray
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_bench import free_port  # noqa: E402
from train_bench import machine  # noqa: E402

from phase2_ray.configure import load_config  # noqa: E402
from phase2_ray.core.checkpoint import checkpoint_files  # noqa: E402
from phase2_ray.core.generate import BatchDecoder, SamplingParams  # noqa: E402
from phase2_ray.core.model import GPT, GPTConfig  # noqa: E402
from phase2_ray.dataprep import prepare_data  # noqa: E402
from phase2_ray.loadtest.actors import run_level, start_clients  # noqa: E402
from phase2_ray.loadtest.plan import Endpoint, LevelSpec  # noqa: E402
from phase2_ray.loadtest.reference import inprocess_reference  # noqa: E402
from phase2_ray.report.serving import request_frame  # noqa: E402
from phase2_ray.report.stats import summarize_requests  # noqa: E402
from phase2_ray.serving.app import DEPLOYMENT  # noqa: E402
from phase2_ray.serving.build import build_app, engine_options, plain_specs  # noqa: E402
from phase2_ray.serving.requests import parse_completion  # noqa: E402
from phase2_ray.serving.stream import CompletionStream  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APPS = {"floor": ("serve-bench-floor", "/bench-floor"), "engine": ("serve-bench", "/bench")}
floor_api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 1})
@serve.ingress(floor_api)
class Floor:
    """Everything a completion costs but the model: the same request parsing, prompt tokenization, SSE chunks,
    detokenization and writes per token as the engine, with token ids that need no compute."""

    def __init__(self, tokenizer_json: str, per_write: int, interval_ms: float) -> None:
        self.tok = Tokenizer.from_str(tokenizer_json)
        self.per_write, self.interval_s = per_write, interval_ms / 1000.0
        # The torch runtime's own working memory (MKL, oneDNN, attention buffers), which any replica that computes
        # pays and which is no model's bytes: warmed by decoding with a GPT of a few KB through the same ops.
        torch.set_num_threads(1)
        tiny = GPT(GPTConfig(vocab_size=64, block_size=128, n_layer=1, n_head=1, d_model=8)).eval()
        dec = BatchDecoder(tiny, 16)
        for i in range(16):
            dec.add([1 + i % 60] * 32, SamplingParams(64, temperature=0.8, top_k=50, seed=i))
        while dec.active:
            dec.step()

    @floor_api.post("/v1/completions")
    async def completions(self, request: Request):
        req = await parse_completion(request, {"floor": None}, 16_384)
        if isinstance(req, JSONResponse):
            return req
        ids = self.tok.encode(req.prompt).ids
        n = req.max_tokens

        async def rest():
            for i in range(1, n):  # one token per "step", as the engine yields them
                await asyncio.sleep(0)
                yield [ids[i % len(ids)]]

        out = CompletionStream("floor", self.tok, len(ids), n)
        events = out.events([ids[0]], rest(), self.per_write, self.interval_s)
        return StreamingResponse(events, media_type="text/event-stream")

    def stats(self) -> dict:
        mem = psutil.Process().memory_full_info()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return {"rss_mb": mem.rss / 2**20, "uss_mb": mem.uss / 2**20, "peak_rss_mb": peak}


def p(d: dict | None, q: str = "p50") -> float | None:
    return None if not d else d.get(q)


def models_bytes(out: dict) -> int:
    """The served models' own bytes: weights and KV cache as the replica holds them, activations as the
    in-process reference measured them."""
    act = {m: r.get("activation_bytes") or 0 for m, r in out["reference"].items()}  # 0: code that predates it
    return sum(m["weight_bytes"] + m["kv_cache_bytes"] + act[k] for k, m in out["replica"]["models"].items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=96, help="measured requests per level")
    ap.add_argument("--quick", action="store_true", help="16 requests per level, no 2-replica level")
    ap.add_argument("--out", help="write the JSON summary here")
    args = ap.parse_args(argv)
    n_req = 16 if args.quick else args.requests
    t_start = time.time()

    cfg = load_config(ROOT / "configs/phase2.yaml")
    v, sc = cfg.validation, cfg.serve
    d = prepare_data(cfg)
    model_cfg = cfg.model.gpt_fields(d.vocab_size)
    files = {}
    for seed, name in enumerate(("baseline", "default")):  # speed and bytes do not depend on trained weights
        torch.manual_seed(seed)
        files[name] = checkpoint_files(GPT(GPTConfig(**model_cfg)), {"model": model_cfg}, d.tokenizer_json)
    tok = Tokenizer.from_str(d.tokenizer_json)
    lens = [len(tok.encode(x).ids) for x in d.prompts]
    sampling = dict(max_tokens=v.max_tokens, temperature=v.temperature, top_k=v.top_k, top_p=v.top_p)
    load = dict(seed=0, timeout_s=60.0, api_key=None, **sampling)
    out: dict = {"machine": machine(), "prompt_tokens": lens, "max_tokens": v.max_tokens, "quick": args.quick}
    print(json.dumps(out["machine"]), flush=True)
    print(
        f"model {model_cfg}; prompts {min(lens)}-{max(lens)} tokens; {v.max_tokens} output tokens", flush=True
    )

    own_ray = not ray.is_initialized()
    if own_ray:
        # "local": a cluster of its own, never one recorded in /tmp/ray/ray_current_cluster by another run
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    quiet = {"log_level": "WARNING", "enable_access_log": False}
    from phase2_ray.serving.build import running_serve

    up = running_serve()
    own_serve = up is None
    if own_serve:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()}, logging_config=quiet)
        up = running_serve()
    base = f"http://127.0.0.1:{up[1]}"
    try:
        ref = ray.get(
            inprocess_reference.remote(
                plain_specs(files, "default"),
                [tok.encode(x).ids for x in d.prompts],
                {"tokens": d.val_tokens[:4096], "offsets": torch.tensor([0]), "batch_size": 1},
                threads=1,
                max_batch=sc.max_batch_size,
                sampling={**sampling, "seed": 0},
                n=n_req,
                warmup=8,
            )
        )
        out["reference"] = {m: {k: v for k, v in r.items() if k != "records"} for m, r in ref.items()}
        out["inprocess"] = summarize_requests(request_frame(ref["default"]["records"]))
        clients = start_clients(v.clients, f"serve-bench-{os.getpid()}")

        def records(url: str, model: str, conc: int, n: int) -> list[dict]:
            endpoint = Endpoint(base_url=url, prompts=d.prompts, **load)
            return run_level(clients, endpoint, LevelSpec(model=model, n=n, concurrency=conc, warmup=8))

        def deploy(replicas: int, models: dict) -> None:
            name, route = APPS["engine"]
            serve.run(
                build_app(
                    plain_specs(models, "default" if "default" in models else None), sc, num_replicas=replicas
                ),
                name=name,
                route_prefix=route,
                logging_config=quiet,
            )

        engine_handle = lambda: serve.get_deployment_handle(DEPLOYMENT, app_name=APPS["engine"][0])  # noqa: E731
        # The bare replica first: the engine's class and runtime env with no model, as a memory floor.
        deploy(1, {})
        out["bare_engine"] = _stats(engine_handle())
        deploy(1, files)
        fname, froute = APPS["floor"]
        floor = serve.run(
            Floor.options(ray_actor_options=engine_options(sc, 1)["ray_actor_options"]).bind(
                d.tokenizer_json, sc.stream_batch_tokens, sc.stream_interval_ms
            ),
            name=fname,
            route_prefix=froute,
            logging_config=quiet,
        )
        # The floor and the engine side by side: c1 requests alternate between them in blocks, so this VM's
        # drift hits both alike.
        floor_recs, c1_recs, c1_window_s, block = [], [], 0.0, 8 if args.quick else 16
        for _ in range(max(1, n_req // block)):
            floor_recs += records(base + froute, "floor", 1, block)
            recs = records(base + APPS["engine"][1], "default", 1, block)
            c1_window_s += max(r["end"] for r in recs) - min(r["start"] for r in recs)
            c1_recs += recs
        out["floor"] = summarize_requests(request_frame(floor_recs))
        # The memory floor: a replica with the engine's imports, runtime env, tokenizer, streaming traffic and a
        # warmed torch runtime, and no model (the idle engine with no model, `bare_engine`, has run no op).
        out["bare_replica"] = floor.stats.remote().result()
        serve.delete(fname)
        c1 = summarize_requests(request_frame(c1_recs))
        # The c1 blocks were interleaved with the floor's: its aggregate rate counts only its own blocks' time.
        c1.update(measured_s=c1_window_s, output_tokens_per_s=c1["output_tokens"] / c1_window_s)
        out["levels"] = {"c1": c1}
        url = base + APPS["engine"][1]
        for c in v.concurrency:
            if c != 1:
                out["levels"][f"c{c}"] = summarize_requests(request_frame(records(url, "default", c, n_req)))
        int8 = records(url, "default-int8", 1, n_req)
        out["int8_c1"] = summarize_requests(request_frame(int8))
        for name, lv_s in out["levels"].items():
            print(f"{name}: {lv_s['output_tokens_per_s']:.0f} tok/s", flush=True)
        out["replica"] = _stats(engine_handle())
        out["replicas"] = {}
        if not args.quick:
            for n_rep in (1, 2):
                if n_rep != 1:
                    deploy(n_rep, files)
                recs = records(url, "default", v.scaling_concurrency, 2 * n_req)
                out["replicas"][n_rep] = summarize_requests(request_frame(recs))
                print(
                    f"{n_rep} replica(s) at c{v.scaling_concurrency}: "
                    f"{out['replicas'][n_rep]['output_tokens_per_s']:.0f} tok/s",
                    flush=True,
                )
        for c in clients:
            ray.kill(c)
    finally:
        for name, _ in APPS.values():
            try:
                serve.delete(name)
            except Exception:  # noqa: BLE001 - not deployed
                pass
        if own_serve:
            serve.shutdown()
        if own_ray:
            ray.shutdown()
    out["wall_s"] = time.time() - t_start
    out["targets"] = targets(out, v)
    print_report(out)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    return 0


def _stats(handle) -> dict:
    from dataclasses import asdict

    return asdict(handle.stats.remote().result())


def targets(out: dict, v) -> list[dict]:
    """Issue 15's serving targets, each with its value, threshold and verdict."""
    c1, lv, floor = out["levels"]["c1"], out["levels"], out["floor"]
    top = f"c{max(v.concurrency)}"
    rep, bare = out["replica"], out["bare_replica"]
    own = models_bytes(out) / 2**20
    rows = [
        {
            "target": "TTFT p50 at c1 <= Serve floor + 2 ms",
            "value": p(c1["ttft_ms"]) - p(floor["ttft_ms"]),
            "threshold": 2.0,
            "unit": "ms above the floor",
            "met": p(c1["ttft_ms"]) - p(floor["ttft_ms"]) <= 2.0,
        },
        {
            "target": f"aggregate output tok/s {top} / c1 >= 3",
            "value": lv[top]["output_tokens_per_s"] / c1["output_tokens_per_s"],
            "threshold": 3.0,
            "unit": "x",
            "met": lv[top]["output_tokens_per_s"] / c1["output_tokens_per_s"] >= 3.0,
        },
        {
            "target": "replica peak RSS <= 1.05 x (the model-less replica's peak RSS + the models' own bytes)",
            "value": rep["peak_rss_mb"] / (bare["peak_rss_mb"] + own),
            "threshold": 1.05,
            "unit": "x",
            "met": rep["peak_rss_mb"] / (bare["peak_rss_mb"] + own) <= 1.05,
        },
        {
            "target": "failed requests == 0",
            "value": sum(s["requests"] - s["succeeded"] for s in [*lv.values(), *out["replicas"].values()])
            + out["int8_c1"]["requests"]
            - out["int8_c1"]["succeeded"],
            "threshold": 0,
            "unit": "requests",
        },
    ]
    rows[-1]["met"] = rows[-1]["value"] == 0
    return rows


def print_report(out: dict) -> None:
    c1, floor, ip = out["levels"]["c1"], out["floor"], out["inprocess"]
    rep, bare, idle = out["replica"], out["bare_replica"], out["bare_engine"]
    print("\n| target | value | threshold | met |\n|---|---|---|---|")
    for t in out["targets"]:
        print(
            f"| {t['target']} | {t['value']:.2f} {t['unit']} | {t['threshold']} | {'yes' if t['met'] else 'NO'} |"
        )
    print("\n| measure | value |\n|---|---|")
    rows = [
        (
            "TTFT p50 at c1, engine / Serve floor / in-process (ms)",
            f"{p(c1['ttft_ms']):.2f} / {p(floor['ttft_ms']):.2f} / {p(ip['ttft_ms']):.2f}",
        ),
        (
            "TTFT p99 at c1, engine / floor (ms)",
            f"{p(c1['ttft_ms'], 'p99'):.2f} / {p(floor['ttft_ms'], 'p99'):.2f}",
        ),
        ("TPOT p50 at c1, engine / in-process (ms)", f"{p(c1['tpot_ms']):.3f} / {p(ip['tpot_ms']):.3f}"),
        (
            "int8 copy at c1: TTFT p50 (ms), per-request tok/s p50",
            f"{p(out['int8_c1']['ttft_ms']):.2f}, {p(out['int8_c1']['request_tokens_per_s']):.0f}",
        ),
        (
            "replica peak RSS / RSS / USS (MB)",
            f"{rep['peak_rss_mb']:.1f} / {rep['rss_mb']:.1f} / {rep['uss_mb']:.1f}",
        ),
        (
            "model-less replica (the floor: torch runtime warmed, after its traffic) peak RSS / RSS / USS (MB)",
            f"{bare['peak_rss_mb']:.1f} / {bare['rss_mb']:.1f} / {bare['uss_mb']:.1f}",
        ),
        (
            "the engine with no model, idle: peak RSS / RSS / USS (MB)",
            f"{idle['peak_rss_mb']:.1f} / {idle['rss_mb']:.1f} / {idle['uss_mb']:.1f}",
        ),
        ("the models' own bytes (MB)", f"{models_bytes(out) / 2**20:.2f}"),
    ]
    for name, m in rep["models"].items():
        kernel = (m.get("int8") or {}).get("kernel")
        rows.append(
            (
                f"  {name}{f' (int8, {kernel})' if kernel else ''}: weights + KV cache + activations (bytes)",
                f"{m['weight_bytes']:,} + {m['kv_cache_bytes']:,} + {out['reference'][name].get('activation_bytes') or 0:,}",
            )
        )
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\nper level (HTTP, 1 replica):")
    for name, s in out["levels"].items():
        print(
            f"  {name}: TTFT p50 {p(s['ttft_ms']):.2f} p99 {p(s['ttft_ms'], 'p99'):.2f} ms, TPOT p50 "
            f"{p(s['tpot_ms']):.3f} ms, {s['output_tokens_per_s']:.0f} tok/s, {s['succeeded']}/{s['requests']} ok"
        )
    if out["replicas"]:
        r = out["replicas"]
        print(
            f"  2 replicas / 1 at saturation: {r[2]['output_tokens_per_s'] / r[1]['output_tokens_per_s']:.2f}x"
        )
    print(f"\nbenchmark wall {out['wall_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
