"""One approval gate: a figure, its interval, the threshold it is held to and the rule, and what follows from them
(verdict, outcome against the margin, margin). report/gates.py builds a run's gates; report/verdict.py holds the
rule they are judged by."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from phase2_ray.report.verdict import FAIL, INCONCLUSIVE, PASS, finite, judge, relation


@dataclass
class Gate:
    name: str
    variant: str
    value: float | None
    op: str
    threshold: float
    unit: str = ""
    low: float | None = None
    """The interval's ends (a figure measured once: both None, and the value is its own interval)."""
    high: float | None = None
    rule: str = "bound"
    """bound / superiority / non-inferiority (report/verdict.py)."""
    relative_margin: float | None = None
    """A relative gate's declared margin m (fraction): its band [1/(1+m), 1+m] for `outcome`."""
    higher_is_better: bool = True
    percent: bool = False
    """The figure is a percent change: its ratio, for `outcome`, is 1 + value / 100."""
    verdict: str = FAIL
    """pass / fail / inconclusive."""
    outcome: str | None = None
    """Relative gates: better / equivalent / worse / inconclusive against the margin; bound gates: None."""
    passed: bool = False
    """verdict == pass (kept for readers of schema 1.1)."""
    deciding: bool = True
    """False for a gate shown but not counted (the baseline's own serving targets)."""
    margin: float | None = None
    """How far the value is on the passing side of the threshold (negative: by how much it missed)."""
    detail: str = ""
    veto: str = ""
    """Why this gate fails whatever its value (e.g. a variant that runs the baseline's own stack is no
    speedup, even where noise put its measured ratio above the threshold)."""
    undecided: str = ""
    """Why a measured figure cannot be judged yet (e.g. too few rounds for an interval): the verdict is then
    inconclusive, not fail."""

    def __post_init__(self) -> None:
        measured = finite(self.value)
        if self.low is None and self.high is None:  # measured once: the value is its own interval
            lo = hi = self.value
        else:  # an end not shown leaves the interval open on that side
            lo = self.low if self.low is not None else -math.inf
            hi = self.high if self.high is not None else math.inf
        if self.veto:
            self.verdict = FAIL
            self.detail = f"{self.veto}; {self.detail}" if self.detail else self.veto
        elif measured and self.undecided:
            self.verdict = INCONCLUSIVE
            self.detail = f"{self.undecided}; {self.detail}" if self.detail else self.undecided
        elif not measured:  # None, NaN or infinite: not a measurement, whatever the interval says
            self.verdict = FAIL
        else:
            self.verdict = judge(lo, hi, self.op, self.threshold)
        self.passed = self.verdict == PASS
        if self.relative_margin is not None and not self.undecided:
            self.outcome = relation(
                1 + lo / 100 if self.percent else lo,
                1 + hi / 100 if self.percent else hi,
                higher_is_better=self.higher_is_better,
                margin=self.relative_margin,
                rule=self.rule,  # type: ignore[arg-type]
            )
        elif self.relative_margin is not None:
            self.outcome = INCONCLUSIVE
        if measured:
            self.margin = (
                self.threshold - self.value if self.op in ("<", "<=") else self.value - self.threshold
            )
        elif not self.detail:
            self.detail = "not measured"

    def to_dict(self) -> dict:
        return asdict(self)
