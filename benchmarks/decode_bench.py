"""In-process decode benchmark: each served model's fp32 source against its int8 copy on every int8 kernel this
machine has (and the `auto` choice), the KV cache in fp32 against bf16, and torch.compile of the decode step, for
the default model (configs/phase2.yaml) and the bench-size model (configs/bench.yaml). One torch thread, as a
Serve replica runs. Everything is measured side by side in one run, rounds interleaved (A B C, A B C, ...), and
each ratio is the median of the per-round ratios with the range over rounds: with 7 or more rounds that range
holds the true median ratio with >= 98% probability (the sign test), so a ratio whose range spans 1 is no result.

Also each model's own bytes: weights (int8 kernels' packed matrices included), KV cache and the measured peak of
the activations at the configured batch; and, with --checkpoint RUN_DIR/checkpoints/optimized, the int8 copy's
val loss against its source on the default config's held-out split.

usage: .venv/bin/python benchmarks/decode_bench.py [--rounds 9] [--compile] [--checkpoint DIR] [--out FILE]
       .venv/bin/python benchmarks/decode_bench.py --quick    (what the test suite runs: a few seconds)"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from phase2_ray.configure import load_config
from phase2_ray.core.compress import (
    KERNELS,
    SemanticCompressor,
    choose_kernel,
    fbgemm_available,
    weight_bytes,
)
from phase2_ray.core.generate import BatchDecoder, SamplingParams
from phase2_ray.core.model import GPT, GPTConfig
from phase2_ray.provenance import cpu_model, cpu_simd_flags

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"default": "configs/phase2.yaml", "bench": "configs/bench.yaml"}


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "simd": cpu_simd_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def single_stream(model: GPT, prompt: list[int], new: int, kv_dtype=None) -> float:
    """Output tok/s of one greedy request, prefill included (what a lone client sees)."""
    dec = BatchDecoder(model, 1, kv_dtype)
    t0 = time.perf_counter()
    seq = dec.add(prompt, SamplingParams(new, temperature=0))
    while not seq.done:
        dec.step()
    return new / (time.perf_counter() - t0)


def batched(model: GPT, prompt: list[int], new: int, batch: int, kv_dtype=None) -> float:
    """Output tok/s of `batch` greedy requests decoded together from the start."""
    dec = BatchDecoder(model, batch, kv_dtype)
    t0 = time.perf_counter()
    for i in range(batch):
        dec.add(prompt[i % len(prompt) :] + prompt[: i % len(prompt)], SamplingParams(new, temperature=0))
    while dec.active:
        dec.step()
    return batch * new / (time.perf_counter() - t0)


def paired(samples: dict[str, list[float]], base: str) -> dict[str, dict]:
    """Each candidate's per-round ratio over `base` (same round): median and range."""
    out = {}
    for name, xs in samples.items():
        rs = [x / b for x, b in zip(xs, samples[base], strict=True)]
        out[name] = {
            "tok_s_median": statistics.median(xs),
            "ratio_median": statistics.median(rs),
            "ratio_min": min(rs),
            "ratio_max": max(rs),
            "rounds": len(rs),
        }
    return out


def bench_model(name: str, rounds: int, new: int, batch: int, do_compile: bool) -> dict:
    cfg = load_config(ROOT / MODELS[name])
    gcfg = GPTConfig(**{**cfg.model.gpt_fields(cfg.data.vocab_size), "dropout": 0.0})
    torch.manual_seed(0)
    fp32 = GPT(gcfg).eval()  # speed does not depend on the weights' values
    prompt = torch.randint(0, gcfg.vocab_size, (32,)).tolist()
    batch = min(batch, cfg.serve.max_batch_size)
    kernels = [k for k in KERNELS if k != "fbgemm" or fbgemm_available()]
    auto, why = choose_kernel(gcfg)
    models = {"fp32": fp32, **{f"int8-{k}": SemanticCompressor(k).compress(fp32) for k in kernels}}
    out: dict = {
        "params": fp32.num_params(),
        "shape": gcfg.__dict__,
        "auto_kernel": auto,
        "auto_probe": why.get("probe"),
        "batch": batch,
        "new_tokens": new,
        "prompt_tokens": len(prompt),
    }
    # Memory: each model's own bytes at the configured batch.
    out["bytes"] = {}
    for m, model in models.items():
        for kv in (None, torch.bfloat16):
            dec = BatchDecoder(model, cfg.serve.max_batch_size, kv)
            key = m if kv is None else f"{m}, bf16 KV"
            w, c, a = weight_bytes(model), dec.cache_bytes, dec.activation_bytes()
            out["bytes"][key] = {"weights": w, "kv_cache": c, "activations": a, "total": w + c + a}
    # Speed, interleaved rounds; the bf16 cache on the fp32 model.
    one: dict[str, list[float]] = {m: [] for m in [*models, "fp32, bf16 KV"]}
    many: dict[str, list[float]] = {m: [] for m in models}
    for model in models.values():  # warm-up: first calls allocate and fault pages in
        single_stream(model, prompt, new)
        batched(model, prompt, new, batch)
    for _ in range(rounds):
        for m, model in models.items():
            one[m].append(single_stream(model, prompt, new))
            many[m].append(batched(model, prompt, new, batch))
        one["fp32, bf16 KV"].append(single_stream(fp32, prompt, new, torch.bfloat16))
    out["single_stream"] = paired(one, "fp32")
    out[f"batch{batch}"] = paired(many, "fp32")
    if do_compile:
        out["compile"] = compiled_decode(fp32, prompt, new, batch, rounds)
    return out


