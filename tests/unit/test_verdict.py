"""The verdict's definitions, without Ray: the paired speed trial and its interval, the no-op guard, the shared
MFU denominator, the interleaved 2c order, the serving ratios and the family-wise control of `phase2 compare`."""

import math

import numpy as np
import pandas as pd
import pytest

from phase2_ray.configure import load_config
from phase2_ray.core.model import GPTConfig
from phase2_ray.core.specs import OptimizationSettings, same_stack
from phase2_ray.core.speedtrial import TrialSettings, paired_trial, trial_steps
from phase2_ray.core.train import TrainSettings
from phase2_ray.loadtest.plan import interleaved_schedule, rounds_for
from phase2_ray.report.compare import _decide, _speedup_row
from phase2_ray.report.gates import Gate, evaluate_gates
from phase2_ray.report.markdown import render_markdown
from phase2_ray.report.orchestrator import MetricsOrchestrator
from phase2_ray.report.schema import Report
from phase2_ray.report.schema.training import Comparison
from phase2_ray.report.stats import holm, paired_speedup, round_paired_ratio_ci

TARGETS = load_config(None).targets.model_dump()


def _replicates(
    rng, effect: float, reps: int = 4, pairs: int = 6, rep_sd: float = 0.01, pair_sd: float = 0.01
):
    """Synthetic trials: each replicate has its own offset (memory placement, its moment on the machine)."""
    out = []
    for _ in range(reps):
        offset = rng.normal(0, rep_sd)
        out.append(
            [
                {"a_s": 1.0, "b_s": float(np.exp(-math.log(effect) - offset - rng.normal(0, pair_sd)))}
                for _ in range(pairs)
            ]
        )
    return out


def _trial_record(i: int, pairs: list[dict]) -> dict:
    """One synthetic replicate as the speed trial records it (report.json's schema holds every field)."""
    return {
        "replicate": i,
        "seed": i,
        "pid": 1,
        "node_id": "n",
        "build_order": "ab" if i % 2 == 0 else "ba",
        "warmup_s": {"a": 0.0, "b": 0.0},
        "steps_per_stack": 1,
        "losses_equal": True,
        "cores": None,
        "look": 1,
        "pairs": [{"index": j, "order": "AB" if j % 2 == 0 else "BA", **p} for j, p in enumerate(pairs)],
    }


def test_paired_speedup_interval_is_calibrated_under_replicate_effects():
    """A/A trials whose replicates differ by more than their pairs: the t interval over replicates still
    covers 1.0 about 95% of the time (a pair-level interval would not)."""
    rng = np.random.default_rng(7)
    covered = sum(
        (lambda s: s["ci_low"] <= 1 <= s["ci_high"])(paired_speedup(_replicates(rng, 1.0)))
        for _ in range(400)
    )
    assert 0.90 * 400 <= covered <= 0.99 * 400
    naive = 0
    for _ in range(400):
        logs = np.concatenate([np.log([p["a_s"] / p["b_s"] for p in r]) for r in _replicates(rng, 1.0)])
        half = 1.96 * logs.std(ddof=1) / math.sqrt(logs.size)
        naive += abs(logs.mean()) <= half
    assert naive < covered - 40  # pooling pairs as if independent is over-confident


def test_paired_speedup_finds_a_real_effect():
    sp = paired_speedup(_replicates(np.random.default_rng(1), 1.15))
    assert sp["ratio"] == pytest.approx(1.15, rel=0.03)
    assert sp["ci_low"] > 1.05 and sp["significant"] and sp["replicates"] == 4 and sp["pairs"] == 24
    # the estimate recomputes from the raw pairs: the mean of the replicates' geometric means
    reps = _replicates(np.random.default_rng(2), 1.0)
    sp = paired_speedup(reps)
    logs = [np.mean([math.log(p["a_s"] / p["b_s"]) for p in r]) for r in reps]
    assert sp["ratio"] == pytest.approx(math.exp(np.mean(logs)))
    assert paired_speedup(reps[:1])["ratio"] is None  # one replicate: no interval, no claim


