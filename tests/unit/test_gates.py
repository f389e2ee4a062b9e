import pytest

from phase2_ray.report.gates import Gate, decide, evaluate_gates

TARGETS = {
    "ttft_p50_ms_max": 120.0,
    "output_tokens_per_s_min": 25.0,
    "peak_memory_mb_max": 500.0,
    "success_rate_min": 1.0,
    "speedup_min": 1.1,
    "val_loss_delta_pct_max": 1.0,
}


@pytest.mark.parametrize(
    "value, op, threshold, passed, margin",
    [
        (80.0, "<=", 120.0, True, 40.0),
        (130.0, "<=", 120.0, False, -10.0),
        (30.0, ">=", 25.0, True, 5.0),
        (20.0, ">=", 25.0, False, -5.0),
        (1.0, ">=", 1.0, True, 0.0),
    ],
)
def test_gate_value_threshold_margin(value, op, threshold, passed, margin):
    g = Gate("m", "v", value, op, threshold)
    assert g.passed is passed and g.margin == pytest.approx(margin)


@pytest.mark.parametrize("value", [None, float("nan"), float("inf")])
def test_unmeasured_value_fails(value):
    g = Gate("m", "v", value, "<=", 1.0)
    assert not g.passed and g.margin is None


def report(
    base_tps=1000.0, opt_tps=1300.0, base_val=4.00, opt_val=4.02, ttft=50.0, ok=1.0, ci_low=1.2, ci_high=1.5
):
    inf = {
        "requests": 100,
        "succeeded": round(ok * 100),
        "ttft_ms": {"p50": ttft},
        "output_tokens_per_s": 300.0,
        "peak_memory_mb": 300.0,
        "success_rate": ok,
        "model_memory_mb": 2.0,
    }
    return {
        "training": {
            "baseline": {"status": "ok", "tokens_per_s": base_tps, "val_loss": base_val},
            "optimized": {"status": "ok", "tokens_per_s": opt_tps, "val_loss": opt_val},
        },
        "inference": {"baseline": dict(inf), "optimized": dict(inf)},
        "failure": None,
        "stages": [],
        "comparison": {
            "optimized": {
                "speedup": {"ratio": opt_tps / base_tps, "ci_low": ci_low, "ci_high": ci_high},
                "val_loss_delta_pct": abs(opt_val - base_val) / base_val * 100,
                "val_loss_tolerance_pct": 1.0,
            }
        },
    }


def by_name(gates):
    return {(g.name, g.variant): g for g in gates}


def test_change_gates_against_baseline():
    g = by_name(evaluate_gates(report(), TARGETS))
    assert g[("training_speedup", "optimized")].value == pytest.approx(1.3)
    assert g[("val_loss_delta_pct", "optimized")].value == pytest.approx(0.5)
    assert all(x.passed for x in g.values())
    assert ("training_speedup", "baseline") not in g


def test_each_target_can_reject():
    # the whole interval below the target: firmly short of it
    short = by_name(evaluate_gates(report(opt_tps=1050.0, ci_low=1.0, ci_high=1.08), TARGETS))
    assert short[("training_speedup", "optimized")].verdict == "fail"
    assert not by_name(evaluate_gates(report(opt_val=4.1), TARGETS))[
        ("val_loss_delta_pct", "optimized")
    ].passed
    assert not by_name(evaluate_gates(report(ttft=121.0), TARGETS))[("ttft_p50_ms", "baseline")].passed
    assert not by_name(evaluate_gates(report(ok=0.98), TARGETS))[("success_rate", "optimized")].passed