def compiled_decode(model: GPT, prompt: list[int], new: int, batch: int, rounds: int) -> dict:
    """torch.compile of the decode step (BatchDecoder._decode, dynamic shapes): the compile time, then per-step
    time against eager at batch 1 and `batch`, interleaved."""
    res: dict = {}
    for b in (1, batch):
        eager, comp = BatchDecoder(model, b), BatchDecoder(model, b)
        for dec in (eager, comp):
            for _ in range(b):
                dec.add(prompt, SamplingParams(new, temperature=0))
        t0 = time.perf_counter()
        comp._decode = torch.compile(comp._decode, dynamic=True)
        tokens, pos = torch.zeros(b, dtype=torch.long), [len(prompt)] * b
        with torch.inference_mode():
            comp._decode(tokens, pos)
            first = time.perf_counter() - t0
            times: dict[str, list[float]] = {"eager": [], "compiled": []}
            for _ in range(rounds):
                for name, dec in (("eager", eager), ("compiled", comp)):
                    t = time.perf_counter()
                    for _ in range(50):
                        dec._decode(tokens, pos)
                    times[name].append((time.perf_counter() - t) / 50 * 1e6)
        res[f"batch{b}"] = {
            "compile_s": first,
            "eager_step_us": statistics.median(times["eager"]),
            "compiled_step_us": statistics.median(times["compiled"]),
            **{k: v for k, v in paired(times, "eager")["compiled"].items() if k.startswith("ratio")},
        }
        torch._dynamo.reset()
    return res


def quality(checkpoint: str) -> dict:
    """Val loss of the checkpoint and of its int8 copy on each kernel, on the default config's held-out split."""
    from phase2_ray.core.checkpoint import load_checkpoint, read_dir
    from phase2_ray.core.compress import load_for_serving
    from phase2_ray.core.train import evaluate
    from phase2_ray.dataprep import prepare_data

    d = prepare_data(load_config(ROOT / MODELS["default"]))
    files = read_dir(checkpoint)
    src = load_checkpoint(files)[0]
    val = d.val_tokens
    offsets = torch.arange(0, len(val) - src.cfg.block_size - 1, src.cfg.block_size)[:256]
    with torch.inference_mode():
        base = evaluate(src, val, offsets, 16)
        out = {"fp32": base}
        for k in [k for k in KERNELS if k != "fbgemm" or fbgemm_available()]:
            m = load_for_serving({"checkpoint": files, "int8": True, "int8_kernel": k})[0]
            loss = evaluate(m, val, offsets, 16)
            out[f"int8-{k}"] = loss
            out[f"int8-{k}_delta_pct"] = (loss / base - 1) * 100
    return out


def report(res: dict) -> None:
    for name, m in res["models"].items():
        b = m["batch"]
        print(f"\n== {name} model: {m['params']:,} params; auto chose int8 kernel {m['auto_kernel']} ==")
        for p_name, p in (m["auto_probe"] or {}).items():
            print(
                f"  probe {p_name}: one decode step's matmuls {p['step_matmul_us']:.0f} us, "
                f"{p['bytes']:,} bytes (fp32 {p['fp32_bytes']:,})"
            )
        print(f"| model | single stream tok/s | ÷ fp32 [range] | batch {b} tok/s | ÷ fp32 [range] |")
        print("|---|---|---|---|---|")
        for key, s in m["single_stream"].items():
            bt = m[f"batch{b}"].get(key)
            cells = [
                key,
                f"{s['tok_s_median']:,.0f}",
                f"{s['ratio_median']:.2f} [{s['ratio_min']:.2f}, {s['ratio_max']:.2f}]",
                f"{bt['tok_s_median']:,.0f}" if bt else "",
                f"{bt['ratio_median']:.2f} [{bt['ratio_min']:.2f}, {bt['ratio_max']:.2f}]" if bt else "",
            ]
            print("| " + " | ".join(cells) + " |")
        print("| bytes at batch 16 | weights | KV cache | activations | total |\n|---|---|---|---|---|")
        for key, x in m["bytes"].items():
            print(f"| {key} | {x['weights']:,} | {x['kv_cache']:,} | {x['activations']:,} | {x['total']:,} |")
        for bk, c in (m.get("compile") or {}).items():
            print(
                f"  torch.compile decode step, {bk}: compile {c['compile_s']:.1f} s, step "
                f"{c['eager_step_us']:.0f} us eager vs {c['compiled_step_us']:.0f} us compiled "
                f"(eager ÷ compiled time {1 / c['ratio_median']:.2f}x)"
            )
    if "quality" in res:
        print("\nval loss:", json.dumps(res["quality"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the default model, 2 rounds, 8 tokens, no compile")
    ap.add_argument("--models", default="default,bench")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the decode step")
    ap.add_argument("--checkpoint", help="a trained checkpoint directory: the int8 copies' val loss")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.models, args.rounds, args.new_tokens, args.batch = "default", 2, 8, 4
    res: dict = {"machine": machine(), "models": {}}
    print("machine:", json.dumps(res["machine"]), flush=True)
    t0 = time.time()
    for name in args.models.split(","):
        res["models"][name] = bench_model(name, args.rounds, args.new_tokens, args.batch, args.compile)
    if args.checkpoint:
        res["quality"] = quality(args.checkpoint)
    res["wall_s"] = time.time() - t0
    report(res)
    print(f"\nbenchmark wall {res['wall_s']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
