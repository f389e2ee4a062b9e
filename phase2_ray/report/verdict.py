"""The decision rule: how an interval becomes a gate verdict, gates a candidate's outcome, and candidates the
run's outcome. Pure functions; gates.py builds the gates, docs/methodology.md ("How a decision is made") states the rule.

A gate compares a measured figure with a threshold through its interval [low, high] (a figure measured once, such as
a model's bytes, has low = high = value):
- `pass` when the whole interval lies on the passing side of the threshold;
- `fail` when the whole interval lies on the failing side (firmly short of the target, or firmly worse);
- `inconclusive` when the interval straddles the threshold: more evidence, or a quieter machine, could decide.
A point estimate near the threshold never decides on its own, so noise moves a verdict only between a firm outcome
and inconclusive, never from pass to fail.

A relative gate (a ratio of a candidate to the baseline) also says how the two compare, against the gate's margin m
(the band [1/(1+m), 1+m] around 1, oriented so that above 1 is the candidate being better):
- `better`: the interval lies above 1+m;
- `worse`: the interval lies below 1/(1+m);
- `equivalent`: under `superiority`, the interval lies inside the band (TOST: shown to differ by less than m);
  under `non-inferiority`, the interval lies above 1/(1+m) without clearing 1+m (shown no worse than m);
- `inconclusive`: anything else.

Rules: `superiority` (the training speedup: the candidate must be faster by at least the margin; threshold 1+m),
`non-inferiority` (serving ratios, convergence: the candidate may not be worse by more than the margin; threshold
1/(1+m) on the oriented ratio), `bound` (an absolute target on one model's or the replica's figure)."""

from __future__ import annotations

import math
import operator
from typing import Literal

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
BETTER, EQUIVALENT, WORSE = "better", "equivalent", "worse"
APPROVED, REJECTED = "approved", "rejected"
Verdict = Literal["pass", "fail", "inconclusive"]
Outcome = Literal["approved", "rejected", "inconclusive"]
Rule = Literal["superiority", "non-inferiority", "bound"]
Role = Literal["required", "informative"]

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}

RULE_TEXT = {
    "superiority": "superiority: the whole interval ≥ the target",
    "non-inferiority": "non-inferiority: the whole interval within the margin on the worse side",
    "bound": "bound: the whole interval on the passing side",
}
"""One line per rule, shown in report.md beside each gate."""


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def judge(low: float | None, high: float | None, op: str, threshold: float) -> Verdict:
    """pass / fail / inconclusive of `[low, high] op threshold`: pass when every value of the interval passes,
    fail when none does. An unmeasured figure (None, NaN) fails: a gate must be shown, not assumed."""
    if op not in OPS:
        raise ValueError(f"gate op {op!r} is not one of {sorted(OPS)}")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return FAIL
    lo, hi = min(low, high), max(low, high)  # an end may be infinite: an interval open on that side
    test = OPS[op]
    if op == "==":
        return PASS if lo == hi == threshold else (FAIL if not lo <= threshold <= hi else INCONCLUSIVE)
    # the interval end nearest to failing decides a pass, the end nearest to passing decides a fail
    worst, best = (lo, hi) if op in (">", ">=") else (hi, lo)
    if test(worst, threshold):
        return PASS
    if not test(best, threshold):
        return FAIL
    return INCONCLUSIVE


def relation(
    low: float | None, high: float | None, *, higher_is_better: bool, margin: float, rule: Rule
) -> str:
    """better / equivalent / worse / inconclusive of a ratio's interval (candidate / baseline in the metric's own
    direction) against the band [1/(1+margin), 1+margin] (see the module's docstring)."""
    if not (finite(low) and finite(high)) or min(low, high) <= 0:
        return INCONCLUSIVE
    lo, hi = sorted((low, high))
    if not higher_is_better:  # orient: above 1 means the candidate is better
        lo, hi = 1 / hi, 1 / lo
    up, down = 1 + margin, 1 / (1 + margin)
    if lo > up:
        return BETTER
    if hi < down:
        return WORSE
    if rule == "non-inferiority" and lo >= down:
        return EQUIVALENT
    if rule != "non-inferiority" and lo >= down and hi <= up:
        return EQUIVALENT
    return INCONCLUSIVE


def combine(verdicts: list[str]) -> Outcome:
    """One candidate's (or the run's) outcome from its deciding gates: rejected when any gate firmly fails,
    approved when every gate passes, else inconclusive. No gate at all is not an approval."""
    if any(v == FAIL for v in verdicts) or not verdicts:
        return REJECTED
    if all(v == PASS for v in verdicts):
        return APPROVED
    return INCONCLUSIVE


def run_outcome(run_gates: list[str], candidates: dict[str, tuple[Role, Outcome]]) -> Outcome:
    """The run's outcome: its own gates (failed stages, the replica's budget) and its required candidates'
    outcomes, combined as gates are; informative candidates are reported and do not decide. A run with no
    required candidate is judged on its own gates alone."""
    required = [o for role, o in candidates.values() if role == "required"]
    as_verdicts = [{APPROVED: PASS, REJECTED: FAIL}.get(o, INCONCLUSIVE) for o in required]
    return combine(run_gates + as_verdicts)
