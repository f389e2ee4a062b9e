"""Verdict benchmark: is the three-outcome decision calibrated, powerful and stable on this machine?

Runs the verdict's own code path many times in one Ray session: the concurrent training actors (2a/2b), the
sequential paired speed trial and the report's gates (pipeline.train_and_trial, pipeline.gather). Effects are
placed with `delay_pct` (a stack busy-waits that share of each step's own time: a known ratio on any machine). Series:
- A/A: the default config with both variants eager fp32: CIs containing 1.0, intervals called better or worse
  against the speedup margin, approvals (a no-op is vetoed: the interval's own verdict is counted too);
- known effect: the baseline 20% slower (true 1.20x): approved;
- at the threshold: the baseline 5% slower (true ratio = speedup_min, 1.05x): never both approved and rejected;
- default: the default config (`auto`): approved and rejected never both; `auto`'s choice agreement;
- capacity: whole `phase2 run`s with the capacity search at one replica count: each run's interval against the
  series median;
- `phase2 compare` on same-code pairs (false regressions) and on pairs that lost the known effect.
Each series prints its outcomes, rates, median replicates to a decision and wall time. Serving (2c) is left out of
the training series: the candidate's outcome there is its training gates' (speedup and convergence).
Usage: .venv/bin/python benchmarks/verdict_bench.py [--quick] [--aa 10 --known 10 --near 10 --default 10
--capacity 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import ray

from phase2_ray.configure import load_config
from phase2_ray.dataprep import prepare_data
from phase2_ray.pipeline import RunState, gather, train_and_trial
from phase2_ray.report import compare, write_run_dir
from phase2_ray.report.gates import find_gate
from phase2_ray.report.verdict import combine, judge
from phase2_ray.runlog import RunLog

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench import QUICK_RUN as QUICK  # noqa: E402
from train_bench import machine  # noqa: E402  (one description of the machine for every benchmark)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "configs/phase2.yaml"
SMOKE = ROOT / "configs/smoke.yaml"
TRAINING_GATES = ("training_completed", "training_speedup", "val_loss_delta_pct")
AA = ["variants.optimized.auto=false"]
KNOWN = [*AA, "variants.baseline.delay_pct=20"]  # the optimized stack (eager) is truly 1.20x faster
# the same two series with the optimized stack a user's converter file that builds the baseline's own optimizer:
# the plugin path (config, import, runtime_env, the stack in every actor) must not change the verdict's rates
PLUGIN = [
    *AA,
    f"variants.optimized.converters=['{Path(__file__).resolve().parent / 'plugins/same_adamw.py'}:SameAdamW']",
]
CAPACITY = [  # the smoke model, the default capacity search (3 replicated searches) at one replica count
    "validation.concurrency=[1]",
    "validation.replica_sweep=[1]",
    "validation.inprocess_reference=false",
    "serve.int8=false",
    "validation.capacity.level_s=2",
    "validation.capacity.max_s=15",
    "validation.capacity.min_requests=24",
    "validation.capacity.rel_tol=0.15",
    "validation.capacity.max_levels=8",
    "validation.capacity.replicates=3",
]


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
    sp = c["speedup"]
    gate = find_gate(report["decision"]["gates"], "training_speedup", "optimized")
    mine = [
        g for g in report["decision"]["gates"] if g["variant"] == "optimized" and g["name"] in TRAINING_GATES
    ]
    seq = sp.get("sequential") or {}
    return {
        "label": label,
        "seed": seed,
        "dir": str(run_dir),
        "stack": c.get("noop_reason") or report["training"]["optimized"]["settings"],
        "auto_chose": (report["training"]["optimized"].get("auto") or {}).get("chosen"),
        "auto": report["training"]["optimized"].get("auto"),  # the probe's record: every candidate's interval
        "ratio": sp["ratio"],
        "ci": [sp["ci_low"], sp["ci_high"]],
        "contains_1": sp["ci_low"] <= 1 <= sp["ci_high"],
        "noop": c["noop"],
        "verdict": gate["verdict"],  # the no-op veto included
        "interval_verdict": judge(sp["ci_low"], sp["ci_high"], ">=", cfg.targets.speedup_min),
        "relation": gate["outcome"],  # better / equivalent / worse / inconclusive against the margin
        "outcome": combine([g["verdict"] for g in mine]),  # the candidate's training outcome
        "replicates": sp["replicates"],
        "looks": seq.get("looks"),
        "mde_ratio": sp.get("mde_ratio"),
        "concurrent_ratio": c["concurrent"]["step_time_ratio"]["ratio"],
        "s": round(time.time() - t0, 1),
    }


def series(name: str, overrides: list[str], n: int, out_dir: Path, seed: int) -> list[dict]:
    """`n` runs of one config, seed included, as a user repeats a run: only the machine differs."""
    rows = []
    for i in range(n):
        r = one_run(overrides, seed, out_dir, f"{name}{i}")
        rows.append(r)
        print(
            f"  {name} {i + 1}/{n}: {r['ratio']:.3f}x [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] after "
            f"{r['replicates']} replicates ({r['looks']} looks): {r['outcome'].upper()} (interval alone: "
            f"{r['interval_verdict']}, {r['relation']})"
            + (f" auto={r['auto_chose']}" if r["auto_chose"] else "")
            + f" ({r['s']} s)",
            flush=True,
        )
    return rows


def compare_pairs(pairs: list[tuple[str, str]], log: list[dict] | None = None) -> list[str]:
    """`phase2 compare`'s outcome for each pair: regression / inconclusive / no regression. The rows behind an
    outcome other than "no regression" are appended to `log` (which metric fired, or could not rule one out)."""
    outcomes = []
    for a, b in pairs:
        c = compare.compare_runs(a, b)
        outcomes.append(c["outcome"])
        flagged = [
            {
                k: r.get(k)
                for k in ("metric", "variant", "change_pct", "ci_low", "ci_high", "verdict", "outcome")
            }
            for r in c["rows"]
            if r["outcome"] in ("worse", "inconclusive")
        ]
        if log is not None and flagged:
            log.append({"a": Path(a).name, "b": Path(b).name, "outcome": c["outcome"], "rows": flagged})
            for r in flagged:
                print(
                    f"    compare {Path(a).name} -> {Path(b).name}: {r['metric']} {r['variant']}: {r['verdict']}"
                )
    return outcomes


def smoke_run(out: Path, sets: list[str]) -> tuple[int, dict, float]:
    """One whole `phase2 run` of the smoke config with `sets`, in a process (and a Ray) of its own: its exit code,
    report.json and wall seconds."""
    cmd = [sys.executable, "-m", "phase2_ray", "run", "-c", str(SMOKE), "--quiet", "--output", str(out)]
    cmd += [x for o in sets for x in ("--set", o)]
    t0 = time.time()
    rc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).returncode
    return rc, json.loads((out / "report.json").read_text()), round(time.time() - t0, 1)


def capacity_runs(n: int, out_dir: Path, quick: bool) -> list[dict]:
    """`n` whole `phase2 run`s of the smoke config with the capacity search (replicated) at one replica count:
    what each run's capacity interval says about the next run."""
    rows = []
    for i in range(n):
        out = out_dir / f"capacity{i}"
        sets = [*CAPACITY, f"serve.port={18200 + i}"]
        if quick:
            sets += ["validation.capacity.replicates=2", "validation.capacity.max_s=4", "training.steps=20"]
            sets += ["speed_trial.replicates=2", "speed_trial.max_replicates=2", "validation.max_rounds=4"]
        rc, rep, took = smoke_run(out, sets)
        runs = rep["serving"]["capacity"]["runs"]
        r = next(x for x in runs if x["replicas"] == 1)
        rows.append(
            {
                "dir": str(out),
                "exit_code": rc,
                "capacity_rps": r["capacity_rps"],
                "ci": [r["ci_low"], r["ci_high"]],
                "estimates": r.get("replicate_estimates"),
                "s": took,
            }
        )
        print(
            f"  capacity {i + 1}/{n}: {_num(r['capacity_rps'])} req/s [{_num(r['ci_low'])}, {_num(r['ci_high'])}] "
            f"from searches {r.get('replicate_estimates')} (exit {rc}, {rows[-1]['s']} s)",
            flush=True,
        )
    return rows


