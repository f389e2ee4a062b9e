"""Pieces every section of report.json shares: the strict base model and the percentile summary."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Json = dict[str, Any]
"""An open object: its keys are the user's (config, converter args) or the machine's (Ray's resource names)."""


class Section(BaseModel):
    """A report.json object. An unknown key is an error: a field added to the report has to be added here (and
    to the schema's version note), so the published schema cannot drift from what runs write."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Percentiles(Section):
    """A distribution's summary: percentiles and mean over `n` samples (None: no sample)."""

    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None
    n: int = 0


class RatioCI(Section):
    """A ratio with its confidence interval (a bootstrap or t interval; None ends: too few samples)."""

    ratio: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    significant: bool = False
    p_value: float | None = None
    n_boot: int | None = None
    method: str | None = None


class Slo(Section):
    ttft_ms: float = Field(description="time to first token at most this (ms)")
    tpot_ms: float = Field(description="time per output token after the first at most this (ms)")
