"""Building the Serve application from checkpoints and the config's `serve` section, and asking its replicas
how they are."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import ray
from ray import serve

from phase2_ray.config import ServeConfig
from phase2_ray.core.checkpoint import read_dir
from phase2_ray.core.specs import builtin_spec
from phase2_ray.runlog import RunLog, warn_if_exposed
from phase2_ray.serving.app import APP_NAME, DEPLOYMENT, InferenceScalingEngine


def engine_options(
    serve_cfg: ServeConfig, cpus_per_replica: float | None = None, gpus_per_replica: float | None = None
) -> dict:
    """Deployment options from the config's `serve` section (replicas or autoscaling, backpressure)."""
    opts: dict = {
        "ray_actor_options": {
            "num_cpus": serve_cfg.cpus_per_replica if cpus_per_replica is None else cpus_per_replica,
            "num_gpus": serve_cfg.gpus_per_replica if gpus_per_replica is None else gpus_per_replica,
            # Serve runs user code on a second event loop in its own thread by default, so every response
            # message crosses threads. Our handlers never block for long (a decode step is ~1 ms), so running
            # them on the replica's main loop is safe, and saves a thread hop per message (RESULTS.md: c16 tok/s).
            "runtime_env": {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}},
        },
        "max_ongoing_requests": serve_cfg.max_ongoing_requests,
        "max_queued_requests": serve_cfg.max_queued_requests,
        # A stopping replica checks for requests still in flight every loop; Serve's 2 s default made every
        # scale-down, application delete and shutdown wait 2 s even when nothing was in flight.
        "graceful_shutdown_wait_loop_s": 0.1,
    }
    if serve_cfg.autoscaling is not None:
        opts["autoscaling_config"] = serve_cfg.autoscaling.model_dump()
    else:
        opts["num_replicas"] = serve_cfg.num_replicas
    return opts


def model_specs(
    checkpoints: dict[str, dict[str, bytes]],
    plan: dict[str, dict],
    uris: dict[str, str] | None = None,
) -> dict[str, dict]:
    """Every served model id -> its spec: its source checkpoint's files (or only their storage URI when `uris` has
    one: the replica reads it there), and the converters whose serve hooks it goes through (stacks.serve_plan)."""
    uris = uris or {}
    out: dict[str, dict] = {}
    for model_id, p in plan.items():
        src = p["source"]
        spec: dict = {"checkpoint_uri": uris[src]} if src in uris else {"checkpoint": checkpoints[src]}
        if p["converters"]:
            spec["converters"] = p["converters"]
        if src != model_id:
            spec["copy_of"] = src
        out[model_id] = spec
    return out


def plain_specs(
    checkpoints: dict[str, dict[str, bytes]], int8_of: str | None = None, kernel: str = "auto"
) -> dict[str, dict]:
    """Model specs without a config: each checkpoint as it is, plus `<int8_of>-int8` through the int8 converter
    (tests and benchmarks serve this way)."""
    plan: dict[str, dict] = {v: {"source": v, "converters": []} for v in checkpoints}
    if int8_of is not None:
        args = {} if kernel == "auto" else {"kernel": kernel}
        plan[int8_of + "-int8"] = {"source": int8_of, "converters": [builtin_spec("int8", args)]}
    return model_specs(checkpoints, plan)


QUIET_SERVE = {"log_level": "WARNING", "enable_access_log": False}
"""Serve's logging during a run: access logs of every request would drown the progress lines; warnings and
errors still show."""


def join_or_start_serve(sc: ServeConfig, log: RunLog) -> tuple[str, int] | None:
    """Serve on the connected cluster: started with the config's HTTP options when none runs (None), else the
    running instance's (host, port), which keeps the options it started with (said when they differ)."""
    running = running_serve()
    if running is None:
        warn_if_exposed("the Serve HTTP proxy (serve.host)", sc.host)
        serve.start(http_options={"host": sc.host, "port": sc.port}, logging_config=QUIET_SERVE)
        return None
    if running != (sc.host, sc.port):
        log.event(
            "serve.shared",
            f"2c: Serve already runs on this cluster at {running[0]}:{running[1]}: the application goes there "
            f"(serve.host/serve.port {sc.host}:{sc.port} apply only where this run starts Serve)",
        )
    return running


