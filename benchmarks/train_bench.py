"""Training benchmark: plain PyTorch loop vs Ray actors, baseline vs optimized vs auto, concurrent vs isolated.

Everything is measured side by side in one run on this machine, then printed as ratios (and written as JSON).
A process already connected to Ray (the test suite's session cluster) keeps its cluster; otherwise the bench starts
one of its own and shuts it down at the end.

--quick (the test suite runs it): the default model only, shrunk (one layer, 32-token blocks, 20 steps, the speed
trial and the auto probe at their minimum), and one pair: the plain loop before and after, and the optimized pair
with isolation `both` (concurrent, then each variant alone; its variant is `auto` in the default config, so the
probe record is printed too). It leaves out the bench model (the same code with another config), the A/A control
pair and the `auto`-with-compile pair: both run the optimized pair's code with isolation `concurrent` and another
variant, and each would add a pair's actor and trial start-ups (the compiles alone cost more than the whole quick
run). What it measures means nothing.

Usage: .venv/bin/python benchmarks/train_bench.py [--quick] [--models default,bench] [--auto default] [--out FILE]"""

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

from phase2_ray.configure import load_config
from phase2_ray.core.flops import flops_per_token, measure_peak_flops
from phase2_ray.core.model import GPTConfig
from phase2_ray.core.train import train
from phase2_ray.dataprep import prepare_data
from phase2_ray.pipeline import RunState, gather, train_and_trial
from phase2_ray.provenance import cpu_model, cpu_simd_flags
from phase2_ray.runlog import RunLog
from phase2_ray.stacks import variant_stack
from phase2_ray.training.actors import loop_settings

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"default": ROOT / "configs/phase2.yaml", "bench": ROOT / "configs/bench.yaml"}
# What --quick overrides, shared with verdict_bench: the suite checks that every path runs, not what it measures.
QUICK_RUN = [
    "training.steps=20",
    "training.eval_interval=0",
    "training.warmup_steps=5",
    "training.measurement.skip_steps=5",
    "training.auto.probe_steps=4",
    "data.max_chars=100000",
    "speed_trial.pairs=2",
    "speed_trial.replicates=2",
    "speed_trial.warmup_steps=2",
    "speed_trial.block_steps=2",
]
QUICK_MODEL = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.d_model=16",
    "model.block_size=32",
    "data.vocab_size=512",
    "validation.prompt_tokens=8",
    "validation.max_tokens=16",
]
QUICK = QUICK_RUN + QUICK_MODEL


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "simd": cpu_simd_flags(),
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
    torch.set_num_threads(cfg.training.placement.cpus_per_actor)
    try:
        res, _ = train(
            GPTConfig(**cfg.model.gpt_fields(d.vocab_size)),
            loop_settings(cfg.training, cfg.training.seed),
            variant_stack(cfg.variants["baseline"]),
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


def _pair_run(
    name: str, d, variants: dict, isolation: str, overrides: list[str]
) -> tuple[dict, list[dict], dict]:
    """Baseline and one other variant trained together (and alone when isolation is `both`)."""
    cfg = load_config(
        CONFIGS[name],
        [
            *overrides,
            "training.log_every=0",
            f"training.measurement.isolation={isolation}",
            f"variants={json.dumps(variants)}",
        ],
    )
    run = RunState(cfg, f"bench-{name}-{'-'.join(variants)}", None, RunLog("quiet"), d)
    train_and_trial(run)
    return run.training_dicts(), [r.to_dict() for r in run.extra_runs], gather(run)


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


def bench_model(name: str, with_auto: bool, overrides: list[str] | None = None, control: bool = True) -> dict:
    """Pairs, each baseline vs one variant at the same time on rotating cores: the configured optimized variant
    (also alone, for concurrent vs isolated), an A/A control identical to the baseline (the measurement's own
    bias) unless `control` is false, and optionally `auto` allowed to compile. `overrides`: config overrides
    (--set) for every run."""
    overrides = list(overrides or [])
    cfg = load_config(CONFIGS[name], overrides)
    d = prepare_data(cfg)
    skip = cfg.training.measurement.skip_steps
    base = cfg.variants["baseline"].model_dump()
    plain_before = plain_loop(cfg, d, skip)
    pairs = {"optimized": (cfg.variants["optimized"].model_dump(), "both")}
    if control:
        pairs["control"] = (base, "concurrent")
    if with_auto:
        pairs["auto"] = ({**base, "auto": True, "auto_compile": True}, "concurrent")
    out = {"variants": {}}
    for v, (vcfg, isolation) in pairs.items():
        training, extra, r = _pair_run(name, d, {"baseline": base, v: vcfg}, isolation, overrides)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="the default model only, tiny (the test suite runs this)"
    )
    ap.add_argument("--models", default="default,bench")
    ap.add_argument("--auto", default="default", help="models whose run includes an `auto` variant")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    models, auto = args.models.split(","), args.auto.split(",")
    overrides = QUICK if args.quick else []
    if args.quick:
        models, auto = ["default"], []
    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, SIMD {' '.join(info['simd'])}, torch {info['torch']}, ray {info['ray']}"
    )
    # A process already connected (the test suite's session cluster) keeps its cluster.
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", include_dashboard=False, namespace="phase2", log_to_driver=False)
    results = {"machine": info, "quick": args.quick, "models": {}}
    try:
        for name in models:
            t = time.time()
            results["models"][name] = bench_model(name, name in auto, overrides, control=not args.quick)
            print(f"[{name}] measured in {time.time() - t:.0f} s", flush=True)
    finally:
        if started:
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
