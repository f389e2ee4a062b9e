"""The stage sequence: data -> 2a/2b concurrent training actors -> speed trial -> 2c Serve validation -> 2d report.

Only this driver writes the run directory: on a cluster the actors' disks are not the driver's disk."""

from __future__ import annotations

import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray

from phase2_ray import preflight, resume
from phase2_ray.config import Config, ConfigError
from phase2_ray.config.redact import redacted_config
from phase2_ray.core import checkpoint as ckpt
from phase2_ray.dataprep import PreparedData, prepare_data
from phase2_ray.provenance import cluster_nodes, environment
from phase2_ray.records import Stage, TrainResult
from phase2_ray.report import MetricsOrchestrator, rewrite_report, write_run_dir
from phase2_ray.runlog import RunLog
from phase2_ray.session import connect, raise_on_sigterm, restore_sigterm, signals_held
from phase2_ray.storage import get_checkpoint
from phase2_ray.tracking import log_run

EXIT_APPROVED, EXIT_REJECTED, EXIT_STAGE_FAILED, EXIT_INCONCLUSIVE = 0, 1, 3, 4  # 2 (bad config) is the CLI's
EXIT_BY_OUTCOME = {"approved": EXIT_APPROVED, "rejected": EXIT_REJECTED, "inconclusive": EXIT_INCONCLUSIVE}


@dataclass
class RunState:
    """What the stages leave for the report; a stage that did not run leaves its part empty."""

    cfg: Config
    run_id: str
    out_dir: Path | None
    """Where training states go on an interrupt (resume/); None: nowhere (benchmarks, tests)."""
    log: RunLog
    data: PreparedData
    stages: list[Stage] = field(default_factory=list)
    training: dict[str, TrainResult] = field(default_factory=dict)
    extra_runs: list[TrainResult] = field(default_factory=list)
    trials: dict[str, list[dict]] = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    placement: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    failure: str | None = None
    interrupted: float | None = None

    def training_dicts(self) -> dict[str, dict]:
        return {v: r.to_dict() for v, r in self.training.items()}


def run_pipeline(
    cfg: Config,
    *,
    output: str | Path | None = None,
    address: str | None = None,
    log_mode: str = "text",
    resume_id: str | None = None,
) -> tuple[int, Path]:
    """Runs every stage; returns (exit code, path of report.md). Raises ConfigError before anything starts.

    With `resume_id` (phase2 run --resume), `output` is the interrupted run's directory: the run keeps its id
    and each training run continues from the state saved there."""
    log = RunLog(log_mode)
    run_id = resume_id or f"{cfg.run_name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    out_dir = Path(output) if output else Path("results") / run_id
    preflight.check_writable(out_dir)
    preflight.check_before_start(cfg, address)
    if cfg.endpoints:  # an endpoint that cannot be load-tested costs seconds now, not a whole training run
        preflight.check_endpoints(cfg, "run")
    preload = resume.load_states(out_dir) if resume_id else {}
    if resume_id and not preload:
        raise ConfigError(f"--resume {out_dir}: no saved training state under {out_dir / resume.STATES_DIR}")
    run = RunState(cfg, run_id, out_dir, log, prepare_data(cfg))  # a bad corpus is a config error, before Ray
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--output {out_dir}: cannot create it ({e.strerror})") from e
    init_sha = run.data.init.info["sha256"] if run.data.init else None
    if resume_id:
        resume.check_init(out_dir, init_sha)
    else:
        resume.write_run_files(out_dir, run_id, redacted_config(cfg.model_dump(mode="json")), init_sha)
    log.event("run.start", f"run {run_id} -> {out_dir}" + (" (resumed)" if resume_id else ""), run_id=run_id)
    log.event("data.ready", f"data: {run.data.stage.detail}")
    run.stages.append(run.data.stage)
    run.placement = {"policy": cfg.training.placement.policy}
    started = connect(cfg, address, log.text)
    previous = raise_on_sigterm()
    try:
        preflight.check_cluster(cfg)
        train_and_trial(run, preload)
        if run.failure is None or (run.failure == TRAINING_FAILED and "baseline" in run.training):
            # A variant that failed (a user's converter that raised) is its own loss: the others are still
            # served and judged, and their checkpoints kept; the run exits 3 all the same.
            _validate(run, own_cluster=started == "embedded")
    except KeyboardInterrupt:
        _mark_interrupted(run)
    finally:
        release_ray(run, started, previous)
    return _report(run, resumed=bool(resume_id))


