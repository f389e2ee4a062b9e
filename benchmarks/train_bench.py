"""Training benchmark: plain PyTorch loop vs Ray actors, baseline vs optimized vs auto, concurrent vs isolated.

Everything is measured side by side in one run on this machine, then printed as ratios (and written as JSON).
Usage: .venv/bin/python benchmarks/train_bench.py [--models default,bench] [--out FILE]"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import psutil
import ray
import torch

from phase2_ray.config import load_config
from phase2_ray.core.flops import flops_per_token, measure_peak_flops
from phase2_ray.core.model import GPTConfig
from phase2_ray.core.optimize import OptimizationSettings
from phase2_ray.core.train import TrainSettings, train
from phase2_ray.pipeline import (
    _cpu_model,
    _cpu_simd_flags,
    core_train_settings,
    prepare_data,
    run_speed_trial,
    run_training,
)
from phase2_ray.report import MetricsOrchestrator

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"default": ROOT / "configs/phase2.yaml", "bench": ROOT / "configs/bench.yaml"}


def machine() -> dict:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "simd": _cpu_simd_flags(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "ray": ray.__version__,
    }


def plain_loop(cfg, d, skip: int) -> dict:
    """The baseline stack trained by the core loop in this process, pinned to one core like an actor."""
    proc = psutil.Process()
    before = proc.cpu_affinity()
    proc.cpu_affinity([before[0]])
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.training.cpus_per_actor)
    try:
        res = train(
            GPTConfig(**{**cfg.model.model_dump(), "vocab_size": d.vocab_size}),
            TrainSettings(**core_train_settings(cfg)),
            OptimizationSettings(**cfg.variants["baseline"].model_dump(exclude={"auto", "auto_compile"})),
            d.train_tokens,
            d.val_tokens,
        )
        peak = measure_peak_flops(torch.float32)
    finally:
        torch.set_num_threads(threads)
        proc.cpu_affinity(before)
    steady = res.step_times[skip:]
    return {
        "step_ms_p50": statistics.median(steady) * 1000,
        "tokens_per_s": len(steady) * cfg.training.batch_size * cfg.model.block_size / sum(steady),
        "peak_flops": peak,
    }


def _pair_run(name: str, d, variants: dict, isolation: str) -> tuple[dict, list[dict], dict]:
    """Baseline and one other variant trained together (and alone when isolation is `both`)."""
    cfg = load_config(
        CONFIGS[name],
        ["training.log_every=0", f"training.isolation={isolation}", f"variants={json.dumps(variants)}"],
    )
    t0 = time.time()
    training, extra = run_training(cfg, f"bench-{name}-{'-'.join(variants)}", d, [], t0, {})
    trials, _ = run_speed_trial(cfg, training, d, t0)
    r = MetricsOrchestrator(
        cfg=cfg,
        run_id="bench",
        started_at=t0,
        environment={},
        data_info={},
        stages=[],
        training=training,
        trials=trials,
        validation={},
        failure=None,
        extra_runs=extra,
    ).build()
    return training, extra, r


def _variant_row(t: dict, c: dict) -> dict:
    return {
        "settings": t["settings"],
        "auto": t["auto"] and {k: t["auto"][k] for k in ("chosen", "probe_s", "candidates")},
        "step_ms_p50": t["step_ms"]["p50"],
        "tokens_per_s": t["tokens_per_s"],
        "train_s": t["work_s"],
        "mfu": t["mfu"]["value"],
        "peak_flops": t["mfu"]["peak_flops"],
        "val_loss": t["val_loss"],
        "speedup": c.get("speedup"),
        "concurrent_speedup": (c.get("concurrent") or {}).get("step_time_ratio"),
        "isolated_speedup": c.get("isolated_speedup"),
        "concurrent_vs_isolated_pct": c.get("concurrent_vs_isolated_pct"),
        "work_time_ratio": (c.get("concurrent") or {}).get("work_time_ratio"),
        "val_loss_delta_pct": c.get("val_loss_delta_pct"),
        "rotation": t["placement"].get("core_rotation"),
    }


def bench_model(name: str, with_auto: bool) -> dict:
    """Pairs, each baseline vs one variant at the same time on rotating cores: the configured optimized variant
    (also alone, for concurrent vs isolated), an A/A control identical to the baseline (the measurement's own
    bias), and optionally `auto` allowed to compile."""
    cfg = load_config(CONFIGS[name])
    d = prepare_data(cfg)
    skip = cfg.training.skip_steps
    base = cfg.variants["baseline"].model_dump()
    plain_before = plain_loop(cfg, d, skip)
    pairs = {"optimized": (cfg.variants["optimized"].model_dump(), "both"), "control": (base, "concurrent")}
    if with_auto:
        pairs["auto"] = ({**base, "auto": True, "auto_compile": True}, "concurrent")
    out = {"variants": {}}
    for v, (vcfg, isolation) in pairs.items():
        training, extra, r = _pair_run(name, d, {"baseline": base, v: vcfg}, isolation)
        out["variants"].setdefault("baseline", _variant_row(r["training"]["baseline"], {}))
        out["variants"][v] = _variant_row(r["training"][v], r["comparison"][v])
        if isolation == "both":
            iso_base = next(x for x in extra if x["variant"] == "baseline" and x["phase"] == "isolated")
            out["actor_isolated_baseline_step_ms_p50"] = (
                statistics.median(iso_base["step_times"][skip:]) * 1000
            )
        out["params"] = r["training"]["baseline"]["params"]
        out["flops_per_token"] = flops_per_token(GPTConfig(**training["baseline"]["model"]))
    # Measured again after the actors: this machine's speed drifts, so the overhead uses the mean of both.
    plain_after = plain_loop(cfg, d, skip)
    ms = (plain_before["step_ms_p50"] + plain_after["step_ms_p50"]) / 2
    out["plain_loop"] = {
        "step_ms_p50": ms,
        "tokens_per_s": (plain_before["tokens_per_s"] + plain_after["tokens_per_s"]) / 2,
        "step_ms_p50_before_after": [plain_before["step_ms_p50"], plain_after["step_ms_p50"]],
        "peak_flops": plain_before["peak_flops"],
    }
    out["actor_overhead_pct"] = (out["actor_isolated_baseline_step_ms_p50"] / ms - 1) * 100
    return out


def fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="default,bench")
    ap.add_argument("--auto", default="default", help="models whose run includes an `auto` variant")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, SIMD {' '.join(info['simd'])}, torch {info['torch']}, ray {info['ray']}"
    )
    ray.init(include_dashboard=False, namespace="phase2", log_to_driver=False)
    results = {"machine": info, "models": {}}
    try:
        for name in args.models.split(","):
            t = time.time()
            results["models"][name] = bench_model(name, name in args.auto.split(","))
            print(f"[{name}] measured in {time.time() - t:.0f} s", flush=True)
    finally:
        ray.shutdown()
    for name, m in results["models"].items():
        print(f"\n== {name} model: {m['params']:,} params, {m['flops_per_token']:,} FLOPs/token ==")
        p = m["plain_loop"]
        ba = " / ".join(f"{x:.2f}" for x in p["step_ms_p50_before_after"])
        print(
            f"plain loop (no Ray, 1 core): {p['step_ms_p50']:.2f} ms/step (before / after the actors: {ba}), {p['tokens_per_s']:,.0f} tok/s"
        )
        print(
            f"baseline actor alone:        {m['actor_isolated_baseline_step_ms_p50']:.2f} ms/step -> Ray actor overhead {m['actor_overhead_pct']:+.1f}% (target <= 3%)"
        )
        for v, x in m["variants"].items():
            sp, iso = x["speedup"] or {}, x["isolated_speedup"] or {}
            conc = x["concurrent_speedup"] or {}
            if v == "control":
                line_extra = "  <- A/A control: same stack as baseline, so any speedup is measurement bias"
            else:
                line_extra = ""
            line = f"{v:<10} {x['step_ms_p50']:.2f} ms/step  {x['tokens_per_s']:,.0f} tok/s  MFU {fmt(x['mfu'] and x['mfu'] * 100, '.1f')}% of {fmt(x['peak_flops'] / 1e9, '.1f')} GFLOP/s  work {x['train_s']:.1f} s"
            print(line + line_extra)
            if sp:
                print(
                    f"           speedup {fmt(sp['ratio'])}x [{fmt(sp['ci_low'], '.3f')}, {fmt(sp['ci_high'], '.3f')}] paired trial; "
                    f"{fmt(conc.get('ratio'))}x concurrent; "
                    + (
                        f"{fmt(iso.get('ratio'))}x alone -> concurrent vs isolated {fmt(x['concurrent_vs_isolated_pct'], '+.1f')}% (target within ±10%); "
                        if iso
                        else ""
                    )
                    + f"work-time ratio {fmt(x['work_time_ratio'], '.2f')}x; |Δ val loss| {fmt(x['val_loss_delta_pct'], '.3f')}%"
                )
            if x["auto"]:
                cands = ", ".join(
                    f"{c['name']} {c['median_step_ms']:.1f} ms{'' if c['accepted'] else ' (loss off)'}"
                    for c in x["auto"]["candidates"]
                )
                print(f"           auto chose {x['auto']['chosen']} in {x['auto']['probe_s']:.1f} s: {cands}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