def test_same_stack_is_the_no_op_check():
    assert same_stack(OptimizationSettings(), OptimizationSettings())
    assert same_stack(
        OptimizationSettings.of(compile_mode="max-autotune"),
        {
            "compile": False,
            "fused_adamw": False,
            "bf16": False,
            "sdpa_backend": "default",
            "compile_mode": "default",
        },
    )
    assert not same_stack(OptimizationSettings(), OptimizationSettings.of(fused_adamw=True))
    assert not same_stack(
        OptimizationSettings.of(compile=True),
        OptimizationSettings.of(compile=True, compile_mode="max-autotune"),
    )


def test_paired_trial_on_a_tiny_model_is_reproducible_from_its_seed(tiny_corpus):
    _, tok, train_ids, _ = tiny_corpus
    cfg = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=16, n_layer=1, n_head=2, d_model=16)
    ts = TrainSettings(steps=100, batch_size=4, lr=1e-3, min_lr=1e-4, warmup_steps=2)
    trial = TrialSettings(pairs=5, block_steps=2, warmup_steps=2, seed=11)
    a = paired_trial(cfg, ts, OptimizationSettings(), OptimizationSettings(), train_ids, trial)
    b = paired_trial(cfg, ts, OptimizationSettings(), OptimizationSettings(), train_ids, trial)
    assert a["losses_equal"]  # an A/A trial computes the same losses in both arms
    assert len(a["pairs"]) == 5 and all(p["order"] in ("ABBA", "BAAB") for p in a["pairs"])
    # balanced: 2 + 2 of the 4 even pairs, the fifth drawn; the build order is the caller's
    assert 2 <= sum(p["order"] == "ABBA" for p in a["pairs"]) <= 3 and a["build_order"] == "AB"
    c = paired_trial(
        cfg,
        ts,
        OptimizationSettings(),
        OptimizationSettings(),
        train_ids,
        TrialSettings(pairs=2, block_steps=1, warmup_steps=1, a_first=False),
    )
    assert c["build_order"] == "BA" and sorted(p["order"] for p in c["pairs"]) == ["ABBA", "BAAB"]
    assert all(p["a_s"] > 0 and p["b_s"] > 0 for p in a["pairs"])
    assert [p["order"] for p in a["pairs"]] == [p["order"] for p in b["pairs"]]
    assert a["build_order"] == b["build_order"] and a["steps_per_stack"] == trial_steps(trial) == 32
    orders = {
        tuple(
            p["order"]
            for p in paired_trial(
                cfg,
                ts,
                OptimizationSettings(),
                OptimizationSettings.of(fused_adamw=True),
                train_ids,
                TrialSettings(pairs=5, block_steps=1, warmup_steps=1, seed=s),
            )["pairs"]
        )
        for s in range(4)
    }
    assert len(orders) > 1  # the order is random across seeds, not fixed


def _gates_for(comparison: dict) -> list[Gate]:
    return evaluate_gates({"training": {}, "inference": {}, "comparison": comparison}, TARGETS)


def test_an_aa_variant_cannot_pass_the_speedup_gate():
    lucky = {"ratio": 1.2, "ci_low": 1.1, "ci_high": 1.3, "replicates": 4}
    gates = _gates_for({"optimized": {"speedup": lucky, "noop": True, "noop_reason": "auto kept eager fp32"}})
    sp = [g for g in gates if g.name == "training_speedup"]
    assert len(sp) == 1 and sp[0].verdict == "fail" and "auto kept eager fp32" in sp[0].detail
    real = _gates_for({"optimized": {"speedup": lucky, "noop": False}})
    assert next(g for g in real if g.name == "training_speedup").verdict == "pass"
    # the whole interval below the floor: rejected; an interval around the floor: inconclusive, never approved
    small = _gates_for({"optimized": {"speedup": {"ratio": 1.03, "ci_low": 1.01, "ci_high": 1.045}}})
    assert next(g for g in small if g.name == "training_speedup").verdict == "fail"
    noisy = _gates_for({"optimized": {"speedup": {"ratio": 1.08, "ci_low": 0.98, "ci_high": 1.19}}})
    assert next(g for g in noisy if g.name == "training_speedup").verdict == "inconclusive"


