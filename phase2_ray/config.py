"""One typed config tree, loaded from YAML (safe_load only) with dotted `--set` overrides.

Every mistake is reported with its dotted path and what is allowed, before anything starts."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

VARIANT_NAME = r"^[a-z][a-z0-9_-]{0,31}$"


class _Loader(yaml.SafeLoader):
    """safe_load that also reads `3e-4` as a float (YAML 1.1 wants `3.0e-4`; people write the former)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """yaml.safe_load semantics (no object construction), with exponent floats."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class ConfigError(ValueError):
    """A config file, override or value that cannot run; the message names the field and what is allowed."""


class _Section(BaseModel):
    # Unknown keys are typos until proven otherwise; strict types stop "10" silently becoming 10.
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


class RayConfig(_Section):
    dashboard: bool = Field(True, description="Start the Ray dashboard with an embedded local Ray.")
    dashboard_host: str = Field(
        "127.0.0.1", description="Dashboard bind address; anything but loopback exposes it."
    )
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of an embedded local Ray (default: all cores)."
    )


class StorageConfig(_Section):
    uri: str | None = Field(
        None,
        pattern=r"^(file|s3|gs)://\S+$",
        description="Where training writes checkpoints and Serve replicas read them (file:///path, "
        "s3://bucket/prefix, gs://bucket/prefix), for checkpoints too large for Ray's object store; unset: "
        "they travel through the object store (no shared filesystem needed either way).",
    )


class DataConfig(_Section):
    paths: list[str] = Field(
        default_factory=list,
        description="Files, folders or globs of UTF-8 text; empty = the Python standard library's source.",
    )
    max_chars: int = Field(2_000_000, ge=10_000, le=500_000_000, description="Characters of text to read.")
    val_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Share of the text held out for validation loss."
    )
    vocab_size: int = Field(
        2048, ge=300, le=65536, description="BPE vocabulary size (256 byte tokens + merges)."
    )


class ModelConfig(_Section):
    block_size: int = Field(128, ge=8, le=8192, description="Context length in tokens.")
    n_layer: int = Field(2, ge=1, le=64, description="Transformer blocks.")
    n_head: int = Field(4, ge=1, le=64, description="Attention heads; must divide d_model.")
    d_model: int = Field(48, ge=8, le=8192, description="Residual stream width.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability.")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        return self


class PlacementConfig(_Section):
    """Where the training actors run and on which cores."""

    cpus_per_actor: int = Field(1, ge=1, description="CPUs (and torch threads) per training actor.")
    gpus_per_actor: float = Field(0, ge=0, description="GPUs per training actor.")
    pin_cpus: bool = Field(True, description="Give concurrent actors disjoint cores (affinity) on one node.")
    policy: Literal["pack", "spread"] = Field(
        "pack",
        description="Where the concurrent variants train: pack = as few nodes as possible (a PACK placement "
        "group; one node: disjoint cores); spread = every variant on a different node (STRICT_SPREAD: the "
        "cluster needs a node per variant).",
    )
    timeout_s: float = Field(
        300.0,
        gt=0,
        description="How long to wait for the nodes a placement needs (an autoscaling cluster adds them "
        "meanwhile) before failing with what the cluster has.",
    )
    rotate_cores_s: float = Field(
        5.0,
        ge=0,
        description="When all concurrent actors fit the node, rotate them through the cores every N seconds "
        "(together) so no variant keeps a faster core; 0 = fixed cores.",
    )


class FaultToleranceConfig(_Section):
    """What survives a training actor's death."""

    checkpoint_every: int = Field(
        50,
        ge=0,
        description="Save the whole training state (weights, optimizer, RNG, step) every N steps to a store the "
        "driver owns (or storage.uri), so a restarted actor resumes there; 0 = off.",
    )
    max_restarts: int = Field(
        1, ge=0, le=100, description="Times Ray restarts a training actor whose process died (then resuming)."
    )


