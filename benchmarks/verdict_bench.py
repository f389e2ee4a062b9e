"""Verdict benchmark: is the approval decision calibrated, powerful and stable on this machine?

Runs the verdict's own code path many times in one Ray session — the concurrent training actors (2a/2b), the
paired speed trial and the report's gates (pipeline.train_and_trial, pipeline.gather) — and
prints:
- A/A: the default config with both variants eager fp32: how many speedup CIs contain 1.0, how many runs the
  speedup gate passes (false approvals);
- power: a config where one stack is truly faster (the margin measured alone first, stack by stack in
  isolation): how many runs the gate passes;
- stability: the default config (`auto`): how many runs agree with the most common decision, and the p10-p90
  spread of the headline speedup;
- `phase2 compare` on pairs of same-code runs (false regressions) and on pairs where the optimized stack lost
  its gain (detection);
- optionally (--full N) N whole `phase2 run`s of the default config, serving included, and their exit codes.
Serving (2c) is left out of the repeated series: it does not enter the speedup decision, and it would triple
the time. Usage: .venv/bin/python benchmarks/verdict_bench.py [--quick] [--aa 20 --power 10 --default 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import ray
import torch

from phase2_ray.config import load_config
from phase2_ray.core.model import GPTConfig
from phase2_ray.core.optimize import OptimizationSettings
from phase2_ray.core.train import Trainer
from phase2_ray.dataprep import prepare_data
from phase2_ray.pipeline import RunState, gather, train_and_trial
from phase2_ray.report import compare, write_run_dir
from phase2_ray.runlog import RunLog
from phase2_ray.training.actors import loop_settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench import QUICK_MODEL, machine  # noqa: E402  (one description of the machine for every benchmark)
from train_bench import QUICK_RUN as QUICK  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "configs/phase2.yaml"
AA = ["variants.optimized.auto=false"]
# A model of many small tensors: the per-tensor AdamW loop is a large share of its step, so fused AdamW wins
# by a wide margin on any CPU (measured alone below before it is used as the known effect).
POWER = [
    "model.n_layer=8",
    "model.n_head=2",
    "model.d_model=16",
    "model.block_size=32",
    "validation.prompt_tokens=8",
    "validation.max_tokens=16",
    "variants.optimized.auto=false",
    "variants.optimized.fused_adamw=true",
]
POWER_AA = [x for x in POWER if "fused" not in x]


_data_cache: dict[str, object] = {}


def one_run(overrides: list[str], seed: int, out_dir: Path, label: str) -> dict:
    """The verdict path once: concurrent training, the speed trial, the report's gates; run dir written."""
    cfg = load_config(DEFAULT, [*overrides, f"training.seed={seed}", "ray.dashboard=false"])
    key = json.dumps([cfg.data.model_dump(), cfg.model.block_size, cfg.validation.prompt_tokens])
    if key not in _data_cache:
        _data_cache[key] = prepare_data(cfg)
    d = _data_cache[key]
    run_id = label
    run = RunState(cfg, run_id, None, RunLog("quiet"), d)
    train_and_trial(run)
    report = gather(run)
    t0 = run.log.t0
    run_dir = out_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_dir(run_dir, report, run.training_dicts(), {}, render=False)  # compare reads the data only
    c = report["comparison"]["optimized"]
    gates = {
        g["name"]: g["passed"]
        for g in report["decision"]["gates"]
        if g["name"].startswith("training_speedup")
    }
    sp = c["speedup"]
    return {
        "label": label,
        "seed": seed,
        "dir": str(run_dir),
        "stack": c.get("noop_reason") or report["training"]["optimized"]["settings"],
        "auto_chose": (report["training"]["optimized"].get("auto") or {}).get("chosen"),
        "auto": report["training"]["optimized"].get("auto"),  # the probe's record: every candidate's time
        "ratio": sp["ratio"],
        "ci": [sp["ci_low"], sp["ci_high"]],
        "contains_1": sp["ci_low"] <= 1 <= sp["ci_high"],
        "speedup_approved": all(gates.values()) and bool(gates),
        # what the gates would say without the no-op veto: the calibration of the measurement itself
        "speedup_pass_without_veto": bool(
            sp["ratio"] is not None and sp["ratio"] >= cfg.targets.speedup_min and sp["ci_low"] > 1.0
        ),
        "concurrent_ratio": c["concurrent"]["step_time_ratio"]["ratio"],
        "s": round(time.time() - t0, 1),
    }