@pytest.mark.parametrize(
    "ci, verdict, outcome",
    [
        ((1.12, 1.30), "pass", "better"),  # the whole interval at or above the 1.1x target
        ((1.00, 1.08), "fail", "equivalent"),  # inside the ±10% band: shown short of the target
        ((0.80, 0.88), "fail", "worse"),
        ((1.02, 1.25), "inconclusive", "inconclusive"),  # straddles the target: more evidence could decide
        ((0.85, 1.05), "fail", "inconclusive"),  # below the target for sure, not shown worse than the band
    ],
)
def test_speedup_gate_is_judged_on_its_whole_interval(ci, verdict, outcome):
    g = by_name(evaluate_gates(report(ci_low=ci[0], ci_high=ci[1]), TARGETS))[
        ("training_speedup", "optimized")
    ]
    assert (g.verdict, g.outcome, g.rule) == (verdict, outcome, "superiority")
    assert (g.low, g.high) == ci


def test_missing_inference_fails_its_gates():
    r = report()
    del r["inference"]["optimized"]
    g = by_name(evaluate_gates(r, TARGETS))
    assert (
        not g[("ttft_p50_ms", "optimized")].passed
        and g[("ttft_p50_ms", "optimized")].detail == "not measured"
    )


def test_diverged_training_is_a_failed_gate():
    r = report()
    r["training"]["optimized"].update(status="diverged", error="loss became nan at step 3", val_loss=None)
    r["comparison"]["optimized"]["val_loss_delta_pct"] = None
    g = by_name(evaluate_gates(r, TARGETS))
    assert not g[("training_completed", "optimized")].passed
    assert not g[("val_loss_delta_pct", "optimized")].passed


def test_serving_ratios_are_non_inferiority_gates_for_every_candidate():
    """TTFT / TPOT of each served candidate (the int8 copy too) against the baseline model, with a 10% margin:
    passes when the whole interval is within +10%, fails when the whole interval is beyond it, inconclusive
    when it straddles; fewer than 3 rounds give no interval, so inconclusive rather than a coin toss."""
    r = report()
    noisy = {"ratio": 1.15, "ci_low": 0.95, "ci_high": 1.4, "metric": "TTFT p50", "level": "c1", "rounds": 8}
    shown = {"ratio": 1.25, "ci_low": 1.15, "ci_high": 1.35, "metric": "TPOT p50", "level": "c1", "rounds": 8}
    tight = {"ratio": 1.0, "ci_low": 0.96, "ci_high": 1.04, "metric": "E2E p50", "level": "c1", "rounds": 8}
    r["serving"] = {
        "vs_baseline": {
            "optimized": {"ttft_ms": noisy, "tpot_ms": shown, "e2e_ms": tight},
            "optimized-int8": {"ttft_ms": shown},
        }
    }
    targets = {**TARGETS, "serving_regression_pct_max": 10.0}
    g = by_name(evaluate_gates(r, targets))
    ttft, tpot, e2e = (
        g[(n, "optimized")] for n in ("ttft_p50_vs_baseline", "tpot_p50_vs_baseline", "e2e_p50_vs_baseline")
    )
    assert (ttft.verdict, ttft.outcome) == ("inconclusive", "inconclusive")
    assert (tpot.verdict, tpot.outcome) == ("fail", "worse") and tpot.threshold == pytest.approx(1.1)
    assert (e2e.verdict, e2e.outcome, e2e.rule) == ("pass", "equivalent", "non-inferiority")
    assert g[("ttft_p50_vs_baseline", "optimized-int8")].verdict == "fail"
    r["serving"]["vs_baseline"]["optimized"]["tpot_ms"] = {**shown, "rounds": 2}
    g = by_name(evaluate_gates(r, targets))
    assert g[("tpot_p50_vs_baseline", "optimized")].verdict == "inconclusive"