class MeasurementConfig(_Section):
    """How the training runs are measured: which steps count, alone or together, how many seeds."""

    skip_steps: int = Field(
        10,
        ge=1,
        description="First steps left out of steady-state throughput (compile, warm-up).",
    )
    isolation: Literal["concurrent", "sequential", "both"] = Field(
        "concurrent",
        description="concurrent: all variants at once on disjoint cores; sequential: one after another; "
        "both: concurrent, then each variant again alone, to show what concurrency changes.",
    )
    repeats: int = Field(
        1,
        ge=1,
        le=16,
        description="Seeds per variant (seed, seed+1, ...); >= 2 derives the val-loss tolerance from "
        "seed-to-seed variance.",
    )


class AutoConfig(_Section):
    """How a variant with `auto: true` chooses its stack."""

    probe_steps: int = Field(12, ge=4, description="Steps each candidate runs.")
    tolerance_pct: float = Field(
        1.0, gt=0, description="Keep only stacks whose probe loss is this close to fp32 eager."
    )


MOVED_TRAINING_KEYS = {
    **{k: f"placement.{k}" for k in ("cpus_per_actor", "gpus_per_actor", "pin_cpus", "rotate_cores_s")},
    "placement_timeout_s": "placement.timeout_s",
    **{k: f"fault_tolerance.{k}" for k in ("checkpoint_every", "max_restarts")},
    **{k: f"measurement.{k}" for k in ("skip_steps", "isolation", "repeats")},
    "auto_probe_steps": "auto.probe_steps",
    "auto_tolerance_pct": "auto.tolerance_pct",
}
"""Keys that moved into a sub-section of `training` (old name -> new name under training.)."""


def stored_skip_steps(config_json: dict) -> int:
    """training.measurement.skip_steps of a config stored in a run directory, whichever layout wrote it (before
    the training section had sub-sections, the key sat at its top)."""
    t = config_json["training"]
    return t["measurement"]["skip_steps"] if "measurement" in t else t["skip_steps"]


class TrainingConfig(_Section):
    """The training loop (what core.train.TrainSettings takes), and one sub-section per other concern."""

    steps: int = Field(300, ge=1, le=10_000_000, description="Optimizer steps for every variant.")
    batch_size: int = Field(8, ge=1, le=4096, description="Sequences per step.")
    lr: float = Field(3e-3, gt=0.0, le=10.0, description="Peak learning rate (AdamW).")
    min_lr: float = Field(3e-4, ge=0.0, description="Learning rate at the end of cosine decay.")
    warmup_steps: int = Field(30, ge=1, description="Linear learning-rate warm-up steps.")
    weight_decay: float = Field(0.1, ge=0.0, le=1.0, description="AdamW weight decay on matrices.")
    grad_clip: float = Field(1.0, ge=0.0, description="Gradient norm clip (0 = off).")
    eval_interval: int = Field(100, ge=0, description="Val loss every N steps (0 = only at start and end).")
    eval_windows: int = Field(64, ge=1, description="Val windows of block_size tokens per eval.")
    seed: int = Field(1337, ge=0, description="Seed of weights init and data order (shared).")
    divergence_factor: float = Field(
        10.0,
        ge=0,
        description="Stop a run as diverged when a step's loss exceeds this many times the first step's "
        "(0 = only when it becomes NaN/inf).",
    )
    log_every: int = Field(100, ge=0, description="Print a progress line every N steps (0 = off).")
    placement: PlacementConfig = Field(default_factory=PlacementConfig, description="Actors, cores, nodes.")
    fault_tolerance: FaultToleranceConfig = Field(
        default_factory=FaultToleranceConfig, description="Saved states and restarts."
    )
    measurement: MeasurementConfig = Field(
        default_factory=MeasurementConfig, description="Steady-state window, isolation, seeds."
    )
    auto: AutoConfig = Field(default_factory=AutoConfig, description="How `auto` variants choose a stack.")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        moved = [
            f"training.{k} has moved: use training.{MOVED_TRAINING_KEYS[k]}"
            for k in data
            if k in MOVED_TRAINING_KEYS
        ]
        if isinstance(data.get("placement"), str):
            moved.append(
                f"training.placement is a section now: use training.placement.policy: {data['placement']}"
            )
        if moved:
            raise ValueError("; ".join(moved))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} must not exceed lr={self.lr}")
        if self.measurement.skip_steps >= self.steps:
            raise ValueError(
                f"measurement.skip_steps={self.measurement.skip_steps} must be below steps={self.steps} "
                "so some steps remain to measure throughput"
            )
        return self