def _raw_run(variant: str, peak: float, step_s: float, settings: dict) -> dict:
    steps = 40
    return {
        "variant": variant,
        "seed": 1,
        "start": 0.0,
        "end": 10.0,
        "placement": {"node_id": "n", "hostname": "h", "pid": 1, "torch_threads": 1},
        "phase": "concurrent",
        "params": 1000,
        "model": {
            "vocab_size": 300,
            "block_size": 16,
            "n_layer": 1,
            "n_head": 2,
            "d_model": 16,
            "dropout": 0.0,
        },
        "steps": steps,
        "tokens": steps * 64,
        "status": "ok",
        "error": None,
        "losses": [3.0 - i / 100 for i in range(steps)],
        "step_times": [step_s * (1 + 0.01 * (i % 3)) for i in range(steps)],
        "val_curve": [(0, 3.0), (steps, 2.5)],
        "applied": [
            {"name": c["name"], "args": c["args"], "hooks": c["hooks"]} for c in settings["converters"]
        ],
        "settings": settings,
        "auto": None,
        "peak_flops": {"float32": peak},
        "train_s": 8.0,
        "data_order_sha256": "x",
    }


EAGER = {"converters": [], "delay_pct": 0.0}
FUSED = {
    "converters": [
        {
            "name": "fused_adamw",
            "use": "fused_adamw",
            "args": {},
            "hooks": ["optimizer"],
            "changes_numerics": True,
            "source": {"kind": "builtin", "package": "phase2_ray"},
        }
    ],
    "delay_pct": 0.0,
}


def _report(opt_settings: dict, trials: dict | None = None) -> dict:
    cfg = load_config(
        None,
        [
            "training.batch_size=4",
            "model.block_size=16",
            "training.measurement.skip_steps=5",
            "validation.prompt_tokens=4",
            "validation.max_tokens=4",
        ],
    )
    training = {
        "baseline": _raw_run("baseline", 2e10, 0.010, EAGER),
        "optimized": _raw_run("optimized", 3e10, 0.008, opt_settings),
    }
    return MetricsOrchestrator(
        cfg=cfg,
        run_id="t",
        started_at=0.0,
        environment={},
        data_info={},
        stages=[],
        training=training,
        trials=trials,
        validation={},
        failure=None,
    ).build()


def test_the_mfu_denominator_is_shared_so_mfu_ratio_equals_throughput_ratio():
    r = _report(FUSED)
    b, o = r["training"]["baseline"], r["training"]["optimized"]
    assert b["mfu"]["peak_flops"] == o["mfu"]["peak_flops"] == 3e10 and b["mfu"]["peak_from"] == "optimized"
    assert o["mfu"]["value"] / b["mfu"]["value"] == pytest.approx(o["tokens_per_s"] / b["tokens_per_s"])
    cc = r["comparison"]["optimized"]["concurrent"]
    # throughput uses the median step, so its ratio is the step-time ratio
    assert cc["tokens_per_s_ratio"] == pytest.approx(cc["step_time_ratio"]["ratio"])
    assert cc["mfu_ratio"] == pytest.approx(cc["tokens_per_s_ratio"])


def test_report_speedup_comes_from_the_trial_and_a_noop_is_rejected_with_its_reason():
    trials = {
        "optimized": [
            _trial_record(i, rep) for i, rep in enumerate(_replicates(np.random.default_rng(3), 1.3))
        ]
    }
    fast = _report(FUSED, trials)
    c = fast["comparison"]["optimized"]
    assert c["speedup"]["ratio"] == pytest.approx(1.3, rel=0.05) and not c["noop"]
    assert len(c["speed_trial"]["replicates"]) == 4
    gates = {g["name"]: g for g in fast["decision"]["gates"]}
    assert gates["training_speedup"]["verdict"] == "pass" and gates["training_speedup"]["low"] > 1.05
    noop = _report(EAGER, trials)  # a measured "1.3x" for the baseline's own stack is noise or a bug
    gates = {g["name"]: g for g in noop["decision"]["gates"]}
    assert noop["comparison"]["optimized"]["noop"]
    assert not gates["training_speedup"]["passed"] and "eager fp32" in gates["training_speedup"]["detail"]
    md = render_markdown(Report.model_validate({**noop, "wall_s": 1.0, "stages": []}))
    assert "## Key Metrics at a Glance" in md and "## Recommendation" in md
    assert "Do not proceed to Phase 3" in md and "No speedup to claim" in md
    assert "training_speedup" in md.split("## Recommendation")[1]
    untried = _report(FUSED)  # no trial: not measured, not approved
    g = next(g for g in untried["decision"]["gates"] if g["name"] == "training_speedup")
    assert g["value"] is None and not g["passed"]