SERVING_AA = [  # the smoke model, one level, the baseline's checkpoint served a second time as `baseline-aa`
    "validation.aa_control=true",
    "validation.concurrency=[1]",
    "validation.replica_sweep=[]",
    "validation.capacity.enabled=false",
    "validation.inprocess_reference=false",
    "serve.int8=false",
    "speed_trial.max_replicates=6",
]
RATIO_GATES = (
    "ttft_p50_vs_baseline",
    "tpot_p50_vs_baseline",
    "e2e_p50_vs_baseline",
    "decode_rate_p50_vs_baseline",
)


def serving_aa_runs(n: int, out_dir: Path, quick: bool) -> list[dict]:
    """`n` whole smoke runs with the A/A control: the same checkpoint under two names, measured in the same
    interleaved rounds. Each serving ratio of `baseline-aa` against `baseline` should come out equivalent or
    inconclusive, its interval containing 1.0; better or worse is a false call."""
    rows = []
    for i in range(n):
        out = out_dir / f"serving-aa{i}"
        sets = [*SERVING_AA, f"serve.port={18300 + i}"]
        if quick:
            sets += ["training.steps=20", "speed_trial.replicates=2", "speed_trial.max_replicates=2"]
            sets += ["validation.max_rounds=6"]
        rc, rep, took = smoke_run(out, sets)
        gates = [
            g for g in rep["decision"]["gates"] if g["variant"] == "baseline-aa" and g["name"] in RATIO_GATES
        ]
        rows.append(
            {
                "exit_code": rc,
                "outcomes": {g["name"]: g["outcome"] for g in gates},
                "intervals": {g["name"]: [g["low"], g["high"]] for g in gates},
                "covers_1": sum(1 for g in gates if g["low"] is not None and g["low"] <= 1 <= g["high"]),
                "false_calls": sum(1 for g in gates if g["outcome"] in ("better", "worse")),
                "rounds": (rep["serving"]["headline_rounds"]["looks"] or [None])[-1],
                "s": took,
            }
        )
        print(
            f"  serving A/A {i + 1}/{n}: {rows[-1]['outcomes']} after {rows[-1]['rounds']} rounds; intervals "
            f"containing 1.0: {rows[-1]['covers_1']}/{len(gates)} (exit {rc}, {rows[-1]['s']} s)",
            flush=True,
        )
    return rows


