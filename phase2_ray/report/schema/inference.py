"""report.json's `inference`: each served model's requests at the client (HTTP), per concurrency level."""

from __future__ import annotations

from pydantic import Field

from phase2_ray.report.schema.common import Percentiles, Section, Slo


class Goodput(Section):
    slo: Slo
    good_requests: int
    fraction: float | None = None
    requests_per_s: float | None = None


class LevelSummary(Section):
    """The requests of one model at one load level (`c1`, `c16`, …), measured at the client."""

    requests: int = Field(description="requests sent (warm-ups excluded)")
    succeeded: int = Field(description="requests whose stream was whole")
    success_rate: float | None = Field(None, description="succeeded / requests")
    errors: dict[str, int] = Field(
        {}, description="failed requests by kind (connection, timeout, http_5xx, …)"
    )
    ttft_ms: Percentiles | None = Field(None, description="time to first token at the client")
    e2e_ms: Percentiles | None = Field(None, description="request start to last byte")
    tpot_ms: Percentiles | None = Field(None, description="(e2e - ttft) / (output tokens - 1), per request")
    itl_ms: Percentiles | None = Field(
        None, description="gap between token writes, spread over the tokens each carried"
    )
    write_gap_ms: Percentiles | None = None
    tokens_per_write: Percentiles | None = None
    queue_ms: Percentiles | None = None
    output_tokens: int | None = Field(
        None,
        description="output tokens of the succeeded requests (usage.completion_tokens where the server sent it)",
    )
    measured_s: float | None = Field(None, description="wall seconds of the measured requests")
    output_tokens_per_s: float | None = Field(None, description="output tokens / measured_s")
    requests_per_s: float | None = None
    request_tokens_per_s: Percentiles | None = None
    goodput: Goodput | None = Field(None, description="requests within the SLO (TTFT and TPOT)")


class ModelBytes(Section):
    weights: int | None = None
    kv_cache: int | None = None
    activations: int | None = None


class InProcess(Section):
    """The same prompts decoded in the replica without HTTP (the engine's own floor)."""

    ttft_ms: Percentiles | None = None
    tpot_ms: Percentiles | None = None
    e2e_ms: Percentiles | None = None
    request_tokens_per_s: Percentiles | None = None
    requests: int | None = None


class KernelProbe(Section):
    step_matmul_us: float
    bytes: int
    fp32_bytes: int


class KernelChoice(Section):
    """Which int8 kernel serves, and the probe that chose it."""

    kernel: str
    method: str
    requested: str
    probe: dict[str, KernelProbe] = {}
    eligible: list[str] = []


class ModelInference(LevelSummary):
    """One served model: its headline level's figures at the top, every level under `levels`, its memory."""

    requests_by_kind: dict[str, int] = {}
    headline_level: str | None = Field(
        None, description="the level the top-level figures and the paired ratios are taken at"
    )
    levels: dict[str, LevelSummary] = Field({}, description="level (c1, c16, …) -> that level's figures")
    peak_memory_mb: float | None = Field(
        None, description="peak RSS of the replica process that served it (shared by the models it holds)"
    )
    rss_mb: float | None = None
    uss_mb: float | None = None
    model_bytes: ModelBytes | None = None
    model_memory_mb: float | None = Field(
        None, description="this model's own bytes (weights, KV cache, activations)"
    )
    memory_basis: str | None = None
    inprocess: InProcess | None = Field(None, description="the in-process reference: the engine without HTTP")
    val_loss: float | None = Field(
        None, description="the served weights' val loss (served copies: after their converters)"
    )
    weight_bytes: int | None = None
    int8: KernelChoice | None = None