class SpeedTrialConfig(_Section):
    """How the training speedup is measured: a paired, interleaved trial (phase2_ray.core.speedtrial)."""

    pairs: int = Field(
        4,
        ge=2,
        le=1000,
        description="Pairs per replicate, half ABBA and half BAAB (each pair: two blocks of each stack).",
    )
    block_steps: int = Field(4, ge=1, le=1000, description="Training steps per timed block.")
    warmup_steps: int = Field(
        5, ge=1, le=1000, description="Untimed steps per stack first (compile, allocator, caches)."
    )
    replicates: int = Field(
        6,
        ge=2,
        le=64,
        description="Independent trials (fresh models, own build and block order), spread over the free "
        "cores: the interval accounts for the spread between them, not only between pairs.",
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence level of the speedup interval.")


class VariantConfig(_Section):
    compile: bool = Field(False, description="torch.compile the model (inductor).")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode."
    )
    fused_adamw: bool = Field(False, description="AdamW fused kernel.")
    bf16: bool = Field(False, description="bfloat16 autocast in the forward pass.")
    sdpa_backend: Literal["default", "math", "flash", "efficient"] = Field(
        "default", description="Attention kernel (default lets PyTorch choose)."
    )
    auto: bool = Field(
        False,
        description="Probe candidate stacks on this hardware and keep the fastest that matches fp32 loss "
        "(the other fields are then ignored).",
    )
    auto_compile: bool = Field(True, description="Let `auto` try torch.compile (costs a compile per try).")


