"""report.json's `decision`: every gate with its interval, threshold, rule and verdict; each candidate's outcome;
the run's. The rule itself is report/verdict.py (and docs/methodology.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from phase2_ray.report.schema.common import Section

Outcome = Literal["approved", "rejected", "inconclusive"]


class Gate(Section):
    name: str = Field(description="the target's name, e.g. training_speedup, ttft_p50_vs_baseline")
    variant: str = Field(
        description="the model it judges; `run` for the run's own gates, `replica` for the replica"
    )
    value: float | None = Field(description="the measured figure (None: not measured)")
    op: str = Field(description="how the value is held to the threshold: >=, <=, >, <, ==")
    threshold: float
    unit: str = ""
    low: float | None = Field(None, description="the interval's low end (both None: measured once)")
    high: float | None = None
    rule: Literal["bound", "superiority", "non-inferiority"] = "bound"
    relative_margin: float | None = Field(None, description="a relative gate's margin m: band [1/(1+m), 1+m]")
    higher_is_better: bool = True
    percent: bool = False
    verdict: Literal["pass", "fail", "inconclusive"]
    outcome: Literal["better", "equivalent", "worse", "inconclusive"] | None = Field(
        None, description="relative gates: the interval against the margin band; bound gates: None"
    )
    passed: bool = Field(description="verdict == pass (kept for readers of schema 1.1)")
    deciding: bool = Field(True, description="False: shown, not counted (the baseline's own serving targets)")
    margin: float | None = Field(
        None, description="how far the value is on the passing side (negative: missed)"
    )
    detail: str = ""
    veto: str = Field("", description="why the gate fails whatever its value (e.g. a no-op stack)")
    undecided: str = Field("", description="why a measured figure cannot be judged yet")


class CandidateOutcome(Section):
    role: Literal["required", "informative"]
    outcome: Outcome
    gates: int
    failed: list[str] = []
    inconclusive: list[str] = []


class Decision(Section):
    outcome: Outcome
    approved: bool = Field(description="outcome == approved")
    rule: str = Field(description="how the run's outcome follows from its gates and candidates, in words")
    candidates: dict[str, CandidateOutcome] = {}
    gates: list[Gate]
