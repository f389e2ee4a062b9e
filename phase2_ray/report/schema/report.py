"""report.json, the product's contract: the top-level model, its version, and what a run directory adds."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from phase2_ray.report.schema.common import Json, Section
from phase2_ray.report.schema.decision import Decision
from phase2_ray.report.schema.inference import ModelInference
from phase2_ray.report.schema.serving import Serving
from phase2_ray.report.schema.training import Comparison, TrainingSummary

SCHEMA_VERSION = "1.4"
"""Since 1.4 the models in this package are the contract: `phase2 schema` prints their JSON Schema, every report is
checked against them as it is written, and `phase2 report` / `phase2 compare` read 1.3 through a migration
(migrate.py) and refuse anything older in one line.
1.4: OpenAI-compatible endpoints as baseline or candidate (`phase2 validate`, config.endpoints):
serving.endpoints.<model> = {kind: self | external, url, model, api, tokenizer, api_key_env (the variable's name,
never the key), failure, tokens: {requests, with_usage, output_tokens_from, prompt_tokens_usage_mean, tokenizer,
mismatched, mismatch_rate, mean_abs_diff}}; an `endpoint_available` gate for an endpoint that stopped answering; a
phase2 validate report has no training, comparison or speed trial; request records carry `token_events` (output_tokens
is usage.completion_tokens when the server sent usage). Reports of 1.3 render and compare unchanged.
1.3: optimization stacks as converters: training.<v>.settings is {converters: [{name, use, args, hooks,
changes_numerics, source}], delay_pct}, training.<v>.optimizations the list of converters that ran, training.<v>.stack
one line; training.<v>.peak_memory and comparison.<v>.training_memory (with an optional training_memory_ratio gate);
comparison.<v>.changes_numerics; serving.copies (served copies: serve_from and the int8 copy); a failed stage's
traceback. Reports of 1.2 render and compare (their switches read as the built-in converters).
1.2: decision.outcome (approved | rejected | inconclusive), decision.candidates, each gate's interval (low,
high), rule, verdict and outcome; a sequential speed trial (replicates carry their `look`; speed_trial.max_replicates
and confidence; speedup.sequential and mde_ratio); the replica's memory as one gate (replica_peak_memory_mb).
1.1: the speedup comes from the paired speed trial (comparison.<v>.speed_trial); training tokens/s from the
median step; serving.vs_baseline and serving.schedule; request records with warm-ups, rounds and write sizes.
Reports of 1.0 still render (`phase2 report`): figures they lack show as n/a."""


class Stage(Section):
    name: str = Field(description="data, 2a/2b, trial, 2c, 2d")
    variant: str | None = Field(None, description="the variant it ran for (None: the whole run)")
    status: Literal["ok", "failed", "interrupted", "skipped", "running"] = Field(description="how it ended")
    start: float = Field(description="Unix time")
    end: float | None = Field(None, description="Unix time (None: still running when the report was written)")
    detail: str = Field("", description="one line on what it did or why it failed")
    traceback: str | None = Field(None, description="a failed stage's whole (remote) traceback")


class DataInfo(Section):
    files: int | None = None
    chars: int | None = None
    train_tokens: int | None = None
    val_tokens: int | None = None


class InitFrom(Section):
    path: str
    kind: str = Field(description="hf (a Hugging Face directory) or phase2 (a run's checkpoint)")
    model: Json = Field(description="the shape read from the checkpoint")
    sha256: dict[str, str] = Field(description="file name -> sha256 of each file read")
    positions_used: str | None = None


class Node(Section):
    node_id: str
    address: str
    is_head: bool
    resources: dict[str, float]


class Placement(Section):
    """Where every actor ran, as each recorded it."""

    policy: str | None = None
    placement_group: str | None = None
    strategy: str | None = None
    nodes: list[Node] = []
    training: dict[str, str] = Field({}, description="variant -> node id")
    training_distinct_nodes: int = 0
    replicas: list[str] = []
    sweep_replicas: dict[str, list[str]] = {}
    load_clients: list[str] = []


class TrackedModel(Section):
    variant: str
    model_id: str
    name: str


class Tracking(Section):
    """MLflow: where the run was logged (the URI without credentials), or why it was not."""

    backend: str
    uri: str
    uri_from: str
    experiment: str
    status: str
    detail: str | None = None
    run_id: str | None = None
    experiment_id: str | None = None
    models: list[TrackedModel] | None = None
    seconds: float | None = None


class Exports(Section):
    hf: dict[str, str] = Field(description="variant -> the exported Hugging Face directory")


class Report(Section):
    """report.json. Every ratio is recomputable from the figures beside it; every gate names its interval."""

    schema_version: Literal["1.4"] = SCHEMA_VERSION
    run_id: str = Field(
        description="the run's id: <config name>-<UTC time>-<6 hex>, also the Ray job's and the MLflow run's name"
    )
    started_at: float = Field(description="Unix time the run started")
    finished_at: float | None = Field(
        None, description="Unix time 2d finished (None: the run did not reach it)"
    )
    wall_s: float | None = Field(None, description="seconds from start to the report")
    environment: dict[str, Any] = Field(
        description="versions, CPU/GPU, threads, seeds, git commit, Ray resources"
    )
    config: Json = Field(description="the resolved config, credentials removed (docs/configuration.md)")
    data: DataInfo | None = Field(None, description="the corpus read and the tokens it gave")
    init_from: InitFrom | None = Field(
        None, description="model.init_from: the checkpoint the weights came from (None: a seeded init)"
    )
    stages: list[Stage] = Field(description="each stage in order with its status and times")
    training: dict[str, TrainingSummary] = Field(description="variant -> its training run")
    inference: dict[str, ModelInference] = Field(description="served model -> its requests")
    serving: Serving = Field(
        description="the paired serving comparison, the schedule, capacity, scaling, served copies, endpoints"
    )
    comparison: dict[str, Comparison] = Field(description="variant -> against the baseline")
    placement: Placement | None = Field(None, description="where every actor ran")
    failure: str | None = Field(None, description="the first stage failure in one line (None: none failed)")
    decision: Decision = Field(description="the gates, each candidate's outcome and the run's")
    incomplete: bool | None = Field(None, description="interrupted: figures cover what ran")
    resumed: bool | None = None
    exports: Exports | None = Field(
        None, description="Hugging Face exports written at the end of the run (export.hf)"
    )
    tracking: Tracking | None = Field(None, description="MLflow: where the run was logged, or why not")


class Evidence(Report):
    """report.json while it is being built, before its decision: what the gates read, typed. Every section may
    still be empty (a gate over what is missing fails as not measured)."""

    schema_version: str = SCHEMA_VERSION
    run_id: str = ""
    started_at: float = 0.0
    environment: dict[str, Any] = {}
    config: Json = {}
    stages: list[Stage] = []
    training: dict[str, TrainingSummary] = {}
    inference: dict[str, ModelInference] = {}
    serving: Serving = Serving()
    comparison: dict[str, Comparison] = {}
    decision: Decision | None = None
