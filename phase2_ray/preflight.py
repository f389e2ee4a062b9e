"""Everything that can be wrong is found before anything is written or started: a config error exits 2 and
leaves no trace. What only a running cluster can tell (its resources) is checked right after connecting."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import ray
import torch

from phase2_ray.config import Config, ConfigError
from phase2_ray.storage import check_uri
from phase2_ray.tracking import check_tracking


def check_writable(out_dir: Path) -> None:
    """--output must be a directory this process can write into, or creatable in one; nothing is created here."""
    p = out_dir.resolve()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise ConfigError(f"--output {out_dir}: {p} is a file, not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"--output {out_dir}: {p} is not writable by this user")


def check_endpoints(cfg: Config, command: str) -> dict[str, dict]:
    """The config's endpoints, before Ray starts (ConfigError, exit 2, one line naming the endpoint): what the
    command needs of them, then each external one probed (it answers, knows the model, takes the key, streams
    well-formed SSE). Returns what each probe learned."""
    from phase2_ray.config.endpoints import check_endpoints as check_for_command
    from phase2_ray.loadtest.endpoints import probe_all
    from phase2_ray.loadtest.probe import EndpointError

    try:
        check_for_command(cfg.endpoints, list(cfg.variants), command)
        return probe_all(cfg)
    except (ValueError, EndpointError) as e:
        raise ConfigError(str(e)) from None


def check_before_start(cfg: Config, address: str | None, trains: bool = True) -> None:
    """What can be checked before Ray starts, raised as ConfigError (exit 2, nothing started): the storage URI,
    and for an embedded Ray, which runs on this machine, its resources and the Serve port. `trains` False
    (phase2 validate): no training actor's resources; no replica's either when nothing is served here."""
    if cfg.storage.uri:
        try:
            check_uri(cfg.storage.uri)
        except ValueError as e:
            raise ConfigError(f"storage.uri: {e}") from e
    check_tracking(cfg)
    if address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return  # a joined cluster's resources and ports are checked once connected, or by Serve itself
    cpus = cfg.ray.num_cpus or os.cpu_count() or 1
    fields = [
        ("training.placement.cpus_per_actor", cfg.training.placement.cpus_per_actor),
        ("serve.cpus_per_replica", cfg.serve.cpus_per_replica),
    ]
    gpu_fields = _gpu_fields(cfg)
    keep = {"serve.cpus_per_replica", "serve.gpus_per_replica"} if cfg.serves_own() else set()
    if not trains:
        fields = [f for f in fields if f[0] in keep]
        gpu_fields = [f for f in gpu_fields if f[0] in keep]
    _require(fields, cpus, f"the {cpus} CPUs of the embedded Ray on this machine")
    gpus = torch.cuda.device_count()
    _require(gpu_fields, gpus, f"the {gpus} GPUs of this machine")
    sc = cfg.serve
    if not cfg.serves_own():
        return  # phase2 validate on endpoints served elsewhere: no Serve here
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


def check_cluster(cfg: Config) -> None:
    """Fails fast (as a config error) when no node can host one training actor: Ray would wait forever.
    (Replica CPUs are not checked here: 2c shrinks each replica's share to what the cluster has.)"""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    _require(
        [("training.placement.cpus_per_actor", cfg.training.placement.cpus_per_actor)],
        cpus,
        f"the cluster's {cpus:g} CPUs",
    )
    _require(_gpu_fields(cfg), gpus, f"the cluster's {gpus:g} GPUs")


def _gpu_fields(cfg: Config) -> list[tuple[str, float]]:
    return [
        ("training.placement.gpus_per_actor", cfg.training.placement.gpus_per_actor),
        ("serve.gpus_per_replica", cfg.serve.gpus_per_replica),
    ]


def _require(fields: list[tuple[str, float]], have: float, what: str) -> None:
    """ConfigError naming the first field that asks for more than `have` (described by `what`)."""
    for field, need in fields:
        if need > have:
            raise ConfigError(f"{field}={need:g} exceeds {what}")
