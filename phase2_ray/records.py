"""The records that cross Ray or land in report.json, one shape each: what a training actor is asked to do and
what it returns, what a load client measures per request, and a replica's own account of itself.

Dataclasses, so they pickle through the object store as they are and a misspelt field fails where it is made,
not later as a silently missing key."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

STAGE_NAMES = {"baseline": "2a", "optimized": "2b"}


@dataclass
class Stage:
    """One row of report.json's `stages`: epoch seconds, status running / ok / failed / skipped / interrupted."""

    name: str
    variant: str | None
    status: str = "running"
    start: float = 0.0
    end: float | None = None
    detail: str = ""
    traceback: str | None = None
    """A failed stage's whole remote traceback (a user's converter that raised: its frames), colour codes removed."""


@dataclass(frozen=True)
class TrainJob:
    """One training run to do: a variant's stack at one seed, trained with the others (concurrent) or alone."""

    variant: str
    seed: int
    phase: str  # "concurrent" or "isolated"
    primary: bool
    """The run whose metrics and checkpoint stand for the variant (first seed, main isolation mode)."""

    @property
    def key(self) -> str:
        """Names the run in the state store and the run directory's resume/ folder."""
        return f"{self.variant}:seed{self.seed}:{self.phase}"

    def stage_name(self) -> str:
        if self.primary:
            return STAGE_NAMES.get(self.variant, f"train:{self.variant}")
        return f"train:{self.variant}:seed{self.seed}" + (":isolated" if self.phase == "isolated" else "")


@dataclass(kw_only=True)
class TrainResult:
    """One training run, in one record: the training loop's part is filled by core.train.train, where and how it
    ran by the training actor (dataclasses.replace) before it crosses Ray to the driver, through the object store,
    so it outlives the actor. report.json's `training` section is summarized from it."""

    # The training loop's (core.train.train)
    params: int
    steps: int
    tokens: int
    status: str  # "ok" or "diverged"
    error: str | None
    losses: list[float]
    step_times: list[float]
    val_curve: list[tuple[int, float]]
    applied: list[dict[str, Any]]
    """Each converter that ran: name, args, hooks (core.converters.ConverterStack.applied)."""
    train_s: float
    data_order_sha256: str
    """Hash of the batch schedule: equal across variants means the same data in the same order."""
    resumed_from_step: int | None = None
    """The step this run continued from (a training state saved by an earlier attempt), or None."""
    val_windows: list[float] | None = None
    """The final model's loss on each val window, in a fixed order shared by every variant (pairs by window)."""
    # The run's (training/actors.py)
    variant: str = ""
    seed: int = 0
    start: float = 0.0
    end: float = 0.0
    placement: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    """The model's shape (core.specs.GPTConfig's fields)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The optimization stack that ran (OptimizationSettings as a dict: converters with their sources, and the
    calibration delay): `auto`'s choice, when it chose."""
    auto: dict[str, Any] | None = None
    start_barrier_wait_s: float = 0.0
    peak_flops: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    gpu: str | None = None
    cuda_max_allocated_mb: float | None = None
    checkpoint: dict[str, bytes] | None = None
    """Checkpoint files, for the primary run of a variant when they travel through the object store."""
    checkpoint_uri: str | None = None
    phase: str = "concurrent"
    restarts: int = 0
    peak_memory: dict[str, Any] | None = None
    """{"bytes", "method"}: peak tensor memory of one steady training step (core.memory), primary runs only."""

    def to_dict(self) -> dict[str, Any]:
        """The report's view: every field but the checkpoint bytes."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "checkpoint"}


@dataclass
class RequestRecord:
    """One request as the client timed it. The fields' order is requests.csv's column order."""

    variant: str
    index: int
    level: str = ""
    """The load level it was sent at (c1, poisson50, replicas2, capacity:r1:optimized:s0:3, ...)."""
    round: int | None = None
    """The interleaved round of its level (the models take turns round by round); None outside rounds."""
    warmup: bool = False
    """True for a warm-up request (negative index), which the summaries leave out; False for a measured one."""
    ok: bool = False
    status: int | None = None
    error_type: str | None = None
    """None when ok; else http_NNN, stream_error, truncated, token_count_mismatch, empty, timeout,
    connection, bad_response or not_sent (a capacity level stopped at over-saturation)."""
    error: str | None = None
    start: float = 0.0
    """Epoch seconds when the request was actually sent."""
    end: float = 0.0
    """Epoch seconds when the client was done with the request (ok or not)."""
    ttft_ms: float | None = None
    """From the scheduled arrival (open loop) or the send (closed loop) to the first arrival carrying a token."""
    e2e_ms: float | None = None
    """From the same origin as ttft_ms to the arrival of `data: [DONE]`; set only when ok."""
    output_tokens: int = 0
    """The server's `usage.completion_tokens` when its stream carried usage; else the token events received (one
    SSE event with a non-empty `choices` is one token)."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    """`usage.completion_tokens` from the server's closing usage chunk, or None when none came."""
    scheduled: float = 0.0
    """Epoch seconds of the scheduled arrival (open loop); equals `start` in closed loop."""
    queue_ms: float = 0.0
    """Actual send time minus scheduled arrival: time spent waiting for a slot (0.0 in closed loop)."""
    send_lag_ms: float = 0.0
    """Open loop: how late the load generator itself was for the scheduled arrival (its event loop woke up late),
    before any wait for a slot: the generator's lag, not the server's."""
    itl_ms: list[float] = field(default_factory=list)
    """Per-token inter-token latency: each arrival after the first adds k entries of gap/k for its k tokens
    (gap = time since the previous token-carrying arrival); the first arrival adds none, so
    len(itl_ms) == sum(tokens_per_write) - tokens_per_write[0] and sum(itl_ms) == first-to-last arrival time."""
    write_gap_ms: list[float] = field(default_factory=list)
    """Gap between consecutive token-carrying arrivals (len(tokens_per_write) - 1 entries)."""
    tokens_per_write: list[int] = field(default_factory=list)
    """Token events in each token-carrying arrival (received chunk of the body), the first one included."""
    text: str = ""
    token_events: int | None = None
    """Token-carrying events received, when the server sent usage (output_tokens is then usage's count, and
    itl_ms spreads over the events); None when output_tokens counts the events themselves."""


@dataclass
class ReplicaStats:
    """One Serve replica's account of itself: its memory (RSS now and peak, USS) and each model's own bytes."""

    replica_id: str
    pid: int
    node_id: str
    rss_mb: float
    uss_mb: float
    peak_rss_mb: float
    threads: int
    device: str
    checkpoint_sources: dict[str, str]
    cuda_max_allocated_mb: float | None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
