"""report.json's `training` (one summary per variant) and `comparison` (each variant against the baseline)."""

from __future__ import annotations

from pydantic import Field

from phase2_ray.report.schema.common import Json, Percentiles, RatioCI, Section


class Mfu(Section):
    value: float | None = Field(None, description="achieved / peak FLOP/s (fraction)")
    flops_per_token: float
    achieved_flops: float | None = None
    peak_flops: float | None = None
    peak_dtype: str | None = None
    peak_from: str | None = None
    peaks_measured: dict[str, float] = {}
    peak_basis: str = ""
    formula: str = ""


class ConverterSource(Section):
    kind: str = Field(description="builtin / module / file")
    package: str | None = None
    version: str | None = None
    path: str | None = None
    sha256: str | None = None
    relpath: str | None = None


class ConverterSpec(Section):
    """One converter of an optimization stack, as resolved (what ran, from where)."""

    name: str
    use: str = Field(description="the built-in's name, `pkg.mod:Class` or `file.py:Class`")
    args: Json = {}
    hooks: list[str] = []
    changes_numerics: bool = True
    source: ConverterSource | None = None


class AppliedConverter(Section):
    """A converter that ran in the training actor, with the hooks it used."""

    name: str
    args: Json = {}
    hooks: list[str] = []


class Settings(Section):
    converters: list[ConverterSpec] = []
    delay_pct: float = Field(
        0.0, description="a placed slowdown (calibration): share of each step busy-waited"
    )


class PeakMemory(Section):
    bytes: int | None = None
    method: str | None = None
    error: str | None = Field(None, description="why the figure is missing: the memory probe raised this")


class AutoCandidate(Section):
    name: str
    settings: Settings
    median_step_ms: float | None = None
    first_step_s: float | None = None
    mean_loss: float | None = None
    loss_delta_pct: float | None = None
    accepted: bool
    block_s: list[float] = []
    speedup: float | None = Field(None, description="reference / candidate block time, paired over rounds")
    ci_low: float | None = None
    ci_high: float | None = None
    faster: bool = Field(False, description="the whole interval above 1 + min_gain_pct")


class AutoProbe(Section):
    """`variants.<v>.auto`: the probe that chose the stack, with every candidate's evidence."""

    chosen: str
    probe_s: float
    steps: int
    rounds: int
    block_steps: int
    tolerance_pct: float
    min_gain_pct: float
    candidate_confidence: float | None = Field(
        None, description="each candidate's interval level: 95% family-wise over the candidates (Bonferroni)"
    )
    candidates: list[AutoCandidate]


class CoreRotation(Section):
    slots: list[list[int]]
    index: int
    period_s: float
    switches: int
    seconds_on: dict[str, float]


class ActorPlacement(Section):
    node_id: str
    hostname: str
    pid: int
    torch_threads: int
    assigned_resources: dict[str, float] = {}
    cpu_affinity: list[int] | None = None
    core_rotation: CoreRotation | None = None


class Repeat(Section):
    seed: int
    phase: str
    status: str
    val_loss: float | None = None
    step_ms_p50: float | None = None
    tokens_per_s: float | None = None
    train_s: float | None = None


class TrainingSummary(Section):
    """One variant's training run (2a/2b): what ran, how fast, to what loss, where."""

    status: str = Field(description="ok / failed / interrupted")
    error: str | None = Field(None, description="the failure in one line")
    params: int | None = Field(None, description="trainable parameters")
    steps: int | None = Field(None, description="optimizer steps taken")
    tokens: int | None = Field(None, description="tokens trained on")
    seed: int | None = Field(None, description="the training seed (the same for every variant)")
    phase: str | None = Field(None, description="concurrent (2a/2b side by side) or isolated")
    train_s: float | None = Field(None, description="seconds in the training loop")
    stage_s: float | None = Field(None, description="seconds the actor's stage took, start-up included")
    work_s: float | None = None
    work_basis: str | None = None
    stage_tokens_per_s: float | None = None
    tokens_per_s: float | None = Field(None, description="tokens per step / median steady step time")
    tokens_per_s_basis: str | None = None
    tokens_per_s_mean: float | None = None
    steady_s: float | None = None
    warmup_s: float | None = None
    compile_warmup_s: float | None = None
    step_ms: Percentiles | None = Field(
        None, description="step times of the steady steps (after measurement.skip_steps)"
    )
    mfu: Mfu | None = Field(
        None, description="model FLOPs utilization against the peak measured on this machine"
    )
    initial_loss: float | None = None
    final_loss: float | None = None
    initial_val_loss: float | None = None
    val_loss: float | None = Field(None, description="the final model's validation loss")
    loss_curve: list[list[float]] = Field([], description="[step, loss] pairs")
    val_curve: list[list[float]] = Field([], description="[step, val loss] pairs")
    val_windows: list[float] | None = Field(None, description="the final model's val loss per window")
    optimizations: list[AppliedConverter] = []
    settings: Settings | None = Field(
        None, description="the optimization stack as configured (converters, delay_pct)"
    )
    stack: str | None = Field(None, description="the stack in one line, e.g. 'eager fp32'")
    peak_memory: PeakMemory | None = Field(None, description="tensor bytes of one steady step")
    auto: AutoProbe | None = Field(None, description="auto's probe (None: the stack was not chosen by auto)")
    start_barrier_wait_s: float | None = None
    placement: ActorPlacement | None = Field(
        None, description="the node, process, threads and cores it ran on"
    )
    device: str | None = None
    data_order_sha256: str | None = Field(
        None, description="hash of the batches' order: equal across variants means the same data order"
    )
    checkpoint_uri: str | None = None
    restarts: int = Field(0, description="actor restarts after a fault")
    resumed_from_step: int | None = None
    cuda_max_allocated_mb: float | None = None
    repeats: list[Repeat] = []
    start: float | None = None
    end: float | None = None


