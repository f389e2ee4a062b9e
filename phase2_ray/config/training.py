"""The `training` section (the loop, with one sub-section per other concern), `speed_trial` and the
variants' optimization stacks."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from phase2_ray.config.base import Section


class PlacementConfig(Section):
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


class FaultToleranceConfig(Section):
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


class MeasurementConfig(Section):
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


class AutoConfig(Section):
    """How a variant with `auto: true` chooses its stack."""

    probe_steps: int = Field(
        12, ge=4, description="Steps each candidate runs interleaved first (warm-up, compile, loss check)."
    )
    rounds: int = Field(
        12,
        ge=2,
        le=200,
        description="Timed rounds after them: in each, every candidate runs a block in a fresh seeded order; "
        "the speedup interval over rounds decides.",
    )
    block_steps: int = Field(3, ge=1, le=100, description="Timed steps per candidate per round.")
    min_gain_pct: float = Field(
        2.0,
        ge=0.0,
        description="A candidate replaces eager fp32 only when its whole speedup interval (family-wise over the "
        "candidates) is above 1 + this percentage (a noise threshold, as criterion.rs has): a smaller gain is a "
        "tie, and the simpler stack wins. At 1% fused AdamW's ~1-2% on the default model was chosen in 2 runs of "
        "10 (benchmarks/RESULTS.md, Verdict run 3).",
    )
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


class TrainingConfig(Section):
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
    progress_interval_s: float = Field(
        10.0,
        gt=0.0,
        le=3600.0,
        description="Seconds between the plain progress lines of a run whose output is not a terminal, and "
        "between the driver's saved-step lines.",
    )
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


class SpeedTrialConfig(Section):
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
        description="Independent trials (fresh models, own build and block order) at the first look, spread "
        "over the free cores: the interval accounts for the spread between them, not only between pairs.",
    )
    look_replicates: int = Field(
        4,
        ge=1,
        le=64,
        description="Replicates added at each further look, while a variant's interval straddles "
        "targets.speedup_min.",
    )
    max_replicates: int = Field(
        24,
        ge=2,
        le=256,
        description="Replicate budget per variant (the sequential design's maximum: alpha is spent over it).",
    )
    max_s: float = Field(
        600.0,
        gt=0,
        description="Time budget of the whole trial in seconds: no look starts that would end past it.",
    )
    confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1.0,
        description="Overall confidence of the speedup interval, held across all looks (alpha spending).",
    )

    @model_validator(mode="after")
    def _budget(self) -> SpeedTrialConfig:
        if self.max_replicates < self.replicates:
            raise ValueError(
                f"max_replicates={self.max_replicates} must be at least replicates={self.replicates}"
            )
        return self


class ConverterUse(Section):
    use: str = Field(
        description="A built-in converter's name (compile, fused_adamw, bf16, sdpa, int8), "
        "'package.module:Class', or 'path/file.py:Class' (absolute, or relative to the config file)."
    )
    args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments the class is built with."
    )


class VariantConfig(Section):
    converters: list[str | ConverterUse] = Field(
        default_factory=list,
        description="The optimization stack as converters, applied in order (docs/models.md: 'Write your own "
        "optimization'): a built-in's name, 'package.module:Class', 'path/file.py:Class', or {use, args}. "
        "The switches below are shorthands for the built-ins (fused_adamw, bf16 and sdpa before these, compile "
        "after).",
    )
    serve_from: str | None = Field(
        None,
        description="Not trained: serve this other variant's checkpoint through this variant's converters "
        "(serve hooks only), judged as a candidate of its own (a serving-only optimization).",
    )
    compile: bool = Field(False, description="torch.compile the model (inductor).")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode."
    )
    fused_adamw: bool = Field(False, description="AdamW fused kernel.")
    bf16: bool = Field(False, description="bfloat16 autocast in the forward pass.")
    sdpa_backend: Literal["default", "math", "flash", "efficient"] = Field(
        "default", description="Attention kernel (default lets PyTorch choose)."
    )
    delay_pct: float = Field(
        0.0,
        ge=0.0,
        le=1000.0,
        description="Calibration instrument, not an optimization: busy-wait this percentage of each training "
        "step's own time after it (a known slowdown, true ratio 1 + delay_pct/100), to place an effect where "
        "you want it and check the verdict. Counts as part of the stack (the no-op guard sees it).",
    )
    auto: bool = Field(
        False,
        description="Probe candidate stacks on this hardware and keep the fastest that matches fp32 loss "
        "(the other fields are then ignored). With `converters` listed, the candidates are those converters, "
        "each alone and all together; without, the built-ins.",
    )
    auto_compile: bool = Field(True, description="Let `auto` try torch.compile (costs a compile per try).")

    @model_validator(mode="after")
    def _served_copy(self) -> VariantConfig:
        if self.serve_from is not None:
            on = [k for k in ("compile", "fused_adamw", "bf16", "auto") if getattr(self, k)]
            on += ["sdpa_backend"] if self.sdpa_backend != "default" else []
            on += ["delay_pct"] if self.delay_pct else []
            if on:
                raise ValueError(
                    f"serve_from makes a served copy, which is not trained: {', '.join(on)} cannot apply "
                    "(train it as a variant of its own instead)"
                )
            if not self.converters:
                raise ValueError(
                    "serve_from needs converters with a serve hook (a copy without any is its source)"
                )
        return self

    def uses(self) -> list[tuple[str, dict]]:
        """(use, args) of each listed converter, in order."""
        return [(c, {}) if isinstance(c, str) else (c.use, dict(c.args)) for c in self.converters]

    def shorthands(self) -> dict[str, Any]:
        """The legacy switches, as OptimizationSettings.of takes them."""
        return {
            "compile": self.compile,
            "compile_mode": self.compile_mode,
            "fused_adamw": self.fused_adamw,
            "bf16": self.bf16,
            "sdpa_backend": self.sdpa_backend,
        }