def release_ray(run: RunState, started: str | None, previous) -> None:
    """On the way out: the environment and nodes recorded while Ray is up, then Ray stopped if this run started
    it, with SIGINT/SIGTERM held meanwhile and the SIGTERM handler restored."""
    with signals_held("stopping Ray"):
        try:
            if ray.is_initialized():
                run.environment = environment(run.cfg)
                run.placement["nodes"] = cluster_nodes()
        finally:
            if started:
                ray.shutdown()
    restore_sigterm(previous)


TRAINING_FAILED = "training stage failed"


def train_and_trial(run: RunState, preload: dict | None = None) -> None:
    """2a/2b, then the speed trial (which needs a pair of trained variants)."""
    _train(run, preload or {})
    _speed_trial(run)


def gather(run: RunState) -> dict:
    """Every stage's results, from the object store into report.json's shape, with the decision."""
    d = run.data
    return MetricsOrchestrator(
        cfg=run.cfg,
        run_id=run.run_id,
        started_at=run.log.t0,
        environment=run.environment,
        data_info={
            "files": len(d.files),
            "chars": d.chars,
            "train_tokens": len(d.train_tokens),
            "val_tokens": len(d.val_tokens),
        },
        stages=[asdict(s) for s in run.stages],
        training=run.training_dicts(),
        trials=run.trials,
        extra_runs=[r.to_dict() for r in run.extra_runs],
        validation=run.validation,
        failure=run.failure,
        placement=run.placement,
        init_from=d.init.info if d.init else None,
    ).build()


def _train(run: RunState, preload: dict) -> None:
    from phase2_ray.training.run import TrainingStage

    try:
        stage = TrainingStage(run.cfg, run.run_id, run.data, run.log, run.out_dir, preload)
        run.placement.update(stage.placement_info)
        try:
            run.training, run.extra_runs = stage.run()
        finally:
            run.stages += stage.stages
    except ConfigError:
        raise
    except Exception as e:  # an actor could not even start; report what is known
        run.stages.append(Stage("2a", "baseline", "failed", time.time(), time.time(), repr(e)))
    if len(run.training) < len(run.cfg.trained()):
        run.failure = TRAINING_FAILED


def _speed_trial(run: RunState) -> None:
    from phase2_ray.training.trial import run_speed_trial

    st = Stage("speed-trial", None, start=time.time())
    run.stages.append(st)  # listed while it runs, so an interrupt marks it
    run.trials = run_speed_trial(run.cfg, run.training, run.data, run.log, st)
    if st.status == "failed":
        run.failure = run.failure or "speed trial failed"


def _validate(run: RunState, own_cluster: bool) -> None:
    ok = {v: r for v, r in run.training.items() if r.status == "ok"}
    uris = {v: r.checkpoint_uri for v, r in ok.items() if r.checkpoint_uri}
    # The run directory keeps a copy either way (phase2 serve and phase2 report read it from there).
    servable = {v: r.checkpoint or get_checkpoint(r.checkpoint_uri) for v, r in ok.items()}
    for variant, files in servable.items():
        ckpt.save_dir(files, run.out_dir / "checkpoints" / variant)
    if not servable:
        return
    for name, e in run.cfg.endpoints.items():  # `self: VARIANT` under another name: that checkpoint again
        if not e.external and e.self_ in servable and name not in servable:
            servable[name] = servable[e.self_]
            if e.self_ in uris:
                uris[name] = uris[e.self_]
    measure(run, servable, uris, own_cluster)