class Sequential(Section):
    """The sequential trial's looks: each look's interval spends part of the overall error rate."""

    looks: int
    replicates_at_look: list[int]
    max_replicates: int
    overall_confidence: float
    look_confidence: float
    spending: str


class Speedup(RatioCI):
    """The headline speedup: baseline / variant step time from the paired speed trial."""

    replicates: int = 0
    pairs: int | None = None
    replicate_ratios: list[float] | None = None
    replicate_log_sd: float | None = None
    pair_log_sd: float | None = None
    mde_ratio: float | None = Field(None, description="the smallest effect the final interval could resolve")
    sequential: Sequential | None = None


class TrialPair(Section):
    index: int
    order: str = Field(description="AB or BA within an ABBA / BAAB block")
    a_s: float = Field(description="the baseline stack's timed block (s)")
    b_s: float = Field(description="the variant stack's timed block (s)")


class TrialReplicate(Section):
    replicate: int
    seed: int
    pid: int
    node_id: str
    build_order: str
    warmup_s: dict[str, float]
    steps_per_stack: int
    losses_equal: bool
    cores: list[int] | None = None
    look: int = 1
    pairs: list[TrialPair]


class SpeedTrial(Section):
    replicates: list[TrialReplicate]
    max_replicates: int | None = None
    confidence: float | None = None


class Concurrent(Section):
    """The concurrent training runs' own figures (shown; the speed trial decides)."""

    step_time_ratio: RatioCI
    tokens_per_s_ratio: float | None = None
    mfu_ratio: float | None = None
    work_time_ratio: float | None = None
    basis: str = ""


class TrainingMemory(Section):
    baseline_bytes: int | None = None
    variant_bytes: int | None = None
    ratio: float | None = None
    method: str | None = None
    basis: str = ""


class Comparison(Section):
    """One variant against the baseline: speed (paired trial), memory, convergence."""

    vs: str = "baseline"
    speedup: Speedup = Field(
        description="baseline / variant step time from the paired speed trial: the figure the speedup gate judges"
    )
    speedup_basis: str = ""
    noop: bool = Field(False, description="the variant runs the baseline's own stack: no speedup to claim")
    noop_reason: str | None = None
    speed_trial: SpeedTrial | None = Field(
        None, description="every replicate's timed pairs (the data behind `speedup`)"
    )
    concurrent: Concurrent | None = Field(
        None,
        description="the concurrent runs' own ratios (shown, not judged: both stacks shared the machine)",
    )
    same_data_order: bool | None = Field(
        None, description="both variants saw the same batches in the same order"
    )
    training_memory: TrainingMemory | None = Field(
        None, description="variant / baseline peak training memory"
    )
    changes_numerics: bool = Field(
        True, description="False: the stack is declared bit-exact and its losses were identical"
    )
    changes_numerics_note: str | None = Field(
        None, description="set when the stack declares changes_numerics = False but its losses differ"
    )
    val_loss_delta_pct: float | None = Field(
        None, description="(variant / baseline - 1) x 100 of the final val loss"
    )
    val_loss_seeds: int | None = None
    val_loss_change_pct: float | None = None
    val_loss_change_ci: list[float] | None = Field(
        None, description="the paired interval of that change over val windows (percent)"
    )
    val_loss_change_basis: str | None = None
    val_loss_tolerance_pct: float | None = Field(None, description="the convergence gate's margin")
    val_loss_tolerance_basis: str | None = None
    isolated_speedup: RatioCI | None = None
    concurrent_vs_isolated_pct: float | None = None
