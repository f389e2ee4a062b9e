"""report.json's `serving`: the paired comparison of served models, the schedule, capacity, scaling, copies."""

from __future__ import annotations

from pydantic import Field

from phase2_ray.report.schema.common import Json, Section, Slo
from phase2_ray.report.schema.inference import KernelChoice


class RoundRatio(Section):
    """A candidate / baseline serving ratio taken over interleaved rounds (drift hits both alike)."""

    ratio: float | None = Field(
        None, description="candidate / baseline of the metric (a time: lower is better)"
    )
    ci_low: float | None = None
    ci_high: float | None = None
    significant: bool = False
    rounds: int = Field(0, description="interleaved rounds the interval is taken over")
    pooled_ratio: float | None = Field(
        None, description="the ratio over all requests pooled (shown beside the per-round one)"
    )
    confidence: float | None = None
    p_value: float | None = None
    mde_ratio: float | None = Field(None, description="the smallest effect the interval could resolve")
    method: str = ""
    metric: str = ""
    level: str | None = None
    looks: int | None = Field(
        None, description="looks taken (rounds were added while the ratio was undecided)"
    )


class Slot(Section):
    level: str
    round: int
    model: str
    requests: int
    first_index: int


class HeadlineRounds(Section):
    looks: list[int] = Field(description="rounds measured at each look")
    max_rounds: int


class Overhead(Section):
    level: str
    ttft_p50_ms_http: float | None = None
    ttft_p50_ms_inprocess: float | None = None
    ttft_p50_overhead_ms: float | None = None
    tpot_p50_ms_http: float | None = None
    tpot_p50_ms_inprocess: float | None = None
    tpot_p50_overhead_ms: float | None = None


class LevelScaling(Section):
    from_: str = Field(alias="from")
    to: str
    output_tokens_per_s_from: float | None = None
    output_tokens_per_s_to: float | None = None
    ratio: float | None = None


class ReplicaInfo(Section):
    replica_id: str
    node_id: str
    pid: int
    device: str
    checkpoint_sources: dict[str, str] = {}


class ReplicaRun(Section):
    replicas: int
    level: str
    output_tokens_per_s: float | None = None
    requests_per_s: float | None = None
    success_rate: float | None = None
    requests: int
    peak_rss_mb: list[float] = []
    replica_ids: list[str] = []


class ReplicaScaling(Section):
    model: str
    concurrency: int
    runs: list[ReplicaRun]
    ratio: float | None = None
    ratio_basis: str = ""


class TokenAccounting(Section):
    """How an endpoint's output tokens were counted, and how often its usage disagreed with our tokenizer."""

    requests: int
    with_usage: int
    output_tokens_from: str
    prompt_tokens_usage_mean: float | None = None
    tokenizer: str | None = None
    mismatched: int | None = None
    mismatch_rate: float | None = None
    mean_abs_diff: float | None = None


class Endpoint(Section):
    """A model served by this run (`self`) or elsewhere (`external`). Never the key: only its variable's name."""

    kind: str = Field(description="self / external")
    api: str = Field(description="completions / chat")
    tokens: TokenAccounting | None = None
    url: str | None = None
    model: str | None = None
    tokenizer: str | None = None
    api_key_env: str | None = None
    failure: str | None = None


class Workload(Section):
    source: str
    requests: int
    truncated_prompts: int
    max_tokens: dict[str, float]


class CapacityCluster(Section):
    cpus: float
    nodes: int
    load_clients: int


class LevelLatency(Section):
    ok: int
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    tpot_p50_ms: float | None = None
    tpot_p99_ms: float | None = None


class CapacityLevel(Section):
    """One offered rate of a capacity search: open-loop arrivals, goodput under the SLO."""

    offered_rps: float
    requests: int
    good: int
    achieved_rps: float | None = None
    scheduled_rps: float | None = None
    generator_lag_ms_p99: float | None = None
    ttft_trend: float | None = None
    saturated: bool = False
    valid: bool = True
    latency: LevelLatency | None = None
    invalid_reason: str | None = None
    stopped_early: bool = False
    confirm: bool = False
    client_cpu_ms_per_request: float | None = None
    goodput_frac: float | None = None
    goodput_ci95: list[float] = []
    replicate: int | None = None