def test_each_candidate_gets_its_own_outcome_and_roles_decide_the_run():
    """An int8 copy firmly slower than the baseline is rejected on its own line; as an informative candidate
    (the default for served copies) it does not sink the run, as a required one it does."""
    r = report()
    r["inference"]["optimized-int8"] = dict(r["inference"]["optimized"])
    slow = {"ratio": 1.37, "ci_low": 1.3, "ci_high": 1.45, "metric": "E2E p50", "level": "c1", "rounds": 8}
    r["serving"] = {"vs_baseline": {"optimized-int8": {"e2e_ms": slow}}}
    targets = {**TARGETS, "serving_regression_pct_max": 10.0}
    d = decide(r, targets)
    assert d["candidates"]["optimized-int8"] == {
        "role": "informative",
        "outcome": "rejected",
        "gates": 5,
        "failed": ["e2e_p50_vs_baseline"],
        "inconclusive": [],
    }
    assert d["candidates"]["optimized"]["outcome"] == "approved"
    assert d["outcome"] == "approved" and d["approved"]
    d = decide(r, {**targets, "candidates": {"optimized-int8": "required"}})
    assert d["outcome"] == "rejected" and not d["approved"]


def test_inconclusive_candidate_makes_an_inconclusive_run_and_a_failure_rejects():
    r = report(ci_low=1.05, ci_high=1.2)  # straddles 1.1
    d = decide(r, TARGETS)
    assert d["candidates"]["optimized"]["inconclusive"] == ["training_speedup"]
    assert d["outcome"] == "inconclusive" and not d["approved"]
    r = report(ci_low=1.05, ci_high=1.2, ok=0.5)  # and a firm failure elsewhere: rejected
    assert decide(r, TARGETS)["outcome"] == "rejected"


def test_the_baseline_is_shown_not_judged_and_the_replica_is_gated_once():
    r = report(ttft=121.0)  # every model, the baseline too, misses the TTFT target
    r["inference"]["optimized"]["ttft_ms"] = {"p50": 50.0}
    r["inference"]["baseline"]["peak_memory_mb"] = 600.0
    d = decide(r, TARGETS)
    gates = {(g["name"], g["variant"]): g for g in d["gates"]}
    base = gates[("ttft_p50_ms", "baseline")]
    assert base["verdict"] == "fail" and not base["deciding"]
    replica = gates[("replica_peak_memory_mb", "replica")]
    assert replica["value"] == 600.0 and replica["verdict"] == "fail"
    assert not any(n == "peak_memory_mb" for n, _ in gates)
    assert d["candidates"]["optimized"]["outcome"] == "approved"
    assert d["outcome"] == "rejected"  # the replica is over its budget: which one is over is named


def test_model_memory_gate_reads_weights_and_kv_cache():
    r = report()
    r["inference"]["optimized"]["model_memory_mb"] = 300.0
    g = by_name(evaluate_gates(r, {**TARGETS, "model_memory_mb_max": 200.0}))
    assert g[("model_memory_mb", "baseline")].passed and not g[("model_memory_mb", "optimized")].passed


def test_convergence_is_judged_on_the_paired_val_windows():
    """One seed: the signed val-loss change over the same val windows, paired window by window; a 3% higher
    loss is firmly worse, a noisy +0.9% straddles the 1% tolerance (inconclusive), a lower loss never fails."""
    import numpy as np

    from phase2_ray.report.training import convergence

    rng = np.random.default_rng(0)
    base = [5.0 + 0.1 * (i % 7) for i in range(64)]

    def gate(var):
        c = convergence([{"val_loss": np.mean(base)}], [{"val_loss": np.mean(var)}], 1.0, base, var)
        r = report()
        r["comparison"]["optimized"] = {**r["comparison"]["optimized"], **c}
        return by_name(evaluate_gates(r, TARGETS))[("val_loss_delta_pct", "optimized")]

    same = gate(list(base))
    assert (same.low, same.high, same.verdict, same.outcome) == (0.0, 0.0, "pass", "equivalent")
    worse = gate([x * 1.03 for x in base])
    assert worse.value == pytest.approx(3.0) and worse.verdict == "fail" and worse.outcome == "worse"
    noisy = gate([x * (1 + rng.normal(0.009, 0.03)) for x in base])
    assert noisy.low < 1.0 < noisy.high and noisy.verdict == "inconclusive"
    better = gate([x * 0.95 for x in base])
    assert better.verdict == "pass" and better.outcome == "better" and better.rule == "non-inferiority"
