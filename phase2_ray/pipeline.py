"""The stage graph: data -> 2a/2b concurrent training actors -> 2c Serve validation -> 2d report and decision.

Only this driver writes the run directory: on a cluster the actors' disks are not the driver's disk."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
import torch
from ray import serve
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from phase2_ray import __version__, resume
from phase2_ray.config import Config, ConfigError
from phase2_ray.core import checkpoint as ckpt
from phase2_ray.core import data as corpus_data
from phase2_ray.loadplan import interleaved_schedule
from phase2_ray.report import MetricsOrchestrator, redacted_config, write_run_dir
from phase2_ray.stages.nodes import TrainingPlacement, cluster_nodes
from phase2_ray.storage import check_uri, get_checkpoint, join

EXIT_APPROVED, EXIT_REJECTED, EXIT_STAGE_FAILED = 0, 1, 3  # 2 (bad config or usage) belongs to the CLI
NAMESPACE = "phase2"
STAGE_NAMES = {"baseline": "2a", "optimized": "2b"}


@dataclass
class Stage:
    name: str
    variant: str | None
    status: str = "running"
    start: float = 0.0
    end: float | None = None
    detail: str = ""


LOG = {"mode": "text"}
"""How the driver reports progress: text (lines + progress bars), json (one JSON object a line), quiet."""


def log(msg: str, t0: float) -> None:
    if LOG["mode"] == "quiet":
        return
    if LOG["mode"] == "json":
        print(json.dumps({"t_s": round(time.time() - t0, 3), "event": msg}), flush=True)
    else:
        print(f"[phase2 {time.time() - t0:7.1f}s] {msg}", flush=True)


@dataclass
class PreparedData:
    train_tokens: torch.Tensor
    val_tokens: torch.Tensor
    tokenizer_json: str
    vocab_size: int
    prompts: list[str]
    files: list[str]
    chars: int
    stage: Stage


def prepare_data(cfg: Config) -> PreparedData:
    """Corpus, tokenizer (train split only), token ids and validation prompts. Raises ConfigError on bad input."""
    st = Stage("data", None, start=time.time())
    try:
        files = corpus_data.resolve_paths(cfg.data.paths) if cfg.data.paths else corpus_data.stdlib_files()
        corpus = corpus_data.load_corpus(files, cfg.data.max_chars, cfg.data.val_fraction)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"data.paths: {e}") from e
    tok = corpus_data.train_tokenizer(corpus.train_text, cfg.data.vocab_size)
    train_ids = corpus_data.encode(tok, corpus.train_text)
    val_ids = corpus_data.encode(tok, corpus.val_text)
    need = cfg.model.block_size + 2
    for name, ids in (("train", train_ids), ("val", val_ids)):
        if len(ids) < need:
            raise ConfigError(
                f"data: the {name} split has {len(ids)} tokens, fewer than model.block_size + 2 = {need}; "
                "give more text (data.max_chars, data.paths) or lower data.val_fraction"
            )
    prompts = validation_prompts(tok, val_ids, cfg.validation.prompt_tokens, 16)
    st.status, st.end = "ok", time.time()
    st.detail = f"{corpus.chars} chars from {len(corpus.files)} files; {len(train_ids)}+{len(val_ids)} tokens"
    return PreparedData(
        train_ids, val_ids, tok.to_str(), tok.get_vocab_size(), prompts, corpus.files, corpus.chars, st
    )


def validation_prompts(tok, val_ids: torch.Tensor, prompt_tokens: int, count: int) -> list[str]:
    """Held-out text cut into prompts; kept only if they re-encode within `prompt_tokens` tokens."""
    span = len(val_ids) - prompt_tokens
    prompts = []
    for i in range(count):
        off = span * i // count
        text = tok.decode(val_ids[off : off + prompt_tokens].tolist())
        if 0 < len(tok.encode(text).ids) <= prompt_tokens and text.strip():
            prompts.append(text)
    if not prompts:
        raise ConfigError("validation.prompt_tokens: no usable prompt could be cut from the val split")
    return prompts


def _environment(cfg: Config) -> dict:
    env = {
        "phase2_ray": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "cpu_simd_flags": _cpu_simd_flags(),
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "driver_torch_threads": torch.get_num_threads(),
        "threads_per_training_actor": cfg.training.cpus_per_actor,
        "threads_per_replica": cfg.serve.threads_per_replica,
        "config_sha256": cfg.fingerprint(),
        "seeds": {"training": cfg.training.seed, "repeats": cfg.training.repeats},
        "seed": cfg.training.seed,
        "git_commit": _git_commit(),
    }
    if ray.is_initialized():
        env["ray_cluster_resources"] = ray.cluster_resources()
        env["ray_nodes"] = sum(1 for n in ray.nodes() if n.get("Alive"))
    return env


def _cpu_simd_flags() -> list[str]:
    """The CPU's vector-unit flags (AVX*, AMX, FMA, NEON...): what decides whether bf16 or compile can pay."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return sorted(
                    f
                    for f in line.split(":", 1)[1].split()
                    if f.startswith(("avx", "amx", "fma", "asimd", "sve"))
                )
    except OSError:
        pass
    return []


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _warn_if_exposed(what: str, host: str) -> None:
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"phase2: WARNING: {what} binds {host}: reachable from other machines", file=sys.stderr)