def deploy_fitted(
    models: dict[str, dict], sc: ServeConfig, n: int, num_replicas: int | None, version: str | None
) -> None:
    """Deploys `build_app` as the run's application (APP_NAME at /), each of the `n` replicas' logical CPU (and GPU)
    share shrunk to fit the cluster: every replica must fit at once, on a cluster smaller than the config assumed
    too."""
    total = ray.cluster_resources()
    app = build_app(
        models,
        sc,
        cpus_per_replica=min(sc.cpus_per_replica, total.get("CPU", 1) / n),
        gpus_per_replica=min(sc.gpus_per_replica, total.get("GPU", 0) / n),
        num_replicas=num_replicas,
        version=version,
    )
    serve.run(app, name=APP_NAME, route_prefix="/", logging_config=QUIET_SERVE)


def build_app(
    models: dict[str, dict],
    serve_cfg: ServeConfig,
    *,
    cpus_per_replica: float | None = None,
    gpus_per_replica: float | None = None,
    num_replicas: int | None = None,
    version: str | None = None,
) -> serve.Application:
    """The application serving each model spec (model_specs) under its id.

    `version` names the replicas' code and models (one run's stage 2c passes its run id): `serve.run` of the same
    version with another replica count then only starts or stops the difference, as a config-file redeploy does,
    instead of replacing every replica. Without it Serve draws a new version on each `serve.run`."""
    # The key is read from the driver's environment (PHASE2_API_KEY); a replica's process may not have it.
    replica_cfg = serve_cfg.model_copy(update={"api_key": serve_cfg.resolved_api_key()})
    opts = engine_options(serve_cfg, cpus_per_replica, gpus_per_replica)
    if num_replicas is not None:
        opts.pop("autoscaling_config", None)
        opts["num_replicas"] = num_replicas
    deployment = InferenceScalingEngine.options(**opts)
    if version is not None:
        # Serve sets versions itself since `version` left the public options; `_internal` is how its own config
        # path sets one (tests/integration/test_pipeline_e2e.py checks that a sweep keeps the first replica).
        deployment = deployment.options(version=version, _internal=True)
    return deployment.bind(models, replica_cfg)


def app(args: dict) -> serve.Application:
    """Application builder for `serve run phase2_ray.serving.build:app config=... checkpoints=RUN_DIR`."""
    from phase2_ray.configure import load_config
    from phase2_ray.stacks import serve_plan

    cfg = load_config(args.get("config"))
    checkpoints = checkpoints_of(args["checkpoints"])
    models = model_specs(checkpoints, serve_plan(cfg, checkpoints))
    return build_app(models, cfg.serve)


def checkpoints_of(run_dir: str | Path) -> dict[str, dict[str, bytes]]:
    """Every variant checkpoint saved in RUN_DIR/checkpoints."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist: pass the directory of a finished run")
    found = {d.name: read_dir(d) for d in sorted(root.iterdir()) if (d / "meta.json").is_file()}
    if not found:
        raise FileNotFoundError(f"no checkpoint (meta.json) under {root}")
    return found


def running_serve() -> tuple[str, int] | None:
    """The host and port of the Serve instance already running on the connected cluster, or None."""
    # Serve has no public "is it running" call (serve.status() starts nothing but raises without a controller);
    # this is the lookup serve.status() itself makes, told not to raise.
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    return client.http_config.host, client.http_config.port


def replica_stats(expected: int, tries: int = 64) -> list[dict]:
    """Stats of every running replica (as report.json holds them): calls go through the handle until `expected`
    distinct replicas answered."""
    handle = serve.get_deployment_handle(DEPLOYMENT, app_name=APP_NAME)
    seen: dict[str, dict] = {}
    for _ in range(tries):
        s = asdict(handle.stats.remote().result())
        seen[s["replica_id"]] = s
        if len(seen) >= expected:
            break
    return sorted(seen.values(), key=lambda s: s["replica_id"])