def test_interleaved_order_is_random_yet_reproducible_from_the_seed():
    models = ["baseline", "optimized", "optimized-int8"]
    levels = [("c1", 1), ("c4", 4)]
    a = interleaved_schedule(models, levels, 48, 8, seed=1337)
    assert a == interleaved_schedule(models, levels, 48, 8, seed=1337)
    assert (
        len({tuple(s.model for s in interleaved_schedule(models, levels, 48, 8, seed=s)) for s in range(5)})
        > 1
    )
    firsts = {
        s.model
        for s in a
        if s.level == "c1" and s == next(x for x in a if x.level == "c1" and x.round == s.round)
    }
    assert len(firsts) > 1  # the baseline is not always measured first
    for lv, conc in levels:
        k = rounds_for(48, conc, 8)
        for m in models:
            mine = [s for s in a if s.level == lv and s.model == m]
            assert [s.round for s in mine] == list(range(k)) and sum(s.requests for s in mine) == 48
            assert [s.first_index for s in mine] == [sum(x.requests for x in mine[:i]) for i in range(k)]
    assert rounds_for(48, 16, 8) == 1 and rounds_for(48, 1, 8) == 8


def test_serving_ratio_interval_is_over_rounds():
    rng = np.random.default_rng(0)
    rows = []
    for rnd in range(8):
        shift = rng.normal(0, 0.1)  # a round's moment on the machine moves both models alike
        for m, scale in (("a", 1.0), ("b", 1.3)):
            rows += [
                {"model": m, "round": rnd, "x": scale * math.exp(shift + rng.normal(0, 0.02))}
                for _ in range(6)
            ]
    df = pd.DataFrame(rows)
    r = round_paired_ratio_ci(df[df.model == "a"], df[df.model == "b"], "x")
    assert r["rounds"] == 8 and r["ci_low"] > 1.2 and r["significant"]
    one = df[df["round"] == 0]
    r1 = round_paired_ratio_ci(one[one.model == "a"], one[one.model == "b"], "x")
    assert r1["ratio"] > 1 and r1["ci_low"] is None and not r1["significant"]


def test_holm_controls_the_family():
    assert holm([0.01, 0.04, 0.03, 0.5]) == [True, False, False, False]
    assert holm([0.001, 0.01, 0.02]) == [True, True, True]
    assert holm([]) == []


def _cmp_side(effect: float, seed: int) -> Comparison:
    reps = _replicates(np.random.default_rng(seed), effect)
    trial = {"replicates": [_trial_record(i, r) for i, r in enumerate(reps)]}
    return Comparison.model_validate({"speedup": paired_speedup(reps), "speed_trial": trial})


def test_compare_flags_a_lost_speedup_but_not_noise():
    same = _speedup_row("optimized", _cmp_side(1.2, 1), _cmp_side(1.2, 2), 5.0)
    lost = _speedup_row("optimized", _cmp_side(1.2, 1), _cmp_side(1.0, 3), 5.0)
    tiny = _speedup_row("optimized", _cmp_side(1.2, 1), _cmp_side(1.18, 4), 5.0)
    _decide([same, lost, tiny], 0.05)
    assert same["verdict"] == "no significant change"
    assert lost["verdict"] == "REGRESSION" and lost["ci_high"] < 0.9
    assert tiny["verdict"] in ("no significant change", "within noise (< 5%)")