def _connect(cfg: Config, address: str | None) -> str | None:
    """Joins RAY_ADDRESS / --address ("joined"), or starts an embedded local Ray ("embedded"); None when this
    process was connected already. Whoever connects disconnects; only an embedded cluster may be torn down."""
    if ray.is_initialized():
        return None
    target = address or os.environ.get("RAY_ADDRESS")
    # Actor output (progress bars, per-step lines) reaches the terminal only in text mode.
    kwargs: dict = {"namespace": NAMESPACE, "log_to_driver": LOG["mode"] == "text"}
    if LOG["mode"] != "text":
        kwargs["logging_level"] = logging.WARNING  # Ray's own INFO lines would break a parseable stream
    if target:
        kwargs["address"] = target
    else:
        if cfg.ray.dashboard:
            _warn_if_exposed("the Ray dashboard (ray.dashboard_host)", cfg.ray.dashboard_host)
        kwargs.update(
            include_dashboard=cfg.ray.dashboard,
            dashboard_host=cfg.ray.dashboard_host,
            num_cpus=cfg.ray.num_cpus,
        )
    ray.init(**kwargs)
    return "joined" if target else "embedded"


def _node_cores(cfg: Config) -> list[int] | None:
    """This node's cores when pinning applies (one node, pin_cpus on), else None."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if not cfg.training.pin_cpus or len(alive) != 1:
        return None
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def rotation_plan(cores: list[int] | None, per: int, n_jobs: int, period_s: float) -> list[dict] | None:
    """Per-job core rotation for jobs that all run at once, or None when they do not all fit (then the pool
    hands out fixed cores as actors start) or rotation is off."""
    if not cores or period_s <= 0 or n_jobs < 2 or n_jobs * per > len(cores):
        return None
    slots = [cores[i * per : (i + 1) * per] for i in range(n_jobs)]
    return [{"slots": slots, "index": i, "period_s": period_s} for i in range(n_jobs)]


@dataclass(frozen=True)
class TrainJob:
    variant: str
    seed: int
    phase: str  # "concurrent" or "isolated"
    primary: bool
    """The run whose metrics and checkpoint stand for the variant (first seed, main isolation mode)."""

    def stage_name(self) -> str:
        if self.primary:
            return STAGE_NAMES.get(self.variant, f"train:{self.variant}")
        return f"train:{self.variant}:seed{self.seed}" + (":isolated" if self.phase == "isolated" else "")


def plan_training(cfg: Config) -> tuple[list[TrainJob], list[TrainJob]]:
    """(jobs started together, jobs run one at a time) for the configured isolation and repeats."""
    seeds = [cfg.training.seed + r for r in range(cfg.training.repeats)]
    iso = cfg.training.isolation
    variants = list(cfg.variants)
    together, alone = [], []
    if iso in ("concurrent", "both"):
        together = [TrainJob(v, s, "concurrent", s == seeds[0]) for s in seeds for v in variants]
    if iso == "sequential":
        alone = [TrainJob(v, s, "isolated", s == seeds[0]) for s in seeds for v in variants]
    elif iso == "both":  # the isolated re-run exists to compare against; the concurrent run stays primary
        alone = [TrainJob(v, seeds[0], "isolated", False) for v in variants]
    return together, alone


def core_train_settings(cfg: Config) -> dict:
    """The training section's fields that the core loop takes (TrainSettings); the rest is placement and policy."""
    from dataclasses import fields

    from phase2_ray.core.train import TrainSettings

    return cfg.training.model_dump(include={f.name for f in fields(TrainSettings)})