def margin_alone(overrides: list[str], steps: int, rounds: int) -> dict:
    """The known effect measured without any pairing: each stack trains alone in this process on one core,
    one after the other (A B A B ...), and the ratio of their median step times is taken per round."""
    cfg = load_config(DEFAULT, overrides)
    d = prepare_data(cfg)
    gpt = GPTConfig(**cfg.model.gpt_fields(d.vocab_size))
    ts = replace(loop_settings(cfg.training, cfg.training.seed), steps=steps)
    proc = psutil.Process()
    before = proc.cpu_affinity()
    proc.cpu_affinity([before[-1]])
    torch.set_num_threads(1)
    ratios = []
    try:
        for _ in range(rounds):
            med = {}
            for name, stack in (
                ("eager", OptimizationSettings()),
                ("fused", OptimizationSettings(fused_adamw=True)),
            ):
                tr = Trainer(gpt, ts, stack, d.train_tokens)
                for _ in range(steps):
                    tr.train_step()
                med[name] = statistics.median(tr.times[5:])
            ratios.append(med["eager"] / med["fused"])
    finally:
        proc.cpu_affinity(before)
    return {"ratios": ratios, "median": statistics.median(ratios), "steps": steps}


def series(name: str, overrides: list[str], n: int, out_dir: Path, seed: int) -> list[dict]:
    """`n` runs of one config, seed included, as a user repeats a run: only the machine differs."""
    rows = []
    for i in range(n):
        r = one_run(overrides, seed, out_dir, f"{name}{i}")
        rows.append(r)
        print(
            f"  {name} {i + 1}/{n}: {r['ratio']:.3f}x [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] "
            f"{'APPROVED' if r['speedup_approved'] else 'rejected'}"
            + (f" auto={r['auto_chose']}" if r["auto_chose"] else "")
            + f" (concurrent {r['concurrent_ratio']:.3f}x, {r['s']} s)",
            flush=True,
        )
    return rows


def compare_pairs(pairs: list[tuple[str, str]]) -> list[int]:
    return [compare.compare_runs(a, b)["regressions"] for a, b in pairs]