def measure(run: RunState, servable: dict, uris: dict, own_cluster: bool) -> None:
    """Stage 2c on `servable` (model id -> checkpoint files) and the config's external endpoints."""
    from phase2_ray.loadtest.run import ValidationStage

    st = Stage("2c", None, start=time.time())
    run.stages.append(st)
    stage = None
    try:
        stage = ValidationStage(run.cfg, servable, run.data, run.log, run.run_id, uris)
        run.validation = stage.run(own_cluster)
        st.status = "ok"
    except KeyboardInterrupt:  # what was measured before the interrupt is reported
        run.validation = stage.out if stage and stage.out.get("records") else {}
        raise
    except Exception as e:  # the stage failed; keep what was measured and report it
        st.status, st.detail = "failed", f"{type(e).__name__}: {e}"
        run.validation = stage.out if stage and stage.out.get("records") else {}
        run.failure = "validation stage failed"
    finally:
        st.end = time.time()
    dead = (run.validation.get("endpoints") or {}).get("baseline", {}).get("failure")
    if dead:  # the reference stopped answering: nothing after it could be compared
        st.status, st.detail = "failed", dead
        run.failure = run.failure or f"the baseline endpoint failed: {dead}"


def _export_hf(run: RunState) -> dict[str, Path] | None:
    """export.hf: every trained variant's checkpoint as a Hugging Face GPT-2 directory under export/hf/; None
    when off. A variant that cannot be exported is a warning (the run's result stands without it)."""
    if not run.cfg.export.hf:
        return None
    from phase2_ray.export import export_hf

    out: dict[str, Path] = {}
    for v in run.cfg.variants:
        if (run.out_dir / "checkpoints" / v / ckpt.META).is_file():
            try:
                out[v] = export_hf(run.out_dir, run.out_dir / "export" / "hf" / v, v)
            except (OSError, ValueError) as e:
                run.log.event("export.failed", f"export of {v} failed: {e}", variant=v)
    if out:
        run.log.event("export.hf", f"exported {', '.join(out)} to {run.out_dir / 'export' / 'hf'}")
    return out


def _mark_interrupted(run: RunState) -> None:
    """Ctrl-C or SIGTERM: everything is stopped on the way out; what was measured is reported, and --resume
    continues from the saved training states (the training stage wrote them on its way out)."""
    run.interrupted = time.time()
    run.failure = "interrupted (SIGINT/SIGTERM): INCOMPLETE"
    run.log.event("run.interrupted", "interrupted: stopping actors and Serve, writing a partial report")
    running = [s for s in run.stages if s.status == "running"]
    for s in running:
        s.status, s.end, s.detail = "interrupted", run.interrupted, "interrupted"
    if not running and len(run.training) < len(run.cfg.trained()):
        run.stages.append(
            Stage("2a/2b", None, "interrupted", run.interrupted, run.interrupted, "interrupted")
        )


def _report(run: RunState, resumed: bool) -> tuple[int, Path]:
    """2d: the metrics gathered into report.json, the decision, and the run directory written."""
    st = Stage("2d", None, start=time.time())
    run.stages.append(st)
    report = gather(run)
    st.status, st.end = "ok", time.time()
    report["stages"][-1].update(status=st.status, end=st.end)
    report.update(
        finished_at=st.end, wall_s=st.end - run.log.t0, incomplete=bool(run.interrupted), resumed=resumed
    )
    exports = _export_hf(run)
    if exports is not None:
        report["exports"] = {"hf": {v: str(p) for v, p in exports.items()}}
    md_path = write_run_dir(run.out_dir, report, run.training_dicts(), run.validation)
    tracked = log_run(run.cfg, report, run.out_dir, exports or {}, run.log)
    if tracked is not None:  # after the run directory exists: its report and plots are what gets logged
        report["tracking"] = tracked
        md_path = rewrite_report(run.out_dir, report)
    if run.failure is None:
        shutil.rmtree(
            run.out_dir / resume.STATES_DIR, ignore_errors=True
        )  # its checkpoints are in checkpoints/
    elif run.interrupted:
        run.log.event("run.resume_hint", f"resume with: phase2 run --resume {run.out_dir}")
    dec = report["decision"]
    run.log.event(
        "run.decision",
        f"2d: decision {dec['outcome'].upper()} in {report['wall_s']:.1f}s",
        approved=dec["approved"],
        outcome=dec["outcome"],
    )
    if run.failure:
        return EXIT_STAGE_FAILED, md_path
    return EXIT_BY_OUTCOME[dec["outcome"]], md_path