class AutoscalingConfig(_Section):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas (0 scales to zero when idle).")
    max_replicas: int = Field(2, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(8.0, gt=0, description="Requests in flight per replica to aim at.")

    @model_validator(mode="after")
    def _order(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        return self


class ServeConfig(_Section):
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
    int8: bool = Field(
        True, description="Also serve an int8 weight-only copy of the optimized variant as `<variant>-int8`."
    )

    def resolved_api_key(self) -> str | None:
        return self.api_key or os.environ.get("PHASE2_API_KEY") or None


class ValidationConfig(_Section):
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
    prompt_tokens: int = Field(32, ge=1, description="Prompt length, cut from held-out text.")
    max_tokens: int = Field(64, ge=1, description="Tokens generated per request.")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Sampling temperature (0 = greedy).")
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


class TargetsConfig(_Section):
    ttft_p50_ms_max: float = Field(120.0, gt=0, description="TTFT p50 must be at most this.")
    output_tokens_per_s_min: float = Field(25.0, ge=0, description="Output throughput floor.")
    peak_memory_mb_max: float = Field(500.0, gt=0, description="Peak replica RSS ceiling.")
    success_rate_min: float = Field(1.0, ge=0, le=1, description="Share of requests that succeed.")
    speedup_min: float = Field(
        1.05,
        gt=0,
        description="Training speedup floor (paired speed trial: baseline step time / variant step time); "
        "also the noise threshold: a smaller gain is not called faster, whatever its interval.",
    )
    val_loss_delta_pct_max: float = Field(
        1.0,
        ge=0,
        description="Largest |final val loss change| vs baseline, in percent (with training.repeats >= 2 "
        "the tolerance comes from seed-to-seed variance instead).",
    )
    int8_val_loss_delta_pct_max: float = Field(
        2.0, ge=0, description="Largest val-loss increase of the int8 model over its fp32 source, in percent."
    )
    speedup_significant: bool = Field(
        True, description="Also require the speedup's confidence interval to lie above 1.0."
    )
    serving_regression_pct_max: float = Field(
        10.0,
        ge=0,
        description="A served model may be at most this much worse than the baseline model (TTFT p50, TPOT "
        "p50) before its change gate fails; judged on the ratio's interval (a regression must be shown).",
    )
    model_memory_mb_max: float = Field(
        200.0, gt=0, description="Ceiling on each served model's own memory: weights + preallocated KV cache."
    )


# One optimization alone per variant, then all together: each part's contribution to speed and loss.
ABLATION_PARTS = {
    "compile": VariantConfig(compile=True),
    "fused_adamw": VariantConfig(fused_adamw=True),
    "bf16": VariantConfig(bf16=True),
    "sdpa_math": VariantConfig(sdpa_backend="math"),
    "all": VariantConfig(compile=True, fused_adamw=True, bf16=True, sdpa_backend="math"),
}


def _default_variants() -> dict[str, VariantConfig]:
    return {
        "baseline": VariantConfig(),
        "optimized": VariantConfig(auto=True, auto_compile=False),
    }


class Config(_Section):
    run_name: str = Field("phase2", pattern=r"^[A-Za-z0-9_-]{1,40}$", description="Prefix of the run id.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Embedded Ray settings.")
    data: DataConfig = Field(default_factory=DataConfig, description="Corpus and tokenizer.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="GPT shape.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Stages 2a/2b.")
    speed_trial: SpeedTrialConfig = Field(
        default_factory=SpeedTrialConfig, description="How the training speedup is measured."
    )
    variants: dict[str, VariantConfig] = Field(
        default_factory=_default_variants,
        description="Variant name -> optimization stack; one concurrent training actor each.",
    )
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Checkpoint storage.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Stage 2c serving.")
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="Stage 2c load.")
    targets: TargetsConfig = Field(default_factory=TargetsConfig, description="Approval gates.")
    ablation: bool = Field(
        False,
        description="Replace the optimized variants with each optimization alone and all together "
        "(baseline kept), trained concurrently.",
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if self.ablation:
            self.variants = {"baseline": self.variants.get("baseline", VariantConfig()), **ABLATION_PARTS}
        bad = [v for v in self.variants if not re.match(VARIANT_NAME, v)]
        if bad:
            raise ValueError(f"variant names {bad} must match {VARIANT_NAME}")
        if "baseline" not in self.variants or len(self.variants) < 2:
            raise ValueError(
                "variants must hold 'baseline' and at least one other variant to compare "
                f"(got {sorted(self.variants)})"
            )
        v = self.validation
        if v.prompt_tokens + v.max_tokens > self.model.block_size:
            raise ValueError(
                f"validation.prompt_tokens ({v.prompt_tokens}) + validation.max_tokens "
                f"({v.max_tokens}) must fit model.block_size ({self.model.block_size})"
            )
        if self.data.vocab_size > 65536:
            raise ValueError("data.vocab_size must fit int32 token ids")
        return self

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the resolved config: equal hashes, equal settings."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[
            :16
        ]


def yaml_error(e: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what is wrong and where (its own message spans several, with a caret)."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def apply_override(raw: dict, expr: str) -> None:
    """Applies one `dotted.key=value` override in place; the value is parsed as YAML."""
    if "=" not in expr:
        raise ConfigError(f"--set {expr!r}: expected KEY=VALUE, e.g. training.steps=50")
    key, _, text = expr.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {expr!r}: empty component in key {key!r}")
    try:
        value = parse_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML ({yaml_error(e)})") from e
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {key}: {where} is a value, not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Reads YAML at `path` (or the defaults when None), applies overrides, validates the whole tree."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"config file {p}: cannot read ({e.strerror})") from e
        try:
            loaded = parse_yaml(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p}: not valid YAML ({yaml_error(e)})") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: top level must be a mapping, got {type(loaded).__name__}")
        raw = loaded
    if overrides and "variants" not in raw:
        # `--set variants.x.…` adds to the default variants instead of replacing them.
        raw["variants"] = {k: v.model_dump() for k, v in _default_variants().items()}
    for expr in overrides:
        apply_override(raw, expr)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e)) from None


def format_errors(err: ValidationError) -> str:
    """One line per problem: dotted path, what is wrong, what was given, and the allowed keys for typos."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(e["loc"][:-1])
            lines.append(f"{loc}: unknown key (allowed here: {', '.join(allowed)})")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        given = e.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"{loc}: {msg}{shown}")
    if len(lines) == 1:
        return f"invalid config: {lines[0]}"
    return "invalid config:\n  " + "\n  ".join(lines)


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:  # a free-form key such as a variant name: its value is a VariantConfig
            model = VariantConfig
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif getattr(ann, "__origin__", None) is dict:
            model = ann.__args__[1]
    return sorted(model.model_fields)
