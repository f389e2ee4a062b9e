"""The `serve` (stage 2c's server) and `validation` (its load) sections."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from phase2_ray.config.base import Section


class AutoscalingConfig(Section):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas (0 scales to zero when idle).")
    max_replicas: int = Field(2, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(8.0, gt=0, description="Requests in flight per replica to aim at.")
    upscale_delay_s: float = Field(
        30.0, ge=0, description="How long the load must call for more replicas before one is added (Serve's)."
    )
    downscale_delay_s: float = Field(
        600.0,
        ge=0,
        description="How long the load must call for fewer replicas before one is removed (Serve's).",
    )

    @model_validator(mode="after")
    def _order(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        return self


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="HTTP bind address of the Serve proxy.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the Serve proxy.")
    cpus_per_replica: float = Field(1.0, ge=0, description="Logical CPUs per model replica.")
    threads_per_replica: int = Field(1, ge=1, description="torch threads in each model replica.")
    gpus_per_replica: float = Field(
        0, ge=0, description="GPUs per model replica (> 0: the models run on CUDA; 0.5 puts two on one GPU)."
    )
    num_replicas: int = Field(
        1, ge=1, le=1024, description="Replicas of the engine (ignored with autoscaling)."
    )
    autoscaling: AutoscalingConfig | None = Field(
        None, description="Serve autoscaling instead of a fixed num_replicas."
    )
    max_batch_size: int = Field(
        16, ge=1, le=1024, description="Sequences decoded together per replica and model (KV-cache slots)."
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests a replica takes at once; more wait in Serve's queue."
    )
    max_queued_requests: int = Field(
        256,
        ge=-1,
        description="Requests Serve queues when replicas are full; beyond, HTTP 503 (-1 = no cap).",
    )
    max_waiting: int = Field(
        64, ge=1, description="Requests a model's engine holds waiting for a cache slot; beyond, HTTP 429."
    )
    max_prompt_chars: int = Field(16_384, ge=1, description="Longest prompt string accepted.")
    stream_batch_tokens: int = Field(
        16,
        ge=1,
        le=4096,
        description="After the first token (sent at once: it is the TTFT), send tokens this many per write; "
        "each write costs Serve ~1 ms of CPU here whatever its size (1 = a write per token).",
    )
    stream_interval_ms: float = Field(
        50.0,
        ge=0,
        le=10_000,
        description="...or sooner, once the oldest unsent token has waited this long (bounds the bursts).",
    )
    api_key: str | None = Field(
        None,
        description="Require `Authorization: Bearer <key>` on /v1/*. Unset: the PHASE2_API_KEY environment "
        "variable if set, else no key.",
    )
    min_step_ms: float = Field(
        0.0,
        ge=0,
        le=10_000,
        description="Each decode step takes at least this long (0: as fast as it runs): a slower model "
        "simulated with a known service time, e.g. to check what capacity a slower device would have.",
    )
    int8: bool = Field(
        True, description="Also serve an int8 copy of the optimized variant as `<variant>-int8`."
    )
    int8_kernel: Literal["auto", "fbgemm", "int8pack"] = Field(
        "auto",
        description="The int8 copy's matmul: `int8pack` (PyTorch's weight-only int8, fast with AVX-512 or on "
        "CUDA), `fbgemm` (FBGEMM's int8 GEMM with per-call activation quantization, x86 AVX2+), or `auto`: "
        "the faster on this machine, measured where the model loads, among those that do not hold more bytes "
        "than the fp32 matrices.",
    )
    kv_cache_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Dtype of every model's KV cache: bfloat16 halves its bytes; attention then runs in bf16 "
        "(fast only where the CPU has bf16 instructions; benchmarks/decode_bench.py measures it).",
    )

    def resolved_api_key(self) -> str | None:
        return self.api_key or os.environ.get("PHASE2_API_KEY") or None


class LengthDist(Section):
    """A token count per request: `fixed` (value), `uniform` (min..max) or `normal` (mean, std, clipped to
    min..max)."""

    dist: Literal["fixed", "uniform", "normal"] = Field("fixed", description="fixed, uniform or normal.")
    value: int | None = Field(None, ge=1, description="fixed: the count.")
    min: int = Field(1, ge=1, description="uniform / normal: the lowest count.")
    max: int | None = Field(None, ge=1, description="uniform / normal: the highest count.")
    mean: float | None = Field(None, gt=0, description="normal: the mean.")
    std: float | None = Field(None, ge=0, description="normal: the standard deviation.")

    @model_validator(mode="after")
    def _complete(self) -> LengthDist:
        need = {"fixed": ["value"], "uniform": ["max"], "normal": ["mean", "std", "max"]}[self.dist]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"dist: {self.dist} needs {', '.join(missing)}")
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) < min ({self.min})")
        return self

    @property
    def upper(self) -> int:
        return self.value if self.dist == "fixed" else self.max


class WorkloadConfig(Section):
    """What each request asks: lengths drawn from distributions, or prompts from a file. Seeded by
    training.seed: the same config sends the same requests."""

    prompt_tokens: LengthDist | None = Field(
        None, description="Prompt length in tokens (default: fixed at validation.prompt_tokens)."
    )
    output_tokens: LengthDist | None = Field(
        None,
        description="max_tokens per request (default: fixed at validation.max_tokens; with a file, the file's).",
    )
    file: str | None = Field(
        None,
        description='Prompts from this file instead: JSONL ({"prompt": ..., "max_tokens": ...} per line) or a '
        "ShareGPT-style JSON list of conversations.",
    )
    format: Literal["auto", "jsonl", "sharegpt"] = Field(
        "auto", description="The file's format (auto: a JSON list is ShareGPT, else JSONL)."
    )
    count: int = Field(64, ge=1, le=100_000, description="Distinct requests drawn (synthetic workloads).")

    @field_validator("prompt_tokens", "output_tokens", mode="before")
    @classmethod
    def _int_is_fixed(cls, v):
        return {"dist": "fixed", "value": v} if isinstance(v, int) and not isinstance(v, bool) else v


class CapacityConfig(Section):
    """Capacity under the SLO: open-loop Poisson levels at rising rates, then bisection, per replica count."""

    enabled: bool = Field(True, description="Search each replica count's capacity under the SLO.")
    model: str | None = Field(
        None,
        description="The model searched and swept over replica counts (default: the variant the int8 copy "
        "comes from, else the first variant).",
    )
    baseline: bool = Field(
        False,
        description="Also search the baseline model at the first replica count (a relative gate needs it).",
    )
    slo_ttft_ms: float | None = Field(
        None, gt=0, description="TTFT SLO from the scheduled arrival (default: targets.ttft_p50_ms_max)."
    )
    slo_tpot_ms: float | None = Field(
        None,
        gt=0,
        description="Time-per-output-token SLO after the first (default: 1000 / targets.output_tokens_per_s_min).",
    )
    goodput_min: float = Field(
        0.95, gt=0, le=1, description="Share of a level's requests that must meet the SLO for it to pass."
    )
    start_rps: float | None = Field(
        None,
        gt=0,
        description="First offered rate; doubled while levels pass (default: half the requests/s the replica "
        "sweep's closed-loop load got at that replica count, else 4).",
    )
    max_rps: float = Field(
        2000.0, gt=0, description="Highest rate offered (a capacity above it is reported as >=)."
    )
    level_s: float = Field(
        3.0, gt=0, description="Seconds of arrivals per level (a confirmation level: twice)."
    )
    min_requests: int = Field(24, ge=8, description="Fewest requests per level, whatever its rate.")
    max_levels: int = Field(10, ge=2, le=64, description="Most levels per search.")
    rel_tol: float = Field(
        0.15, gt=0, lt=1, description="Bisection stops when the bracket's ends are this close (relative)."
    )
    max_s: float = Field(
        30.0, gt=0, description="Wall-clock budget per search; it stops after the level running."
    )
    replicates: int = Field(
        3,
        ge=1,
        le=16,
        description="Searches per model and replica count, each with its own seed, the models taking turns: the "
        "capacity's interval is over them (what varies between runs), not one search's levels alone.",
    )
    between_run_cv_pct: float = Field(
        12.0,
        ge=0,
        le=100,
        description="The run-to-run spread of capacity (coefficient of variation, %) that searches within one run "
        "cannot see: they share the run's processes, placement and moment, so they can agree closely while the "
        "next run finds another capacity. It is added to the interval as a known variance component (nested "
        "random effects: runs over searches). Measure it on your machine with `benchmarks/verdict_bench.py "
        "--only capacity` (it prints the estimate); 0 leaves the interval to the searches alone. Paired "
        "comparisons within a run (capacity_vs_baseline) do not use it: the run's shift cancels in them.",
    )
    max_inflight: int = Field(
        64,
        ge=1,
        description="Over-saturation: a level stops sending once this many requests are in flight (the queue "
        "only grows from there); the requests not sent count as missed.",
    )

    @model_validator(mode="after")
    def _range(self) -> CapacityConfig:
        if self.start_rps and self.max_rps < self.start_rps:
            raise ValueError(f"max_rps ({self.max_rps}) < start_rps ({self.start_rps})")
        return self


class ValidationConfig(Section):
    requests: int = Field(48, ge=1, description="Measured requests per model and load level.")
    warmup_requests: int = Field(4, ge=0, description="Requests per model and level sent before measuring.")
    concurrency: list[int] = Field(
        [1, 4, 16], min_length=1, description="Closed-loop levels: requests kept in flight per model."
    )
    request_rate: float | None = Field(
        None, gt=0, description="Also run an open-loop level with Poisson arrivals at this many requests/s."
    )
    clients: int = Field(2, ge=1, le=64, description="Load-generator actors (spread over the cluster).")
    rounds: int = Field(
        8,
        ge=1,
        le=64,
        description="Each level's requests are split into up to this many rounds; in every round each model "
        "takes its turn in a fresh random order (seeded), so no model always gets the first minutes.",
    )
    max_rounds: int = Field(
        24,
        ge=1,
        le=256,
        description="Round budget of the first (headline) level: while a candidate's serving ratio interval "
        "straddles its margin (targets.serving_regression_pct_max), `look_rounds` more rounds are run, up to "
        "this many in all; alpha is spent over it, so looking again does not raise the error rate.",
    )
    look_rounds: int = Field(4, ge=1, le=64, description="Rounds added at each further look.")
    max_extra_s: float = Field(
        120.0, gt=0, description="Time budget of the headline level's extra rounds, in seconds."
    )
    aa_control: bool = Field(
        False,
        description="Also serve the baseline's checkpoint as `baseline-aa`, an A/A control: an informative "
        "candidate measured in the same rounds, whose serving ratios against the baseline should come out "
        "equivalent or inconclusive; a firm better or worse says the comparison is miscalibrated here.",
    )
    prompt_tokens: int = Field(32, ge=1, description="Prompt length, cut from held-out text.")
    max_tokens: int = Field(64, ge=1, description="Tokens generated per request.")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Sampling temperature (0 = greedy).")
    api: Literal["completions", "chat"] = Field(
        "completions",
        description="Which OpenAI API the load generator drives: completions (each prompt as `prompt`) or chat "
        "(each prompt as one user message, through the model's chat template: leave room in model.block_size for the "
        "template's wrapping, about 20 tokens with the default one).",
    )
    top_k: int | None = Field(50, ge=1, description="Sample from the k most likely tokens.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    timeout_s: float = Field(30.0, gt=0, description="Per-request timeout.")
    inprocess_reference: bool = Field(
        True, description="Generate the same prompts in-process (no Serve) to measure Serve + HTTP overhead."
    )
    replica_sweep: list[int] = Field(
        [1, 2], description="num_replicas values measured at saturation (empty: no scaling sweep)."
    )
    scaling_concurrency: int = Field(32, ge=1, description="Requests in flight during the replica sweep.")
    scaling_requests: int = Field(96, ge=1, description="Measured requests per replica count.")
    capacity: CapacityConfig = Field(
        default_factory=CapacityConfig,
        description="The capacity search: the highest request rate whose latency stays within the SLO.",
    )
    workload: WorkloadConfig | None = Field(
        None, description="Request mix (default: every request prompt_tokens long, asking max_tokens)."
    )

    @field_validator("concurrency", mode="before")
    @classmethod
    def _one_level(cls, v):
        return [v] if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("concurrency", "replica_sweep")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError(f"every value must be >= 1, got {v}")
        return v
