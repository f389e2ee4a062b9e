"""`phase2 serve`: a finished run's checkpoints behind the OpenAI-compatible endpoint until interrupted."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import ray
from ray import serve

from phase2_ray.config import Config, ConfigError
from phase2_ray.core import checkpoint as ckpt
from phase2_ray.runlog import warn_if_exposed
from phase2_ray.serving.build import APP_NAME, build_app, checkpoints_of, model_specs
from phase2_ray.session import connect, raise_on_sigterm, restore_sigterm, signals_held
from phase2_ray.stacks import serve_plan


def serve_checkpoints(
    cfg: Config, run_dir: str | Path, *, address: str | None = None, block: bool = True
) -> str:
    """Serves RUN_DIR's checkpoints; returns the base URL (at once when not `block`, else when interrupted).

    Raises ConfigError (exit 2) before Ray starts when RUN_DIR holds no checkpoint."""
    try:
        checkpoints = checkpoints_of(run_dir)
    except (FileNotFoundError, ckpt.ChecksumError) as e:
        raise ConfigError(f"--checkpoints: {e}") from e
    started = connect(cfg, address)
    previous = raise_on_sigterm() if block else None
    sc = cfg.serve
    url = f"http://{sc.host}:{sc.port}"
    stop = True
    try:
        warn_if_exposed("the Serve HTTP proxy (serve.host)", sc.host)
        serve.start(http_options={"host": sc.host, "port": sc.port})
        specs = model_specs(checkpoints, serve_plan(cfg, checkpoints))
        serve.run(build_app(specs, sc), name=APP_NAME, route_prefix="/")
        models = sorted(specs)
        print(f"serving {', '.join(models)} at {url}/v1 (OpenAI-compatible); Ctrl-C stops", flush=True)
        if not block:
            stop = False  # the caller stops Serve (and Ray) when it is done with them
            return url
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, while deploying or serving
        print("phase2: stopping Serve", file=sys.stderr, flush=True)
    finally:
        if stop:
            with signals_held("stopping Serve and Ray"):
                try:
                    serve.shutdown()
                finally:
                    if started:
                        ray.shutdown()
        restore_sigterm(previous)
    return url
