"""GPU check without Ray: the GPU config's model trained as baseline and optimized, then generation, through the
pure-PyTorch core (phase2_ray.core + metrics), on one device. Prints each figure as soon as it is measured, then
one JSON line (`GPU_CHECK_JSON {...}`) with everything.

GPU machines may have torch but neither Ray nor pydantic: this reads the YAML with yaml.safe_load and imports
nothing but the core, numpy, pandas, pyyaml, safetensors and tokenizers.

--quick (the test suite runs it, on the CPU): the same script on a tiny model (1 layer x 32, 64-token context),
30 steps of 8 sequences, a 100,000-character corpus, 6 generation requests of 16 tokens at concurrency 1 and 4.
It keeps the config's variants and their flags (bf16 included, so the bf16 peak and MFU paths run), except
torch.compile on the CPU: a cold inductor compile costs more than the whole quick run; the CPU's matmul peak is
measured on 256 x 256 instead of 512 x 512. It leaves out the GPU config's size (its figures mean nothing) and, on
the CPU, compile and every CUDA branch (memory, device name, datasheet peak), which only a GPU machine runs.

usage: python benchmarks/gpu_check.py [--quick] [--config configs/gpu.yaml] [--steps N] [--max-chars N]
                                      [--device auto] [--requests N] [--out FILE]
       (benchmarks/gpu_check.sh wraps it with a time limit)"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from phase2_ray.core import data  # noqa: E402
from phase2_ray.core.engine import AsyncBatchEngine  # noqa: E402
from phase2_ray.core.flops import flops_per_token, measure_peak_flops  # noqa: E402
from phase2_ray.core.generate import SamplingParams  # noqa: E402
from phase2_ray.core.model import GPTConfig  # noqa: E402
from phase2_ray.core.specs import OptimizationSettings  # noqa: E402
from phase2_ray.core.train import TrainSettings, train  # noqa: E402
from phase2_ray.report.stats import block_bootstrap_ratio_ci, describe  # noqa: E402

# Dense bf16 tensor-core peaks from the vendor's datasheets (FLOP/s), by a substring of the device name. A
# reference, printed beside the peak this script measures itself; unknown devices get the measured one only.
DATASHEET_BF16 = {"H200": 989.4e12, "H100 80GB HBM3": 989.4e12, "H100 PCIe": 756.0e12, "A100": 312.0e12}
REQUIRED_TRAINING = ("steps", "batch_size", "lr", "min_lr", "warmup_steps")
OPTIM_FIELDS = ("compile", "compile_mode", "fused_adamw", "bf16", "sdpa_backend")
# --quick: merged over the config's sections (after the check that the file spells out what a run uses)
QUICK = {
    "data": {"max_chars": 100_000, "vocab_size": 512},
    "model": {"block_size": 64, "n_layer": 1, "n_head": 2, "d_model": 32},
    "training": {
        "steps": 30,
        "batch_size": 8,
        "warmup_steps": 5,
        "measurement": {"skip_steps": 5},  # nested, as the config layer (and configs/gpu.yaml) has it
        "eval_windows": 16,
    },
    "validation": {"prompt_tokens": 8, "max_tokens": 16, "concurrency": [1, 4]},
}
QUICK_REQUESTS = 6


def say(msg: str) -> None:
    print(msg, flush=True)


def device_info(device: str) -> dict:
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": device,
        "cpu_count": os.cpu_count(),
    }
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=p.name,
            gpu_memory_gb=round(p.total_memory / 2**30, 1),
            capability=f"{p.major}.{p.minor}",
            cuda=torch.version.cuda,
        )
    return info


def train_variant(
    name: str, optim: dict, model_cfg: GPTConfig, ts: TrainSettings, d: dict, device: str
) -> dict:
    settings = OptimizationSettings.of(**{k: v for k, v in optim.items() if k in OPTIM_FIELDS})
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res, trained = train(model_cfg, ts, settings, d["train"], d["val"], device=device)
    skip = d["skip"]
    steady = res.step_times[skip:]
    tokens_per_step = ts.batch_size * model_cfg.block_size
    med = describe([t * 1000 for t in steady])
    tps = tokens_per_step / (med["p50"] / 1000) if med else None
    out = {
        "variant": name,
        "status": res.status,
        "params": res.params,
        "steps": res.steps,
        "optimizations": res.applied,
        "train_s": res.train_s,
        "step_ms": med,
        "tokens_per_s": tps,
        "final_val_loss": res.val_curve[-1][1],
        "cuda_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "_steady": steady,
        "_model": trained,
    }
    say(
        f"train {name}: {res.status}, {res.steps} steps in {res.train_s:.1f}s, steady {tps:,.0f} tok/s "
        f"(step p50 {med['p50']:.2f} ms), val loss {out['final_val_loss']:.4f}"
        + (f", CUDA peak {out['cuda_max_allocated_mb']:.0f} MB" if device == "cuda" else "")
    )
    return out


async def generate(model, prompts: list[list[int]], max_tokens: int, concurrency: int, n: int) -> dict:
    """n requests through the continuous-batching engine, `concurrency` at a time; TTFT and tokens/s in-process."""
    engine = AsyncBatchEngine(model, max_batch=max(concurrency, 1), max_waiting=n)
    ttft: list[float] = []
    tokens = 0

    async def one(i: int) -> None:
        nonlocal tokens
        t0 = time.perf_counter()
        first = None
        params = SamplingParams(max_tokens, temperature=0.8, top_k=50, seed=i)
        async for batch in engine.generate(prompts[i % len(prompts)], params):
            if first is None:
                first = (time.perf_counter() - t0) * 1000
            tokens += len(batch)
        ttft.append(first)

    sem = asyncio.Semaphore(concurrency)

    async def gated(i: int) -> None:
        async with sem:
            await one(i)

    await asyncio.gather(*(gated(i) for i in range(min(4, n))))  # warm-up: first kernels, allocator
    ttft.clear()
    tokens = 0
    t0 = time.perf_counter()
    await asyncio.gather(*(gated(i) for i in range(n)))
    wall = time.perf_counter() - t0
    engine.close()
    return {
        "concurrency": concurrency,
        "requests": n,
        "ttft_ms": describe(ttft),
        "tokens_per_s": tokens / wall,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="a tiny run, CPU-friendly (the test suite runs this)"
    )
    ap.add_argument("--config", default=str(ROOT / "configs" / "gpu.yaml"))
    ap.add_argument("--steps", type=int, help="override training.steps")
    ap.add_argument("--max-chars", type=int, help="override data.max_chars")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument(
        "--requests", type=int, help=f"generation requests per level (default 64, --quick {QUICK_REQUESTS})"
    )
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args(argv)
    t_start = time.time()
    cfg = yaml.safe_load(Path(args.config).read_text())
    # No config layer here (it needs pydantic): the file must spell out what the run uses, defaults included.
    need = {"model": ("block_size", "n_layer", "n_head", "d_model"), "training": REQUIRED_TRAINING}
    missing = [f"{s}.{k}" for s, keys in need.items() for k in keys if k not in (cfg.get(s) or {})]
    if missing or "baseline" not in (cfg.get("variants") or {}):
        sys.exit(f"{args.config}: gpu_check needs {missing or 'variants.baseline'} set explicitly")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    requests = args.requests or (QUICK_REQUESTS if args.quick else 64)
    if args.quick:
        cfg = {**cfg, **{s: {**(cfg.get(s) or {}), **q} for s, q in QUICK.items()}}
        if device == "cpu":
            cfg["variants"] = {n: {**(v or {}), "compile": False} for n, v in cfg["variants"].items()}
    info = device_info(device)
    say(f"machine: {json.dumps(info)}")

    dc, mc, tc, vc = cfg.get("data", {}), cfg["model"], cfg["training"], cfg.get("validation", {})
    t = time.time()
    corpus = data.load_corpus(data.stdlib_files(), args.max_chars or dc.get("max_chars", 2_000_000), 0.1)
    tok = data.train_tokenizer(corpus.train_text, dc.get("vocab_size", 2048))
    d = {
        "train": data.encode(tok, corpus.train_text),
        "val": data.encode(tok, corpus.val_text),
        # training.measurement.skip_steps, as the config layer nests it (configs/gpu.yaml), or training.skip_steps
        "skip": tc.get("skip_steps", (tc.get("measurement") or {}).get("skip_steps", 10)),
    }
    say(
        f"data: {corpus.chars:,} chars, {len(d['train']):,} train tokens, tokenizer in {time.time() - t:.1f}s"
    )

    model_cfg = GPTConfig(vocab_size=tok.get_vocab_size(), **mc)
    steps = args.steps or tc["steps"]
    ts = TrainSettings(
        steps=steps,
        batch_size=tc["batch_size"],
        lr=tc["lr"],
        min_lr=tc["min_lr"],
        warmup_steps=min(tc["warmup_steps"], steps - 1),
        eval_interval=0,
        eval_windows=tc.get("eval_windows", 64),
        seed=tc.get("seed", 1337),
    )
    d["skip"] = min(d["skip"], ts.steps - 2)
    # --quick on the CPU: 256 x 256 (a bf16 512 x 512 matmul without AVX-512 BF16 takes 0.2 s, 21 of them 4 s)
    size = 256 if args.quick and device == "cpu" else None
    peaks = {"float32": measure_peak_flops(torch.float32, size=size, device=device)}
    if device == "cuda" or any((v or {}).get("bf16") for v in cfg["variants"].values()):
        peaks["bfloat16"] = measure_peak_flops(torch.bfloat16, size=size, device=device)
    say("measured matmul peak: " + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in peaks.items()))
    sheet = next((v for k, v in DATASHEET_BF16.items() if k in info.get("gpu", "")), None)

    runs = {}
    for name, optim in cfg["variants"].items():
        runs[name] = train_variant(name, optim or {}, model_cfg, ts, d, device)
    fpt = flops_per_token(model_cfg)
    base = runs["baseline"]
    results: dict = {"machine": info, "peaks_measured": peaks, "datasheet_bf16_peak": sheet, "training": {}}
    for name, r in runs.items():
        dtype = "bfloat16" if any(c["name"] == "bf16" for c in r["optimizations"]) else "float32"
        achieved = fpt * r["tokens_per_s"]
        row = {k: v for k, v in r.items() if not k.startswith("_")}
        row.update(
            mfu_vs_measured=achieved / peaks.get(dtype, peaks["float32"]),
            mfu_vs_datasheet_bf16=achieved / sheet if sheet else None,
            flops_per_token=fpt,
        )
        if name != "baseline":
            row["speedup"] = block_bootstrap_ratio_ci(base["_steady"], r["_steady"], seed=ts.seed)
            row["val_loss_delta_pct"] = (r["final_val_loss"] / base["final_val_loss"] - 1) * 100
            sp = row["speedup"]
            say(
                f"{name} vs baseline: speedup {sp['ratio']:.2f}x [{sp['ci_low']:.2f}, {sp['ci_high']:.2f}] "
                f"(median step time ratio, 95% bootstrap CI), val loss {row['val_loss_delta_pct']:+.2f}%"
            )
        say(
            f"{name}: MFU {row['mfu_vs_measured'] * 100:.1f}% of the measured {dtype} peak"
            + (f", {row['mfu_vs_datasheet_bf16'] * 100:.1f}% of the datasheet bf16 peak" if sheet else "")
        )
        results["training"][name] = row

    # Generation: the last variant's model (the optimized one), fp32 weights on the device, as Serve loads it.
    model = runs[list(runs)[-1]]["_model"]
    model = getattr(model, "_orig_mod", model).float().eval()
    prompt_tokens = vc.get("prompt_tokens", 32)
    max_tokens = min(vc.get("max_tokens", 64), model_cfg.block_size - prompt_tokens)
    val = d["val"]
    prompts = [val[i * prompt_tokens : (i + 1) * prompt_tokens].tolist() for i in range(16)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    results["generation"] = []
    for conc in (1, max(vc.get("concurrency", [1, 16]))):
        g = asyncio.run(generate(model, prompts, max_tokens, conc, requests))
        results["generation"].append(g)
        say(
            f"generate c{conc}: TTFT p50 {g['ttft_ms']['p50']:.2f} ms p99 {g['ttft_ms']['p99']:.2f} ms, "
            f"{g['tokens_per_s']:,.0f} tok/s ({requests} requests x {max_tokens} tokens, in-process)"
        )
    results["generation_cuda_max_allocated_mb"] = (
        torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    )
    results["wall_s"] = time.time() - t_start
    say(f"total {results['wall_s']:.0f}s")
    print("GPU_CHECK_JSON " + json.dumps(results, default=str), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