def run_training(
    cfg: Config,
    run_id: str,
    d: PreparedData,
    stages: list[Stage],
    t0: float,
    placement_info: dict,
    resume_dir: Path | None = None,
    preload: dict[str, dict] | None = None,
) -> tuple[dict[str, dict], list[dict]]:
    """2a/2b: concurrent jobs start together as actors (Ray queues what does not fit), isolated jobs run one
    at a time. Returns ({variant: primary result}, [every other result, without checkpoint]).

    `preload` (saved states of an interrupted run) seeds the state store, so each run resumes where it was;
    whatever happens, the store's latest states end up in `resume_dir` for a later --resume."""
    from phase2_ray.stages.training import CorePool, StartBarrier, TrainerActor, TrainStateStore

    together, alone = plan_training(cfg)
    tc = cfg.training
    # Before any actor exists: a placement the cluster cannot give is a config error (exit 2), not a failed stage.
    placement = TrainingPlacement(
        tc.placement,
        list(cfg.variants),
        tc.repeats if together else 0,
        tc.cpus_per_actor,
        tc.gpus_per_actor,
        tc.placement_timeout_s,
    )
    placement_info.update(placement.describe())
    cores = _node_cores(cfg)
    pool = CorePool.remote(cores) if cores else None
    rotations = rotation_plan(cores, cfg.training.cpus_per_actor, len(together), cfg.training.rotate_cores_s)
    # When every concurrent run fits at once, their timed loops also start together (after any probe).
    fits = bool(cores) and len(together) * cfg.training.cpus_per_actor <= len(cores)
    barrier = StartBarrier.remote(len(together)) if fits and len(together) > 1 else None
    train_ref, val_ref = ray.put(d.train_tokens), ray.put(d.val_tokens)
    # Created (and so owned) by the driver, on the driver's node: saved training states outlive any training
    # actor's process, and the loss of any other node.
    store = (
        TrainStateStore.options(
            name=f"{run_id}:train-state",
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False
            ),
        ).remote()
        if tc.checkpoint_every
        else None
    )
    if store is not None and preload:
        ray.get([store.put.remote(k, s["step"], s["state"], s["info"]) for k, s in preload.items()])
        log(f"2a/2b: resuming {len(preload)} run(s) from saved states: {_steps_of(preload)}", t0)
    live: list = []
    base_settings = core_train_settings(cfg)
    model_cfg = {**cfg.model.model_dump(), "vocab_size": d.vocab_size}
    meta = {"run_id": run_id, "config": redacted_config(cfg.model_dump(mode="json"))}
    opts = {
        "core_pool": pool,
        "run_id": run_id,
        # Bars and per-step lines are for a person at a terminal; --quiet and --json-logs keep stdout parseable.
        "progress": LOG["mode"] == "text",
        "log_every": cfg.training.log_every if LOG["mode"] == "text" else 0,
        "auto_probe_steps": cfg.training.auto_probe_steps,
        "auto_tolerance_pct": cfg.training.auto_tolerance_pct,
        "storage_uri": join(cfg.storage.uri, run_id) if cfg.storage.uri else None,
        "state_store": store,
        "checkpoint_every": tc.checkpoint_every,
    }

    def submit(job: TrainJob, rotation: dict | None = None):
        suffix = "" if job.primary else f":seed{job.seed}:{job.phase}"
        actor = TrainerActor.options(
            name=f"{run_id}:train:{job.variant}{suffix}",
            # A dead process is restarted and its `train` call retried, which resumes from the saved state.
            max_restarts=tc.max_restarts if store else 0,
            max_task_retries=tc.max_restarts if store else 0,
            num_cpus=cfg.training.cpus_per_actor,
            num_gpus=cfg.training.gpus_per_actor,
            scheduling_strategy=placement.strategy(job.variant) if job.phase == "concurrent" else None,
        ).remote()
        live.append(actor)
        ref = actor.train.remote(
            job.variant,
            model_cfg,
            {**base_settings, "seed": job.seed},
            cfg.variants[job.variant].model_dump(),
            train_ref,
            val_ref,
            d.tokenizer_json,
            meta,
            {
                **opts,
                "rotation": rotation,
                "barrier": barrier if job.phase == "concurrent" else None,
                "keep_checkpoint": job.primary,
                "job_key": f"{job.variant}:seed{job.seed}:{job.phase}",
            },
        )
        return actor, ref

    primary: dict[str, dict] = {}
    others: list[dict] = []

    def collect(job: TrainJob, actor, ref) -> None:
        st = Stage(job.stage_name(), job.variant)
        try:
            res = ray.get(ref)
        except ray.exceptions.RayError as e:
            st.status, st.detail, st.start, st.end = "failed", _error_text(e), time.time(), time.time()
            stages.append(st)
            log(f"{st.name} {job.variant}: FAILED ({type(e).__name__})", t0)
            return
        finally:
            # Free the CPUs at once: queued actors, and later Serve replicas, need them.
            ray.kill(actor)
        st.start, st.end = res["start"], res["end"]
        st.status, st.detail = ("ok" if res["status"] == "ok" else "failed"), res["error"] or ""
        stages.append(st)
        res["phase"] = job.phase
        if job.primary:
            primary[job.variant] = res
        else:
            res.pop("checkpoint", None)
            others.append(res)
        log(
            f"{st.name} {job.variant} (seed {job.seed}, {job.phase}): {res['status']} in "
            f"{res['end'] - res['start']:.1f}s, final loss {res['losses'][-1]:.4f}",
            t0,
        )

    try:
        if together:
            how = placement.describe()["strategy"] or "Ray's scheduler, queued when the cluster is full"
            log(
                f"2a/2b: training {len(together)} runs concurrently: {', '.join(cfg.variants)} "
                f"(placement {tc.placement}: {how})",
                t0,
            )
            started = {}
            for i, job in enumerate(together):
                actor, ref = submit(job, rotations[i] if rotations else None)
                started[ref] = (job, actor)
            pending = list(started)
            last_saved: dict = {}
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=5.0)
                if not done:
                    # Progress a CI log (or --json-logs reader) can see: the last saved step of every run.
                    status = ray.get(store.status.remote()) if store else {}
                    saved = {k: s["step"] for k, s in status.items() if s["step"] is not None}
                    if saved and saved != last_saved:
                        log(
                            "2a/2b: training states saved at "
                            + ", ".join(f"{k} step {s}" for k, s in saved.items()),
                            t0,
                        )
                        last_saved = saved
                    continue
                job, actor = started[done[0]]
                collect(job, actor, done[0])
            placement.release()  # the isolated runs below are scheduled freely, one at a time
        for job in alone:
            log(f"training {job.variant} (seed {job.seed}) alone", t0)
            actor, ref = submit(job)
            collect(job, actor, ref)
    finally:
        if store is not None and resume_dir is not None:
            _export_states(store, resume_dir.parent)
        # On an interrupt some actors are still training: on a shared cluster nothing else would stop them.
        for helper in (*live, pool, barrier, store):
            if helper is not None:
                ray.kill(helper)
        placement.release()
    stages.sort(key=lambda s: (s.name != "data", s.start))
    # Config order (baseline first) for everything downstream, whatever order the actors finished in.
    return {v: primary[v] for v in cfg.variants if v in primary}, others