class CapacitySearch(Section):
    replicate: int
    capacity_rps: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    highest_passing_rps: float | None = None
    lowest_failing_rps: float | None = None
    goodput_min: float
    stop_reason: str
    censored: bool
    confirmed: bool
    levels: list[CapacityLevel]
    method: str
    search_s: float


class CapacityRun(Section):
    """Capacity of one model at one replica count: replicated searches, their geometric mean and t interval."""

    replicas: int
    model: str
    capacity_rps: float | None = Field(None, description="geometric mean of the searches' estimates (req/s)")
    ci_low: float | None = Field(None, description="t interval over the replicated searches")
    ci_high: float | None = None
    confidence: float | None = None
    replicates: int | None = None
    replicate_estimates: list[float | None] = Field([], description="each search's estimate")
    between_run_cv_pct: float | None = Field(
        None,
        description="the run-to-run component added to the interval (validation.capacity.between_run_cv_pct)",
    )
    censored: bool = Field(False, description="the search hit its limits before bracketing the capacity")
    goodput_min: float | None = None
    stop_reason: str = ""
    search_s: float | None = None
    levels: list[CapacityLevel] = []
    searches: list[CapacitySearch] = []
    method: str = ""
    replica_ids: list[str] = []
    replica_nodes: list[str] = []
    client_nodes: list[str] = []


class ScalingPoint(Section):
    replicas: int
    capacity_rps: float | None = None
    efficiency: float | None = None


class Capacity(Section):
    slo: Slo
    goodput_min: float
    cluster: CapacityCluster | None = None
    runs: list[CapacityRun] = []
    scaling: dict[str, list[ScalingPoint]] = {}
    bound: str | None = Field(
        None, description="what limited capacity, when the searches could tell (None: no bound found)"
    )


class Compression(Section):
    """The int8 copy against its fp32 source: loss, bytes, speed."""

    method: str
    kernel: str
    kernel_choice: KernelChoice | None = None
    source: str
    model: str
    val_loss_source: float | None = None
    val_loss_int8: float | None = None
    val_loss_delta_pct: float | None = None
    threshold_pct: float | None = None
    weight_bytes_source: int | None = None
    weight_bytes_int8: int | None = None
    weight_bytes_ratio: float | None = None
    inprocess_request_tokens_per_s_p50: dict[str, float | None] = {}
    http_output_tokens_per_s: dict[str, float | None] = {}


class CopyConverter(Section):
    name: str
    args: Json = {}
    source: Json | None = None
    changes_numerics: bool = True


class ServedCopy(Section):
    """A serving-only candidate: `serve_from` a trained variant through serve-time converters."""

    model: str
    source: str
    converters: list[CopyConverter] = []
    changes_numerics: bool = True
    val_loss_source: float | None = None
    val_loss_copy: float | None = None
    val_loss_delta_pct: float | None = None
    weight_bytes_source: int | None = None
    weight_bytes_copy: int | None = None
    weight_bytes_ratio: float | None = None


class Serving(Section):
    vs_baseline: dict[str, dict[str, RoundRatio]] = Field(
        {},
        description="candidate -> ratio name (ttft_ms, tpot_ms, e2e_ms, rate, …) -> its interval over rounds",
    )
    schedule: list[Slot] = Field([], description="every slot of the interleaved rounds: which model ran when")
    headline_rounds: HeadlineRounds | None = Field(
        None, description="how many rounds the headline level took, look by look"
    )
    overhead: dict[str, Overhead] = Field({}, description="model -> HTTP minus in-process TTFT and TPOT")
    concurrency_scaling: dict[str, LevelScaling] = Field(
        {}, description="model -> output tok/s from the lowest to the highest level"
    )
    replicas: list[ReplicaInfo] = Field([], description="the Serve replicas that served the run")
    replica_scaling: ReplicaScaling | None = Field(
        None, description="the replica sweep: throughput at each replica count"
    )
    endpoints: dict[str, Endpoint] = Field(
        {},
        description="model -> where it was served (this run or an external endpoint) and how its tokens were counted",
    )
    workload: Workload | None = Field(None, description="the requests' source and lengths")
    capacity: Capacity | None = Field(
        None, description="the highest arrival rate each model sustains within the SLO, per replica count"
    )
    compression: Compression | None = Field(None, description="the int8 copy against its source")
    copies: dict[str, ServedCopy] = Field({}, description="serving-only candidates (serve_from)")
