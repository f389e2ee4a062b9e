"""Building the Serve application from checkpoints and the config's `serve` section, and asking its replicas
how they are."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ray import serve

from phase2_ray.config import ServeConfig
from phase2_ray.core.checkpoint import read_dir
from phase2_ray.serving.app import APP_NAME, DEPLOYMENT, INT8_SUFFIX, InferenceScalingEngine


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
    int8_of: str | None,
    uris: dict[str, str] | None = None,
    int8_kernel: str = "auto",
) -> dict[str, dict]:
    """Every served model id -> its checkpoint: the files, or only their storage URI when `uris` has one (the
    replica reads it there); `int8: True` marks the compressed copy of `int8_of` (multiplied by `int8_kernel`)."""
    uris = uris or {}
    models: dict[str, dict] = {
        v: {"checkpoint_uri": uris[v]} if v in uris else {"checkpoint": files}
        for v, files in checkpoints.items()
    }
    if int8_of is not None:
        models[int8_of + INT8_SUFFIX] = {**models[int8_of], "int8": True, "int8_kernel": int8_kernel}
    return models


def build_app(
    checkpoints: dict[str, dict[str, bytes]],
    serve_cfg: ServeConfig,
    *,
    int8_of: str | None = None,
    cpus_per_replica: float | None = None,
    gpus_per_replica: float | None = None,
    num_replicas: int | None = None,
    uris: dict[str, str] | None = None,
    version: str | None = None,
) -> serve.Application:
    """The application serving each checkpoint under its variant's name, plus `<int8_of>-int8` when asked.

    `version` names the replicas' code and models (one run's stage 2c passes its run id): `serve.run` of the same
    version with another replica count then only starts or stops the difference, as a config-file redeploy does,
    instead of replacing every replica. Without it Serve draws a new version on each `serve.run`."""
    models = model_specs(checkpoints, int8_of, uris, serve_cfg.int8_kernel)
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
    from phase2_ray.config import load_config

    cfg = load_config(args.get("config"))
    checkpoints, int8_of = checkpoints_of(args["checkpoints"])
    return build_app(checkpoints, cfg.serve, int8_of=int8_of if cfg.serve.int8 else None)


def checkpoints_of(run_dir: str | Path) -> tuple[dict[str, dict[str, bytes]], str | None]:
    """Every variant checkpoint saved in RUN_DIR/checkpoints, and the variant to compress (optimized, if there)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist: pass the directory of a finished run")
    found = {d.name: read_dir(d) for d in sorted(root.iterdir()) if (d / "meta.json").is_file()}
    if not found:
        raise FileNotFoundError(f"no checkpoint (meta.json) under {root}")
    return found, ("optimized" if "optimized" in found else None)


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
