"""Where and with what a run ran: versions, the CPU and its vector units, the git commit, the config's hash
and the Ray cluster. Benchmarks describe their machine with the same functions."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import ray

from phase2_ray import __version__
from phase2_ray.config import Config


def environment(cfg: Config) -> dict:
    # torch here, not at the top: placement (and so the torch-free helper actors) imports this module.
    import torch

    env = {
        "phase2_ray": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_simd_flags": cpu_simd_flags(),
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "driver_torch_threads": torch.get_num_threads(),
        "threads_per_training_actor": cfg.training.placement.cpus_per_actor,
        "threads_per_replica": cfg.serve.threads_per_replica,
        "config_sha256": cfg.fingerprint(),
        "seeds": {"training": cfg.training.seed, "repeats": cfg.training.measurement.repeats},
        "seed": cfg.training.seed,
        "git_commit": git_commit(),
    }
    if ray.is_initialized():
        env["ray_cluster_resources"] = ray.cluster_resources()
        env["ray_nodes"] = sum(1 for n in ray.nodes() if n.get("Alive"))
    return env


def cpu_simd_flags() -> list[str]:
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


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
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


def cluster_nodes() -> list[dict]:
    """Alive nodes: id, address, whether it is the head, and its total resources (custom ones included)."""
    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = {k: v for k, v in n.get("Resources", {}).items() if not k.startswith("node:")}
        out.append(
            {
                "node_id": n["NodeID"],
                "address": n.get("NodeManagerAddress"),
                "is_head": "node:__internal_head__" in n.get("Resources", {}),
                "resources": res,
            }
        )
    return sorted(out, key=lambda n: (not n["is_head"], n["node_id"]))