def full_runs(n: int, out_dir: Path, quick: bool) -> list[int]:
    codes = []
    for i in range(n):
        cmd = [
            sys.executable,
            "-m",
            "phase2_ray",
            "run",
            "-c",
            str(DEFAULT),
            "--quiet",
            "--output",
            str(out_dir / f"full{i}"),
        ]
        cmd += ["--set", f"serve.port={18200 + i}"]
        if quick:
            cmd += [x for o in QUICK for x in ("--set", o)]
            cmd += [
                "--set",
                "validation.requests=4",
                "--set",
                "validation.concurrency=[1]",
                "--set",
                "validation.replica_sweep=[]",
            ]
        t0 = time.time()
        codes.append(subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).returncode)
        print(f"  full run {i + 1}/{n}: exit {codes[-1]} ({time.time() - t0:.0f} s)", flush=True)
    return codes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="tiny runs, a few of each (the test suite runs this)"
    )
    ap.add_argument("--aa", type=int, default=20)
    ap.add_argument("--power", type=int, default=10)
    ap.add_argument("--default", type=int, default=10)
    ap.add_argument(
        "--full", type=int, default=0, help="also this many whole `phase2 run`s of the default config"
    )
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    extra = QUICK if args.quick else []
    # --quick also shrinks the default model where a series does not bring its own (the power series does)
    small = QUICK_MODEL if args.quick else []
    n_aa, n_pow, n_pow_aa, n_def = (2, 1, 1, 1) if args.quick else (args.aa, args.power, 3, args.default)
    print(json.dumps(machine()), flush=True)
    t_start = time.time()
    # A process already connected (the test suite's session cluster) keeps its cluster.
    started = not ray.is_initialized()
    if started:
        # Idle workers kept for 60 s instead of 1 s: the next run's actors and trial tasks start in a process that
        # has imported torch already (each task and actor sets its own threads and cores).
        ray.init(
            address="local",  # a cluster of its own, never one another run recorded in /tmp/ray
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            namespace="verdict-bench",
            log_to_driver=False,
            _system_config={"idle_worker_killing_time_threshold_ms": 60_000},
        )
    out: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="verdict-") as tmp:
        runs = Path(tmp)
        margin = margin_alone(POWER + extra, steps=40 if args.quick else 150, rounds=1 if args.quick else 3)
        out["known_effect_alone"] = margin
        print(
            f"known effect alone (fused AdamW, many small tensors): {margin['median']:.3f}x {margin['ratios']}",
            flush=True,
        )
        seed = load_config(DEFAULT).training.seed
        aa = series("aa", AA + extra + small, n_aa, runs, seed)
        power = series("power", POWER + extra, n_pow, runs, seed)
        power_aa = series("power-aa", POWER_AA + extra, n_pow_aa, runs, seed)
        default = series("default", extra + small, n_def, runs, seed)
        same_pairs = [(aa[i]["dir"], aa[i + 1]["dir"]) for i in range(0, len(aa) - 1, 2)]
        same_pairs += [(default[i]["dir"], default[i + 1]["dir"]) for i in range(0, len(default) - 1, 2)]
        slow_pairs = [(power[i]["dir"], power_aa[i % len(power_aa)]["dir"]) for i in range(len(power_aa))]
        false_reg = compare_pairs(same_pairs)
        caught = compare_pairs(slow_pairs)
        codes = full_runs(args.full, runs, args.quick) if args.full else []
    if started:
        ray.shutdown()
    decisions = Counter(r["speedup_approved"] for r in default)
    sp = [r["ratio"] for r in default]
    p10, p90 = np.percentile(sp, [10, 90]) if sp else (float("nan"), float("nan"))
    out.update(
        aa=aa,
        power=power,
        power_aa=power_aa,
        default=default,
        compare_same_code=false_reg,
        compare_slowdown=caught,
        full_exit_codes=codes,
        wall_s=time.time() - t_start,
    )
    summary = {
        "aa_runs": len(aa),
        "aa_ci_contains_1": sum(r["contains_1"] for r in aa),
        "aa_false_approvals": sum(r["speedup_approved"] for r in aa),
        "aa_pass_without_veto": sum(r["speedup_pass_without_veto"] for r in aa),
        "power_runs": len(power),
        "power_detected": sum(r["speedup_approved"] for r in power),
        "default_runs": len(default),
        "default_agreement": max(decisions.values()),
        "default_decision": "approved" if decisions.most_common(1)[0][0] else "rejected",
        "default_speedup_p10_p90": [float(p10), float(p90)],
        "default_speedup_spread_pct": float((p90 / p10 - 1) * 100),
        "default_auto_choices": dict(Counter(r["auto_chose"] for r in default)),
        "compare_same_code_pairs": len(false_reg),
        "compare_false_regression_pairs": sum(1 for x in false_reg if x),
        "compare_slowdown_pairs": len(caught),
        "compare_slowdown_flagged": sum(1 for x in caught if x),
        "known_effect_alone": margin["median"],
        "full_runs_exit_codes": codes,
        "wall_s": round(time.time() - t_start),
    }
    out["summary"] = summary
    print("\nsummary")
    print(
        f"  A/A: {summary['aa_ci_contains_1']}/{len(aa)} CIs contain 1.0; speedup gate passed "
        f"{summary['aa_false_approvals']}/{len(aa)} (false approvals; without the no-op veto "
        f"{summary['aa_pass_without_veto']}/{len(aa)})"
    )
    print(
        f"  power: known effect alone {margin['median']:.3f}x; gate passed {summary['power_detected']}/{len(power)}"
    )
    print(
        f"  default: {summary['default_agreement']}/{len(default)} runs {summary['default_decision']}; headline "
        f"speedup p10-p90 {p10:.3f}-{p90:.3f} (spread {summary['default_speedup_spread_pct']:.1f}%); auto chose "
        f"{summary['default_auto_choices']}"
    )
    print(
        f"  compare: {summary['compare_false_regression_pairs']}/{len(false_reg)} same-code pairs exit 1; "
        f"{summary['compare_slowdown_flagged']}/{len(caught)} lost-speedup pairs flagged"
    )
    if codes:
        print(f"  full default runs: exit codes {codes}")
    print(f"  wall {summary['wall_s']} s")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