def between_run_cv_pct(cap: list[dict]) -> float | None:
    """The run-to-run component of capacity's variance (as a CV, %), from runs of one config: the variance of
    the runs' mean log estimates less what the searches' own spread explains (method of moments, nested random
    effects). What validation.capacity.between_run_cv_pct should be on this machine."""
    runs = [np.log(c["estimates"]) for c in cap if c["estimates"] and all(c["estimates"])]
    if len(runs) < 3 or any(len(x) < 2 for x in runs):
        return None
    means = np.array([x.mean() for x in runs])
    within = float(np.mean([x.var(ddof=1) / len(x) for x in runs]))
    return float(np.expm1(np.sqrt(max(0.0, means.var(ddof=1) - within))) * 100)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def series_summary(rows: list[dict]) -> dict:
    """Outcomes, rates and the replicates a decision took, for one series."""
    n = len(rows)
    return {
        "runs": n,
        "outcomes": dict(Counter(r["outcome"] for r in rows)),
        "interval_verdicts": dict(Counter(r["interval_verdict"] for r in rows)),
        "relations": dict(Counter(r["relation"] for r in rows)),
        "ci_contains_1": sum(r["contains_1"] for r in rows),
        "noops": sum(bool(r.get("noop")) for r in rows),
        "both_firm": {"approved", "rejected"} <= {r["outcome"] for r in rows},
        "median_replicates": float(np.median([r["replicates"] for r in rows])) if rows else None,
        "ratios": [round(r["ratio"], 4) for r in rows],
        "wall_s": round(sum(r["s"] for r in rows), 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="tiny runs, one or two of each (the test suite runs this)"
    )
    ap.add_argument("--aa", type=int, default=10)
    ap.add_argument("--known", type=int, default=10)
    ap.add_argument("--near", type=int, default=10)
    ap.add_argument(
        "--near-delay",
        type=float,
        default=5.0,
        help="the at-the-threshold series' delay_pct (true ratio 1 + it/100)",
    )
    ap.add_argument("--default", type=int, default=10)
    ap.add_argument("--capacity", type=int, default=6, help="whole smoke runs with the capacity search")
    ap.add_argument(
        "--serving-aa", type=int, default=10, help="whole smoke runs with the serving A/A control"
    )
    ap.add_argument(
        "--only",
        nargs="+",
        choices=["aa", "known", "near", "capacity", "serving-aa", "plugin"],
        help="run these series alone (the others are then left out)",
    )
    ap.add_argument("--plugin-aa", type=int, default=0, help="A/A through a user's converter file")
    ap.add_argument("--plugin-known", type=int, default=0, help="the known effect through a user's converter")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument(
        "--keep", help="write the run directories here and keep them (default: a temporary folder)"
    )
    args = ap.parse_args(argv)
    # --quick: a tiny model and a minimal sequential trial (at most 4 replicates), so every path runs in seconds
    extra = [*QUICK, "speed_trial.max_replicates=4", "speed_trial.look_replicates=2"] if args.quick else []
    n = (
        (2, 1, 1, 1, 1, 1, 1, 1)
        if args.quick
        else (
            args.aa,
            args.known,
            args.near,
            args.default,
            args.capacity,
            args.serving_aa,
            args.plugin_aa,
            args.plugin_known,
        )
    )
    if args.only:
        index = {"aa": [0], "known": [1], "near": [2], "capacity": [4], "serving-aa": [5], "plugin": [6, 7]}
        keep = {i for x in args.only for i in index[x]}
        n = tuple(x if i in keep else 0 for i, x in enumerate(n))
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
    keep = Path(args.keep) if args.keep else None
    with tempfile.TemporaryDirectory(prefix="verdict-") as tmp:
        runs = keep or Path(tmp)
        seed = load_config(DEFAULT).training.seed
        aa = series("aa", AA + extra, n[0], runs, seed)
        known = series("known", KNOWN + extra, n[1], runs, seed)
        near = series(
            "near", [*AA, f"variants.baseline.delay_pct={args.near_delay:g}", *extra], n[2], runs, seed
        )
        default = series("default", extra, n[3], runs, seed)
        plugin_aa = series("plugin-aa", PLUGIN + extra, n[6], runs, seed)
        plugin_known = series(
            "plugin-known", [*PLUGIN, "variants.baseline.delay_pct=20", *extra], n[7], runs, seed
        )
        same_pairs = [(aa[i]["dir"], aa[i + 1]["dir"]) for i in range(0, len(aa) - 1, 2)]
        same_pairs += [(default[i]["dir"], default[i + 1]["dir"]) for i in range(0, len(default) - 1, 2)]
        lost_pairs = [(known[i]["dir"], aa[i % len(aa)]["dir"]) for i in range(min(len(known), 3))]
        flagged: list[dict] = []
        same = compare_pairs(same_pairs, flagged)
        lost = compare_pairs(lost_pairs)
        if started:  # the capacity runs start an embedded Ray of their own
            ray.shutdown()
        cap = capacity_runs(n[4], runs, args.quick)
        cap_pairs = compare_pairs([(cap[i]["dir"], cap[i + 1]["dir"]) for i in range(len(cap) - 1)], flagged)
        saa = serving_aa_runs(n[5], runs, args.quick)
    found = [c["capacity_rps"] for c in cap if c["capacity_rps"]]
    median = float(np.median(found)) if found else None
    between = between_run_cv_pct(cap)
    covers = sum(
        1 for c in cap if median is not None and None not in c["ci"] and c["ci"][0] <= median <= c["ci"][1]
    )
    summary = {
        "aa": series_summary(aa),
        "known": series_summary(known),
        "near": series_summary(near),
        "default": series_summary(default),
        "plugin_aa": series_summary(plugin_aa),
        "plugin_known": series_summary(plugin_known),
        "default_auto_choices": dict(Counter(r["auto_chose"] for r in default)),
        "capacity": {
            "runs": len(cap),
            "median_rps": median,
            "intervals_containing_median": covers,
            "between_run_cv_pct_estimate": between,
        },
        "serving_aa": {
            "runs": len(saa),
            "runs_with_a_false_call": sum(1 for r in saa if r["false_calls"]),
            "ratios_judged": sum(len(r["outcomes"]) for r in saa),
            "intervals_containing_1": sum(r["covers_1"] for r in saa),
            "outcomes": dict(Counter(o for r in saa for o in r["outcomes"].values())),
        },
        "compare_same_code": dict(Counter(same)),
        "compare_lost_effect": dict(Counter(lost)),
        "compare_capacity_pairs": dict(Counter(cap_pairs)),
        "compare_flagged_rows": flagged,
        "wall_s": round(time.time() - t_start),
    }
    out.update(aa=aa, known=known, near=near, default=default, capacity=cap, serving_aa=saa, summary=summary)
    out.update(plugin_aa=plugin_aa, plugin_known=plugin_known)
    s, fa = summary, summary["aa"]
    print("\nsummary")
    print(
        f"  A/A: {fa['ci_contains_1']}/{fa['runs']} CIs contain 1.0; outcomes {fa['outcomes']}; interval alone "
        f"{fa['interval_verdicts']}; called {fa['relations']} (better or worse = a false call)"
    )
    pa = s["plugin_aa"]
    if pa["runs"]:
        print(
            f"  plugin A/A: {pa['ci_contains_1']}/{pa['runs']} CIs contain 1.0; outcomes {pa['outcomes']}; interval "
            f"alone {pa['interval_verdicts']}; called {pa['relations']}; no-op guard fired {pa['noops']}/{pa['runs']}"
        )
    for name in ("known", "plugin_known", "near", "default"):
        x = s[name]
        if not x["runs"]:
            continue
        print(
            f"  {name}: outcomes {x['outcomes']}; approved and rejected both: {x['both_firm']}; median "
            f"replicates {x['median_replicates']}; ratios {min(x['ratios']):.3f}-{max(x['ratios']):.3f}; "
            f"{x['wall_s']} s"
        )
    print(f"  default: auto chose {s['default_auto_choices']}")
    print(
        f"  capacity: {covers}/{len(cap)} intervals contain the series median ({_num(median)} req/s); "
        f"compare of consecutive runs {s['compare_capacity_pairs']}; run-to-run component "
        f"{_num(between)}% (validation.capacity.between_run_cv_pct)"
    )
    sa = s["serving_aa"]
    print(
        f"  serving A/A: {sa['runs_with_a_false_call']}/{sa['runs']} runs with a ratio called better or worse; "
        f"{sa['intervals_containing_1']}/{sa['ratios_judged']} intervals contain 1.0; outcomes {sa['outcomes']}"
    )
    print(
        f"  compare: same-code pairs {s['compare_same_code']}; lost known effect {s['compare_lost_effect']}"
    )
    print(f"  wall {s['wall_s']} s")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