def run_speed_trial(
    cfg: Config, training: dict[str, dict], d: PreparedData, t0: float, st: Stage | None = None
) -> tuple[dict, Stage]:
    """The speedup measurement: paired, interleaved trials of each variant's stack (as trained, `auto`'s choice
    included) against the baseline's, replicated with fresh models over the free cores. Returns ({variant:
    [replicate results]}, its stage); `st`, when given, is the stage to fill (already listed as running, so an
    interrupt marks it)."""
    from phase2_ray.stages.training import speed_trial

    st = st or Stage("speed-trial", None, start=time.time())
    base = training.get("baseline")
    variants = {v: r["settings"] for v, r in training.items() if v != "baseline" and r["status"] == "ok"}
    if base is None or base["status"] != "ok" or not variants:
        st.status, st.end, st.detail = "skipped", time.time(), "no pair of trained variants to compare"
        return {}, st
    tc, sp = cfg.training, cfg.speed_trial
    cores = _node_cores(cfg)
    per = tc.cpus_per_actor
    slots: list[list[int] | None] = (
        [cores[i * per : (i + 1) * per] for i in range(len(cores) // per)] if cores else [None, None]
    )
    slots = slots[: sp.replicates] or [None]
    # (index, seed, A built first) per replicate: the seed shuffles the pairs' orders, reproducibly; which model
    # is built first alternates within every core set and between them, so it is balanced over the run.
    per_slot: list[list[tuple[int, int, bool]]] = [[] for _ in slots]
    for i in range(sp.replicates):
        j, m = i % len(slots), i // len(slots)
        per_slot[j].append((i, tc.seed * 1000 + i, (m + j) % 2 == 0))
    trial = {"pairs": sp.pairs, "block_steps": sp.block_steps, "warmup_steps": sp.warmup_steps}
    settings = {**core_train_settings(cfg), "seed": tc.seed}
    model_cfg = {**cfg.model.model_dump(), "vocab_size": d.vocab_size}
    log(
        f"speed trial: {', '.join(variants)} vs baseline, {sp.replicates} replicates x {sp.pairs} ABBA pairs "
        f"of {sp.block_steps}-step blocks on {len(slots)} core set(s)",
        t0,
    )
    tokens = ray.put(d.train_tokens)
    refs = [
        speed_trial.options(num_cpus=per, num_gpus=tc.gpus_per_actor).remote(
            model_cfg, settings, base["settings"], variants, tokens, trial, per_slot[i], slot
        )
        for i, slot in enumerate(slots)
    ]
    out: dict[str, list[dict]] = {v: [] for v in variants}
    try:
        for part in ray.get(refs):
            for v, reps in part.items():
                out[v] += reps
        st.status = "ok"
    except ray.exceptions.RayError as e:
        st.status, st.detail = "failed", _error_text(e)
        out = {}
    finally:
        if st.status != "ok":  # failed or interrupted: on a shared cluster nothing else would stop them
            for ref in refs:
                ray.cancel(ref, force=True)
    st.end = time.time()
    log(f"speed trial: {st.status} in {st.end - st.start:.1f}s", t0)
    return out, st


def _steps_of(states: dict[str, dict]) -> str:
    return ", ".join(f"{k} at step {s['step']}" for k, s in sorted(states.items()))


def _export_states(store, out_dir: Path) -> None:
    """The store's latest states into RUN_DIR/resume/ (read back from storage.uri where they went there)."""
    from phase2_ray.core.train import STATE_META, STATE_TENSORS

    states = ray.get(store.export.remote())
    for s in states.values():
        if "uri" in s["state"]:
            s["state"] = get_checkpoint(s["state"]["uri"], (STATE_TENSORS, STATE_META))
    resume.save_states(out_dir, states)


def run_validation(
    cfg: Config,
    checkpoints: dict[str, dict[str, bytes]],
    d: PreparedData,
    t0: float,
    own_cluster: bool,
    run_id: str = "phase2",
    uris: dict[str, str] | None = None,
) -> dict:
    """2c: the in-process reference, then every model served over HTTP at each load level, then the replica
    sweep. Returns per-request records (each tagged with its model and level), replica stats and the reference.
    Variants in `uris` reach the replicas as their storage URI, the others as bytes through the object store."""
    from tokenizers import Tokenizer

    from phase2_ray.stages import validation as val
    from phase2_ray.stages.inference import APP_NAME, build_app, model_specs, replica_stats

    v, sc = cfg.validation, cfg.serve
    int8_of = "optimized" if sc.int8 and "optimized" in checkpoints else None
    models = model_specs(checkpoints, int8_of, uris)
    sampling = dict(max_tokens=v.max_tokens, temperature=v.temperature, top_k=v.top_k, top_p=v.top_p)
    cpus = ray.cluster_resources().get("CPU", 1)
    gpus = ray.cluster_resources().get("GPU", 0)
    out: dict = {"records": [], "int8_of": int8_of, "models": list(models), "seed": cfg.training.seed}

    # Before Serve starts, so that nothing else competes for the cores while it is timed.
    tok = Tokenizer.from_str(d.tokenizer_json)
    ref_start = time.time()
    out["reference"] = ray.get(
        val.inprocess_reference.options(
            num_cpus=min(sc.cpus_per_replica, cpus), num_gpus=sc.gpus_per_replica
        ).remote(
            models,
            [tok.encode(p).ids for p in d.prompts],
            {
                "tokens": d.val_tokens,
                "offsets": corpus_data.val_offsets(
                    len(d.val_tokens), cfg.model.block_size, cfg.training.eval_windows
                ),
                "batch_size": cfg.training.batch_size,
            },
            threads=sc.threads_per_replica,
            max_batch=sc.max_batch_size,
            sampling={**sampling, "seed": cfg.training.seed},
            n=v.requests if v.inprocess_reference else 0,
            warmup=v.warmup_requests if v.inprocess_reference else 0,
        )
    )
    out["reference_s"] = time.time() - ref_start
    log(f"2c: in-process reference and val loss of {', '.join(models)} in {out['reference_s']:.1f}s", t0)

    # Access logs of every request would drown the progress lines; warnings and errors still show.
    quiet = {"log_level": "WARNING", "enable_access_log": False}
    if LOG["mode"] != "text":
        # --quiet / --json-logs promise a parseable stream: Serve's driver-side INFO lines would break it.
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    _warn_if_exposed("the Serve HTTP proxy (serve.host)", sc.host)
    serve.start(http_options={"host": sc.host, "port": sc.port}, logging_config=quiet)
    base_url = f"http://{sc.host}:{sc.port}"

    def deploy(replicas: int | None) -> None:
        n = replicas or (sc.autoscaling.min_replicas if sc.autoscaling else sc.num_replicas) or 1
        # Every replica must fit at once: shrink their logical CPU (and GPU) share if the cluster is smaller.
        app = build_app(
            checkpoints,
            sc,
            int8_of=int8_of,
            cpus_per_replica=min(sc.cpus_per_replica, cpus / n),
            gpus_per_replica=min(sc.gpus_per_replica, gpus / n),
            uris=uris,
            num_replicas=replicas,
        )
        serve.run(app, name=APP_NAME, route_prefix="/", logging_config=quiet)

    load = dict(
        warmup=v.warmup_requests,
        seed=cfg.training.seed,
        timeout_s=v.timeout_s,
        api_key=sc.resolved_api_key(),
        **sampling,
    )
    try:
        t_deploy = time.time()
        deploy(None)
        out["deploy_s"] = time.time() - t_deploy
        log(
            f"2c: serving {', '.join(models)} at {base_url}/v1/completions ({out['deploy_s']:.1f}s to deploy)",
            t0,
        )
        clients = val.start_clients(v.clients, run_id)
        out["clients"] = [
            {"name": f"{run_id}:2c:client{i}", "node_id": n}
            for i, n in enumerate(ray.get([c.node_id.remote() for c in clients]))
        ]
        levels = [(f"c{c}", c, None) for c in v.concurrency]
        if v.request_rate:
            levels.append((f"poisson{v.request_rate:g}", max(v.concurrency), v.request_rate))
        out["levels"] = [name for name, _, _ in levels]
        # One model and level at a time (concurrent load would make them measure each other), the models
        # taking turns in seeded random order, round by round (phase2_ray.loadplan).
        schedule = interleaved_schedule(
            list(models), [(name, conc) for name, conc, _ in levels], v.requests, v.rounds, cfg.training.seed
        )
        out["schedule"] = [asdict(s) for s in schedule]
        spec = {name: (conc, rate) for name, conc, rate in levels}
        done: dict[tuple[str, str], list[dict]] = {}
        for slot in schedule:
            conc, rate = spec[slot.level]
            recs = val.run_level(
                clients,
                base_url,
                slot.model,
                d.prompts,
                n=slot.requests,
                concurrency=conc,
                request_rate=rate,
                level=slot.level,
                first_index=slot.first_index,
                **{**load, "warmup": load["warmup"] if slot.round == 0 else 0},
            )
            for r in recs:
                r["level"], r["round"] = slot.level, slot.round
            out["records"] += recs
            done.setdefault((slot.model, slot.level), []).extend(recs)
        for (model, name), recs in done.items():
            measured = [r for r in recs if not r.get("warmup")]
            log(f"2c {model} {name}: {sum(r['ok'] for r in measured)}/{len(measured)} requests succeeded", t0)
        expected = sc.autoscaling.max_replicas if sc.autoscaling else sc.num_replicas
        out["replicas"] = replica_stats(expected)
        out["scaling"] = {"model": None, "runs": []}
        out["scaling_concurrency"] = v.scaling_concurrency
        if v.replica_sweep:
            target = int8_of or next(iter(checkpoints))
            out["scaling"]["model"] = target
            for n in v.replica_sweep:
                deploy(n)
                start = time.time()
                recs = val.run_level(
                    clients,
                    base_url,
                    target,
                    d.prompts,
                    n=v.scaling_requests,
                    concurrency=v.scaling_concurrency,
                    request_rate=None,
                    level=f"replicas{n}",
                    **load,
                )
                for r in recs:
                    r["level"], r["round"] = f"replicas{n}", 0
                out["records"] += recs
                stats = replica_stats(n)
                out["scaling"]["runs"].append(
                    {"replicas": n, "level": f"replicas{n}", "stats": stats, "start": start}
                )
                ok = sum(r["ok"] for r in recs)
                log(
                    f"2c {target} with {n} replica(s) at c{v.scaling_concurrency}: {ok}/{len(recs)} succeeded",
                    t0,
                )
        for c in clients:
            ray.kill(c)
        return out
    finally:
        # A cluster this run started goes down whole with ray.shutdown(); a shared one keeps running, minus Serve.
        if not own_cluster:
            serve.shutdown()


def serve_checkpoints(
    cfg: Config, run_dir: str | Path, *, address: str | None = None, block: bool = True
) -> str:
    """`phase2 serve`: serves a finished run's checkpoints until interrupted; returns the base URL.

    Raises ConfigError (exit 2) before Ray starts when RUN_DIR holds no checkpoint."""
    from phase2_ray.stages.inference import APP_NAME, build_app, checkpoints_of, model_specs

    try:
        checkpoints, int8_of = checkpoints_of(run_dir)
    except (FileNotFoundError, ckpt.ChecksumError) as e:
        raise ConfigError(f"--checkpoints: {e}") from e
    started = _connect(cfg, address)
    sc = cfg.serve
    _warn_if_exposed("the Serve HTTP proxy (serve.host)", sc.host)
    serve.start(http_options={"host": sc.host, "port": sc.port})
    serve.run(
        build_app(checkpoints, sc, int8_of=int8_of if sc.int8 else None), name=APP_NAME, route_prefix="/"
    )
    url = f"http://{sc.host}:{sc.port}"
    models = sorted(model_specs(checkpoints, int8_of if sc.int8 else None))
    print(f"serving {', '.join(models)} at {url}/v1 (OpenAI-compatible); Ctrl-C stops", flush=True)
    if not block:
        return url
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("phase2: stopping Serve", file=sys.stderr)
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
    return url


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
    t0 = time.time()
    LOG["mode"] = log_mode
    run_id = resume_id or f"{cfg.run_name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    out_dir = Path(output) if output else Path("results") / run_id
    # Everything that can be wrong is found before anything is written or started (exit 2 leaves no trace).
    _check_writable(out_dir)
    _preflight(cfg, address)
    preload = resume.load_states(out_dir) if resume_id else {}
    if resume_id and not preload:
        raise ConfigError(f"--resume {out_dir}: no saved training state under {out_dir / resume.STATES_DIR}")
    d = prepare_data(cfg)  # before Ray: a bad corpus is a config error, not a failed stage
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--output {out_dir}: cannot create it ({e.strerror})") from e
    if not resume_id:
        resume.write_run_files(out_dir, run_id, redacted_config(cfg.model_dump(mode="json")))
    log(f"run {run_id} -> {out_dir}" + (" (resumed)" if resume_id else ""), t0)
    log(f"data: {d.stage.detail}", t0)
    stages: list[Stage] = [d.stage]
    training: dict[str, dict] = {}
    trials: dict[str, list[dict]] = {}
    extra_runs: list[dict] = []
    validation: dict[str, dict] = {}
    failure = None
    env: dict = {}
    placement: dict = {"policy": cfg.training.placement}
    interrupted = None
    started = _connect(cfg, address)
    previous = _raise_on_sigterm()
    try:
        _check_resources(cfg)
        try:
            training, extra_runs = run_training(
                cfg, run_id, d, stages, t0, placement, out_dir / resume.STATES_DIR, preload
            )
        except ConfigError:
            raise
        except Exception as e:  # an actor could not even start; report what is known
            stages.append(Stage("2a", "baseline", "failed", time.time(), time.time(), repr(e)))
        if len(training) < len(cfg.variants):
            failure = "training stage failed"
        trial_stage = Stage("speed-trial", None, start=time.time())
        stages.append(trial_stage)
        trials, _ = run_speed_trial(cfg, training, d, t0, trial_stage)
        if trial_stage.status == "failed":
            failure = "speed trial failed"
        ok = {v: r for v, r in training.items() if r["status"] == "ok"}
        uris = {v: r["checkpoint_uri"] for v, r in ok.items() if r.get("checkpoint_uri")}
        # The run directory keeps a copy either way (phase2 serve and phase2 report read it from there).
        servable = {v: r["checkpoint"] or get_checkpoint(r["checkpoint_uri"]) for v, r in ok.items()}
        for variant, files in servable.items():
            ckpt.save_dir(files, out_dir / "checkpoints" / variant)
        if failure is None and servable:
            st = Stage("2c", None, start=time.time())
            stages.append(st)
            try:
                validation = run_validation(cfg, servable, d, t0, started == "embedded", run_id, uris)
                st.status = "ok"
            except Exception as e:  # the stage failed; keep what was measured and report it
                st.status, st.detail = "failed", f"{type(e).__name__}: {e}"
                failure = "validation stage failed"
            st.end = time.time()
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: stop everything, then report what was measured; --resume continues from the saved
        # training states (run_training wrote them on its way out).
        interrupted = time.time()
        failure = "interrupted (SIGINT/SIGTERM): INCOMPLETE"
        log("interrupted: stopping actors and Serve, writing a partial report", t0)
        running = [s for s in stages if s.status == "running"]
        for s in running:
            s.status, s.end, s.detail = "interrupted", interrupted, "interrupted"
        if not running and len(training) < len(cfg.variants):
            stages.append(Stage("2a/2b", None, "interrupted", interrupted, interrupted, "interrupted"))
    finally:
        if ray.is_initialized():
            env = _environment(cfg)
            placement["nodes"] = cluster_nodes()
        if started:
            ray.shutdown()
        _restore_sigterm(previous)
    st = Stage("2d", None, start=time.time())
    stages.append(st)
    report = MetricsOrchestrator(
        cfg=cfg,
        run_id=run_id,
        started_at=t0,
        environment=env,
        data_info={
            "files": len(d.files),
            "chars": d.chars,
            "train_tokens": len(d.train_tokens),
            "val_tokens": len(d.val_tokens),
        },
        stages=[asdict(s) for s in stages],
        training=training,
        trials=trials,
        extra_runs=extra_runs,
        validation=validation,
        failure=failure,
        placement=placement,
    ).build()
    st.status, st.end = "ok", time.time()
    report["stages"][-1].update(status=st.status, end=st.end)
    report["finished_at"] = st.end
    report["wall_s"] = st.end - t0
    report["incomplete"] = bool(interrupted)
    report["resumed"] = bool(resume_id)
    md_path = write_run_dir(out_dir, report, training, validation)
    if failure is None:
        # A whole run needs no resume states: its checkpoints are in checkpoints/.
        shutil.rmtree(out_dir / resume.STATES_DIR, ignore_errors=True)
    elif interrupted:
        log(f"resume with: phase2 run --resume {out_dir}", t0)
    approved = report["decision"]["approved"]
    log(f"2d: decision {'APPROVED' if approved else 'REJECTED'} in {report['wall_s']:.1f}s", t0)
    if failure:
        return EXIT_STAGE_FAILED, md_path
    return (EXIT_APPROVED if approved else EXIT_REJECTED), md_path


def _check_writable(out_dir: Path) -> None:
    """--output must be a directory this process can write into, or creatable in one; nothing is created here."""
    p = out_dir.resolve()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise ConfigError(f"--output {out_dir}: {p} is a file, not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"--output {out_dir}: {p} is not writable by this user")


def _preflight(cfg: Config, address: str | None) -> None:
    """What can be checked before Ray starts, raised as ConfigError (exit 2, nothing started): the storage URI,
    and for an embedded Ray, which runs on this machine, its resources and the Serve port."""
    if cfg.storage.uri:
        try:
            check_uri(cfg.storage.uri)
        except ValueError as e:
            raise ConfigError(f"storage.uri: {e}") from e
    if address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return  # a joined cluster's resources and ports are checked once connected, or by Serve itself
    cpus = cfg.ray.num_cpus or os.cpu_count() or 1
    _require(
        [
            ("training.cpus_per_actor", cfg.training.cpus_per_actor),
            ("serve.cpus_per_replica", cfg.serve.cpus_per_replica),
        ],
        cpus,
        f"the {cpus} CPUs of the embedded Ray on this machine",
    )
    gpus = torch.cuda.device_count()
    _require(_gpu_fields(cfg), gpus, f"the {gpus} GPUs of this machine")
    sc = cfg.serve
    with socket.socket(socket.AF_INET6 if ":" in sc.host else socket.AF_INET) as s:
        # SO_REUSEADDR: a port left in TIME_WAIT by an earlier run is free; one with a listener is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((sc.host, sc.port))
        except OSError as e:
            raise ConfigError(
                f"serve.port={sc.port}: cannot listen on {sc.host}:{sc.port} ({e.strerror}); "
                "another server holds it: pick a free port with --set serve.port=N"
            ) from None


def _raise_on_sigterm():
    """SIGTERM (ray job stop, a CI timeout, kill) interrupts the driver like Ctrl-C does, so that it cleans up and
    reports; returns the previous handler. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


def _error_text(e: BaseException, limit: int = 600) -> str:
    """The exception's last lines without terminal colour codes (Ray wraps remote tracebacks in them)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(e).__name__}: {e}")
    return text[-limit:]


def _check_resources(cfg: Config) -> None:
    """Fails fast (as a config error) when no node can host one training actor: Ray would wait forever.
    (Replica CPUs are not checked here: 2c shrinks each replica's share to what the cluster has.)"""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    _require([("training.cpus_per_actor", cfg.training.cpus_per_actor)], cpus, f"the cluster's {cpus:g} CPUs")
    _require(_gpu_fields(cfg), gpus, f"the cluster's {gpus:g} GPUs")


def _gpu_fields(cfg: Config) -> list[tuple[str, float]]:
    return [
        ("training.gpus_per_actor", cfg.training.gpus_per_actor),
        ("serve.gpus_per_replica", cfg.serve.gpus_per_replica),
    ]


def _require(fields: list[tuple[str, float]], have: float, what: str) -> None:
    """ConfigError naming the first field that asks for more than `have` (described by `what`)."""
    for field, need in fields:
        if need > have:
            raise ConfigError(f"{field}={need:g} exceeds {what}")
