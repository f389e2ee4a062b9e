"""The root of the config tree and its small sections: ray, storage, data, model, targets."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import Field, model_validator

from phase2_ray.config.base import Section
from phase2_ray.config.endpoints import EndpointConfig
from phase2_ray.config.serving import ServeConfig, ValidationConfig
from phase2_ray.config.training import SpeedTrialConfig, TrainingConfig, VariantConfig
from phase2_ray.core.specs import GPTConfig

VARIANT_NAME = r"^[a-z][a-z0-9_-]{0,31}$"


class RayConfig(Section):
    dashboard: bool = Field(True, description="Start the Ray dashboard with an embedded local Ray.")
    dashboard_host: str = Field(
        "127.0.0.1", description="Dashboard bind address; anything but loopback exposes it."
    )
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of an embedded local Ray (default: all cores)."
    )


class StorageConfig(Section):
    uri: str | None = Field(
        None,
        pattern=r"^(file|s3|gs)://\S+$",
        description="Where training writes checkpoints and Serve replicas read them (file:///path, "
        "s3://bucket/prefix, gs://bucket/prefix), for checkpoints too large for Ray's object store; unset: "
        "they travel through the object store (no shared filesystem needed either way).",
    )


class DataConfig(Section):
    paths: list[str] = Field(
        default_factory=list,
        description="Files, folders or globs of UTF-8 text; empty = the Python standard library's source.",
    )
    max_chars: int = Field(2_000_000, ge=10_000, le=500_000_000, description="Characters of text to read.")
    val_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Share of the text held out for validation loss."
    )
    vocab_size: int = Field(
        2048,
        ge=300,
        le=262144,
        description="BPE vocabulary size (256 byte tokens + merges); with model.init_from, the checkpoint's.",
    )


class RopeScaling(Section):
    rope_type: Literal["linear", "llama3"] = Field(
        description="transformers' rope_scaling types reproduced here: linear (positions divided by factor) or "
        "llama3 (Llama 3.1's frequency bands)."
    )
    factor: float = Field(gt=0, description="The scaling factor.")
    low_freq_factor: float | None = Field(None, gt=0, description="llama3 only.")
    high_freq_factor: float | None = Field(None, gt=0, description="llama3 only.")
    original_max_position_embeddings: int | None = Field(None, ge=1, description="llama3 only.")

    @model_validator(mode="after")
    def _llama3_complete(self) -> RopeScaling:
        llama3 = ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        if self.rope_type == "llama3":
            missing = [k for k in llama3 if getattr(self, k) is None]
            if missing:
                raise ValueError(f"rope_scaling type llama3 needs {', '.join(missing)}")
            if self.high_freq_factor <= self.low_freq_factor:
                raise ValueError("rope_scaling: high_freq_factor must exceed low_freq_factor")
        return self


LLAMA_ONLY = ("n_kv_head", "ffn_hidden", "norm_eps", "rope_theta", "rope_scaling", "qkv_bias")


def _shape(name: str, **bounds: Any) -> Any:
    """A model.* key from core.specs.GPTConfig, the one source of the model's shape (its default and meaning);
    the config adds the bounds a user's value must keep."""
    f = GPTConfig.__dataclass_fields__[name]
    return Field(f.default, description=f.metadata["doc"], **bounds)


