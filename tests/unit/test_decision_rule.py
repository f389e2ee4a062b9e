"""The decision rule on synthetic series, with its error rates checked by simulation (no Ray, no torch): the
interval verdict, the sequential speed trial's alpha spending, and the three series a user cares about (A/A, a
known effect, an effect at the threshold)."""

import math

import numpy as np
import pytest

from phase2_ray.report.stats import look_levels, sequential_speedup
from phase2_ray.report.verdict import combine, judge, relation, run_outcome

TARGET = 1.05
FIRST, STEP, BUDGET = 6, 4, 24


@pytest.mark.parametrize(
    "low, high, op, verdict",
    [
        (1.06, 1.2, ">=", "pass"),
        (1.0, 1.04, ">=", "fail"),
        (1.0, 1.1, ">=", "inconclusive"),
        (90.0, 110.0, "<=", "inconclusive"),
        (80.0, 99.0, "<=", "pass"),
        (101.0, 130.0, "<=", "fail"),
        (None, None, ">=", "fail"),
        (float("nan"), 1.0, ">=", "fail"),
    ],
)
def test_judge_reads_the_whole_interval(low, high, op, verdict):
    assert judge(low, high, op, 1.05 if op == ">=" else 100.0) == verdict


def test_relation_against_the_margin_band():
    # higher is better (a speedup): band [1/1.05, 1.05]
    assert relation(1.06, 1.2, higher_is_better=True, margin=0.05, rule="superiority") == "better"
    assert relation(0.97, 1.03, higher_is_better=True, margin=0.05, rule="superiority") == "equivalent"
    assert relation(0.8, 0.9, higher_is_better=True, margin=0.05, rule="superiority") == "worse"
    assert relation(1.0, 1.1, higher_is_better=True, margin=0.05, rule="superiority") == "inconclusive"
    # lower is better (a latency ratio), non-inferiority with 10%: shown no worse than +10%
    assert relation(0.95, 1.08, higher_is_better=False, margin=0.1, rule="non-inferiority") == "equivalent"
    assert relation(1.15, 1.3, higher_is_better=False, margin=0.1, rule="non-inferiority") == "worse"
    assert relation(0.7, 0.85, higher_is_better=False, margin=0.1, rule="non-inferiority") == "better"
    assert relation(0.9, 1.2, higher_is_better=False, margin=0.1, rule="non-inferiority") == "inconclusive"


def test_combining_gates_and_candidates():
    assert combine(["pass", "pass"]) == "approved"
    assert combine(["pass", "inconclusive"]) == "inconclusive"
    assert combine(["fail", "inconclusive"]) == "rejected"
    assert combine([]) == "rejected"  # nothing shown is no approval
    req = {"a": ("required", "approved"), "b": ("informative", "rejected")}
    assert run_outcome(["pass"], req) == "approved"
    assert run_outcome(["pass"], {**req, "b": ("required", "rejected")}) == "rejected"
    assert run_outcome(["inconclusive"], req) == "inconclusive"
    assert run_outcome(["pass"], {"a": ("required", "inconclusive")}) == "inconclusive"


def test_alpha_is_spent_across_looks_not_per_look():
    levels = look_levels([6, 10, 14, 18, 22, 24], 24, 0.95)
    assert sum(1 - x for x in levels) == pytest.approx(0.05)
    assert all(x > 0.95 for x in levels)  # every look's interval is wider than a fixed 95% one
    assert look_levels([24], 24, 0.95) == pytest.approx([0.95])


def _trial(rng, effect: float, rep_sd: float = 0.03, pair_sd: float = 0.02, pairs: int = 4):
    """A synthetic sequential trial (what training/trial.py runs): first look FIRST replicates, then STEP more
    while the interval straddles TARGET, up to BUDGET. Each replicate has its own offset (its machine moment)."""

    def replicate():
        off = rng.normal(0, rep_sd)
        return [
            {"a_s": 1.0, "b_s": math.exp(-math.log(effect) - off - rng.normal(0, pair_sd))}
            for _ in range(pairs)
        ]

    reps, looks = [replicate() for _ in range(FIRST)], [FIRST]
    while True:
        sp = sequential_speedup(reps, looks, BUDGET)
        v = judge(sp["ci_low"], sp["ci_high"], ">=", TARGET)
        if v != "inconclusive" or len(reps) >= BUDGET:
            return v, sp
        reps += [replicate() for _ in range(min(STEP, BUDGET - len(reps)))]
        looks.append(len(reps))


def _series(effect: float, n: int, seed: int) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(seed)
    return [_trial(rng, effect) for _ in range(n)]


def test_aa_is_never_approved_and_its_intervals_cover_one():
    runs = _series(1.0, 300, 1)
    approved = sum(v == "pass" for v, _ in runs)
    covered = sum(sp["ci_low"] <= 1.0 <= sp["ci_high"] for _, sp in runs)
    assert approved <= 0.05 * len(runs)  # a false approval needs the whole interval above 1.05
    assert covered >= 0.90 * len(runs)  # alpha spending keeps coverage across the looks


def test_a_known_effect_is_approved_early():
    runs = _series(1.20, 200, 2)
    assert sum(v == "pass" for v, _ in runs) >= 0.9 * len(runs)
    assert np.median([sp["replicates"] for _, sp in runs]) == FIRST  # decided at the first look


def test_an_effect_at_the_threshold_never_flips_between_firm_outcomes():
    """True ratio exactly at the target: a firm call either way is an error; the rule holds each side to about
    alpha/2 in total over all looks, so most runs end inconclusive, and approved and rejected both happening in
    a short series (10 runs) is rare."""
    runs = _series(TARGET, 400, 3)
    verdicts = [v for v, _ in runs]
    assert verdicts.count("pass") <= 0.05 * len(runs)
    assert verdicts.count("fail") <= 0.05 * len(runs)
    assert verdicts.count("inconclusive") >= 0.9 * len(runs)
    both = sum({"pass", "fail"} <= set(verdicts[i : i + 10]) for i in range(0, len(verdicts), 10))
    assert both <= 2  # of 40 series of 10 runs
    # what each inconclusive run could resolve: its minimum detectable effect is reported
    assert all(sp["mde_ratio"] > 1 for _, sp in runs)


def test_a_fixed_size_rule_on_the_point_estimate_would_flip():
    """The rule this replaced ("ratio >= target and CI low > 1") on the same threshold series: approved and
    rejected both occur in most series of 10: the flip the three-outcome rule removes."""
    rng = np.random.default_rng(3)
    flips = 0
    for _ in range(20):
        calls = []
        for _ in range(10):
            _, sp = _trial(rng, TARGET)
            calls.append(sp["ratio"] >= TARGET and sp["ci_low"] > 1)
        flips += len(set(calls)) == 2
    assert flips >= 10


def test_the_final_interval_recomputes_from_the_replicates():
    rng = np.random.default_rng(4)
    v, sp = _trial(rng, 1.03)
    seq = sp["sequential"]
    assert seq["replicates_at_look"][-1] == sp["replicates"]
    assert seq["look_confidence"] == pytest.approx(look_levels(seq["replicates_at_look"], BUDGET, 0.95)[-1])