class ModelConfig(Section):
    arch: Literal["gpt2", "llama"] = _shape("arch")
    block_size: int = _shape("block_size", ge=8, le=32768)
    n_layer: int = _shape("n_layer", ge=1, le=128)
    n_head: int = _shape("n_head", ge=1, le=128)
    d_model: int = _shape("d_model", ge=8, le=16384)
    dropout: float = _shape("dropout", ge=0.0, lt=1.0)
    bias: bool = _shape("bias")
    n_kv_head: int | None = _shape("n_kv_head", ge=1, le=128)
    ffn_hidden: int | None = _shape("ffn_hidden", ge=8, le=131072)
    norm_eps: float = _shape("norm_eps", gt=0, lt=1)
    rope_theta: float = _shape("rope_theta", gt=0)
    rope_scaling: RopeScaling | None = _shape("rope_scaling")
    qkv_bias: bool = _shape("qkv_bias")
    tie_embeddings: bool = _shape("tie_embeddings")
    init_from: str | None = Field(
        None,
        min_length=1,
        description="Start both variants from these weights instead of a seeded init: a local Hugging Face "
        "directory of GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM or MistralForCausalLM (config.json, "
        "model.safetensors or its shards, tokenizer.json) or a phase2_ray checkpoint (RUN_DIR/checkpoints/VARIANT, "
        "or RUN_DIR for its optimized one). The tokenizer and the model's shape, arch included, come from it "
        "(null for a shape key or data.vocab_size means the checkpoint's); model.block_size may be set lower "
        "(fewer positions are used).",
    )

    @model_validator(mode="after")
    def _shape(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.arch == "gpt2" and "arch" not in self.model_fields_set and self.init_from:
            return self  # the arch is the checkpoint's: checked again once resolve_config has taken it
        if self.arch == "gpt2":
            # a saved run's config.json states every default: only a value a gpt2 cannot have is a conflict
            given = [k for k in LLAMA_ONLY if getattr(self, k) != type(self).model_fields[k].default]
            if given:
                raise ValueError(f"{', '.join(given)} shape(s) arch llama only; this model is arch gpt2")
            if not self.tie_embeddings:
                raise ValueError("tie_embeddings=false: arch gpt2 always ties its LM head to the embedding")
            return self
        if self.bias:
            raise ValueError("bias=true is gpt2's (every projection); for llama use qkv_bias")
        if self.dropout:
            raise ValueError(f"dropout={self.dropout}: arch llama here has no dropout (allowed: 0)")
        kv = self.n_kv_head or self.n_head
        if self.n_head % kv:
            raise ValueError(f"n_head={self.n_head} must be a multiple of n_kv_head={kv}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError(
                f"head_dim = d_model / n_head = {self.d_model // self.n_head} must be even (rotary positions)"
            )
        return self

    def gpt_fields(self, vocab_size: int) -> dict:
        """core.specs.GPTConfig's fields: the shape and dropout, with the tokenizer's vocabulary size."""
        out = {**self.model_dump(exclude={"init_from", "rope_scaling"}), "vocab_size": vocab_size}
        out["rope_scaling"] = self.rope_scaling.model_dump(exclude_none=True) if self.rope_scaling else None
        return out


class TargetsConfig(Section):
    ttft_p50_ms_max: float = Field(120.0, gt=0, description="TTFT p50 must be at most this.")
    output_tokens_per_s_min: float = Field(25.0, ge=0, description="Output throughput floor.")
    peak_memory_mb_max: float = Field(
        500.0, gt=0, description="The Serve replica's peak RSS budget (all its models together; one gate)."
    )
    success_rate_min: float = Field(1.0, ge=0, le=1, description="Share of requests that succeed.")
    speedup_min: float = Field(
        1.05,
        gt=0,
        description="Training speedup target (paired speed trial: baseline step time / variant step time), "
        "judged on the interval: it passes when the whole interval is at or above it, fails when the whole "
        "interval is below it, and is inconclusive in between.",
    )
    val_loss_delta_pct_max: float = Field(
        1.0,
        ge=0,
        description="Largest |final val loss change| vs baseline, in percent (with training.measurement.repeats >= 2 "
        "the tolerance comes from seed-to-seed variance instead).",
    )
    training_memory_ratio_max: float | None = Field(
        None,
        gt=0,
        description="Optional: a candidate's peak training memory (tensor bytes of a steady step) over the "
        "baseline's must be at most this (1.0: no more memory; 0.8: 20% less). Unset: reported, not gated.",
    )
    int8_val_loss_delta_pct_max: float = Field(
        2.0, ge=0, description="Largest val-loss increase of the int8 model over its fp32 source, in percent."
    )
    served_val_loss_delta_pct_max: float = Field(
        2.0,
        ge=0,
        description="Largest val-loss increase of a served copy (variants.<name>.serve_from) over its source, in "
        "percent.",
    )
    serving_regression_pct_max: float = Field(
        10.0,
        ge=0,
        description="Non-inferiority margin of each served candidate against the baseline model (TTFT, TPOT, "
        "E2E p50, decode tok/s p50), in percent: a gate passes when the ratio's whole interval is within it, "
        "fails when the whole interval is beyond it, and is inconclusive in between.",
    )
    model_memory_mb_max: float = Field(
        200.0, gt=0, description="Ceiling on each served model's own memory: weights + preallocated KV cache."
    )
    capacity_rps_min: float | None = Field(
        None,
        gt=0,
        description="Capacity under the SLO (validation.capacity) at the first replica count must be at least "
        "this many requests/s (off when unset).",
    )
    capacity_vs_baseline_min: float | None = Field(
        None,
        gt=0,
        description="The searched model's capacity / the baseline model's, at the first replica count, must be "
        "at least this (off when unset; turns on validation.capacity.baseline).",
    )

    candidates: dict[str, Literal["required", "informative"]] = Field(
        default_factory=dict,
        description="Which candidates decide the run: required (its outcome counts) or informative (reported, "
        "not counted). Default: trained variants required, served copies (VARIANT-int8) informative.",
    )

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "speedup_significant" in data:
            raise ValueError(
                "targets.speedup_significant was removed: the speedup gate is judged on its interval against "
                "targets.speedup_min (pass, fail or inconclusive); delete the key"
            )
        return data


class TrackingConfig(Section):
    mlflow_uri: str | None = Field(
        None,
        min_length=1,
        description="Log the run to MLflow at this tracking URI (http://host:5000, sqlite:///mlflow.db, "
        "databricks, ...; needs pip install -e '.[mlflow]'); unset: MLFLOW_TRACKING_URI when that is set, "
        "else no tracking. A server that cannot be reached is a warning and a line in the report.",
    )
    experiment: str = Field(
        "phase2", min_length=1, max_length=200, description="MLflow experiment (created when missing)."
    )
    timeout_s: float = Field(
        10.0, gt=0, le=600, description="Longest wait for one request to the tracking server."
    )


class ExportConfig(Section):
    hf: bool = Field(
        False,
        description="At the end of the run, export every variant whose checkpoint the run saved (all trained "
        "ones, unless training or the speed trial failed) as a Hugging Face GPT-2 directory under "
        "RUN_DIR/export/hf/VARIANT (as `phase2 export --format hf` does); with MLflow tracking, an approved "
        "run's candidate models are logged as MLflow models.",
    )


def part_name(spec_name: str) -> str:
    """A converter's name as a variant name (lower case, [a-z0-9_-], at most 32 characters)."""
    s = re.sub(r"[^a-z0-9_-]+", "-", spec_name.lower()).strip("-") or "part"
    return (s if s[0].isalpha() else "c-" + s)[:32]


def ablation_parts(variants: dict[str, VariantConfig]) -> dict[str, VariantConfig]:
    """`phase2 ablate`: each optimization alone and all together, beside the baseline. The optimizations are the
    converters the config's variants list (a user's own included); a config that lists none ablates the
    built-ins."""
    from phase2_ray.config.training import ConverterUse

    listed: list = []
    for name, vc in variants.items():
        if name == "baseline" or vc.serve_from is not None or not vc.converters:
            continue
        # a variant's switches are converters too (fused_adamw, bf16, sdpa before the listed ones, compile after)
        before = [ConverterUse(use="fused_adamw")] if vc.fused_adamw else []
        before += [ConverterUse(use="bf16")] if vc.bf16 else []
        if vc.sdpa_backend != "default":
            before.append(ConverterUse(use="sdpa", args={"backend": vc.sdpa_backend}))
        after = [ConverterUse(use="compile", args={"mode": vc.compile_mode})] if vc.compile else []
        for c in [*before, *vc.converters, *after]:
            if c not in listed:
                listed.append(c)
    if not listed and any(v.serve_from for v in variants.values()):
        return {}  # only serving converters: their copies are what to measure
    if not listed:
        return {
            "compile": VariantConfig(compile=True),
            "fused_adamw": VariantConfig(fused_adamw=True),
            "bf16": VariantConfig(bf16=True),
            "sdpa_math": VariantConfig(sdpa_backend="math"),
            "all": VariantConfig(compile=True, fused_adamw=True, bf16=True, sdpa_backend="math"),
        }
    parts: dict[str, VariantConfig] = {}
    for c in listed:
        use = c if isinstance(c, str) else c.use
        base = part_name(use.rpartition(":")[2] if ":" in use else use)
        name, n = base, 2
        while name in parts or name in ("baseline", "all"):
            name, n = f"{base[:28]}-{n}", n + 1
        parts[name] = VariantConfig(converters=[c])
    if len(listed) > 1:
        parts["all"] = VariantConfig(converters=list(listed))
    return parts


def _default_variants() -> dict[str, VariantConfig]:
    return {
        "baseline": VariantConfig(),
        "optimized": VariantConfig(auto=True, auto_compile=False),
    }


class Config(Section):
    run_name: str = Field("phase2", pattern=r"^[A-Za-z0-9_-]{1,40}$", description="Prefix of the run id.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Embedded Ray settings.")
    data: DataConfig = Field(default_factory=DataConfig, description="Corpus and tokenizer.")
    model: ModelConfig = Field(
        default_factory=ModelConfig, description="Architecture (gpt2 or llama) and shape."
    )
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
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Experiment tracking.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="Exports at the end of a run.")
    endpoints: dict[str, EndpointConfig] = Field(
        default_factory=dict,
        description="OpenAI-compatible endpoints to judge: with phase2 validate, `baseline` and the candidates "
        "(no training); with phase2 run, further candidates judged against the trained baseline.",
    )
    ablation: bool = Field(
        False,
        description="Replace the optimized variants with each optimization alone and all together "
        "(baseline kept), trained concurrently.",
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if self.ablation:
            # served copies of the baseline stay: a serving-only converter is measured as its copy
            copies = {k: v for k, v in self.variants.items() if v.serve_from == "baseline"}
            self.variants = {
                "baseline": self.variants.get("baseline", VariantConfig()),
                **ablation_parts(self.variants),
                **copies,
            }
        if self.variants.get("baseline") is not None and self.variants["baseline"].serve_from is not None:
            raise ValueError("variants.baseline.serve_from: the baseline is trained (it is the reference)")
        bad = [v for v in self.variants if not re.match(VARIANT_NAME, v)]
        if bad:
            raise ValueError(f"variant names {bad} must match {VARIANT_NAME}")
        if "baseline" not in self.variants or len(self.variants) < 2:
            raise ValueError(
                "variants must hold 'baseline' and at least one other variant to compare "
                f"(got {sorted(self.variants)})"
            )
        v = self.validation
        w = v.workload
        if w and w.output_tokens and self.serves_own():
            # a prompt too long for the room its output leaves is cut (the report counts the cuts)
            o = w.output_tokens.upper
            if o >= self.model.block_size:
                raise ValueError(
                    f"validation.workload.output_tokens (up to {o}) must leave room for a prompt in "
                    f"model.block_size ({self.model.block_size})"
                )
        if self.serves_own() and v.prompt_tokens + v.max_tokens > self.model.block_size:
            raise ValueError(
                f"validation.prompt_tokens ({v.prompt_tokens}) + validation.max_tokens "
                f"({v.max_tokens}) must fit model.block_size ({self.model.block_size})"
            )
        cap, t = self.validation.capacity, self.targets
        if (t.capacity_rps_min or t.capacity_vs_baseline_min) and not cap.enabled:
            raise ValueError(
                "targets.capacity_rps_min / capacity_vs_baseline_min need validation.capacity.enabled: true"
            )
        if t.capacity_vs_baseline_min:
            cap.baseline = True
        candidates = [x for x in self.variants if x != "baseline"]
        if self.serve.int8 and "optimized" in self.variants:
            candidates.append("optimized-int8")  # the int8 copy the serving stage makes (loadtest.run)
        if self.validation.aa_control:
            candidates.append("baseline-aa")  # the A/A control (validation.aa_control)
        candidates += [e for e in self.endpoints if e != "baseline"]
        unknown = sorted(set(t.candidates) - set(candidates))
        if unknown:
            raise ValueError(
                f"targets.candidates names {unknown}, which this run does not have; its candidates are "
                f"{candidates} (the baseline is the reference, not a candidate)"
            )
        if self.data.vocab_size > 65536:
            raise ValueError("data.vocab_size must fit int32 token ids")
        return self

    def serves_own(self) -> bool:
        """Whether 2c serves models of this run (phase2 run always does; phase2 validate only `self` endpoints)."""
        base = self.endpoints.get("baseline")
        return base is None or not base.external or any(not e.external for e in self.endpoints.values())

    def trained(self) -> dict[str, VariantConfig]:
        """The variants stages 2a/2b train (all but the served copies)."""
        return {k: v for k, v in self.variants.items() if v.serve_from is None}

    def served_copies(self) -> dict[str, VariantConfig]:
        """Variants that are not trained: a trained variant's checkpoint served through their converters."""
        return {k: v for k, v in self.variants.items() if v.serve_from is not None}

    def capacity_slo(self) -> tuple[float, float]:
        """The capacity search's SLO (TTFT ms, TPOT ms): as configured, else from the Phase 1 targets."""
        cap, t = self.validation.capacity, self.targets
        tpot = cap.slo_tpot_ms or (1000.0 / t.output_tokens_per_s_min if t.output_tokens_per_s_min else 1e9)
        return cap.slo_ttft_ms or t.ttft_p50_ms_max, tpot

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the resolved config: equal hashes, equal settings."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[
            :16
        ]
