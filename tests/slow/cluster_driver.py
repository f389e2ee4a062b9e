"""A simulated three-node cluster as a user's cloud cluster looks to phase2: `ray.cluster_utils.Cluster` (a head
and two worker nodes, one CPU and one custom resource each), token authentication on, the dashboard and its job
server on 127.0.0.1. Submits the smoke pipeline as a Ray job (`ray job submit --working-dir`), checks that a wrong
token is refused, and prints, as its last line, JSON: which node id carries which custom resource, the job's exit
code and logs, and the refused call's. Its own process: a process joins one Ray cluster at most, and the cluster's
processes inherit its environment, which turns token authentication on (a fresh token) before anything starts.

usage: python tests/slow/cluster_driver.py OUTPUT_DIR SERVE_PORT [--set KEY=VALUE ...]"""

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
NODES = {"head_node": 1, "node_a": 1, "node_b": 1}  # custom resource -> CPUs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token_environment() -> None:
    """This process's environment, which every process of the cluster inherits: token authentication on with a
    fresh token, no RAY_ADDRESS to join, and this environment's `python` first on the PATH (the job's entrypoint
    runs with the cluster's PATH)."""
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.pop("RAY_ADDRESS", None)


def run(out: str, serve_port: int, overrides: list[str]) -> dict:
    token_environment()
    # Ray only after that: it reads the token when it is imported, for this process's own calls.
    import ray
    from ray.cluster_utils import Cluster

    # short: Ray's Unix sockets live under it, and socket paths are limited to ~107 bytes
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    dash = free_port()
    t = time.time()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": NODES["head_node"],
            "resources": {"head_node": 1},
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dash,
            "temp_dir": temp_dir,
            # the agents' fixed default ports are taken when the test session already runs a cluster: the
            # head's job agent would then never come up ("No available agent to submit job")
            "dashboard_agent_listen_port": free_port(),
            "metrics_export_port": free_port(),
            "runtime_env_agent_port": free_port(),
        },
    )
    try:
        for name in ("node_a", "node_b"):
            # Nodes of a real cluster unpack the job's working directory on disks of their own: here they share
            # one session directory, and a node re-extracting the package under the driver's feet lost it modules.
            cluster.add_node(
                num_cpus=NODES[name],
                resources={name: 1},
                runtime_env_dir_name=f"runtime_env_{name}",
                # and none of this cluster's nodes takes a fixed default port the test session's cluster wants
                dashboard_agent_listen_port=free_port(),
            )
        cluster.wait_for_nodes()
        # A job's driver gets RAY_ADDRESS from its supervisor, which reads <temp_dir>/ray_current_cluster, the
        # file `ray start --head` writes. cluster_utils writes only /tmp/ray's, which the test session's own
        # cluster shares: without ours the supervisor fell back to any GCS found on this machine, and half the
        # time its driver knocked on the session cluster's ("InvalidAuthToken", then a failed job).
        ray._private.utils.write_ray_address(cluster.address, temp_dir)
        ray.init(address=cluster.address)
        names = {
            n["NodeID"]: next(k for k in NODES if k in n["Resources"]) for n in ray.nodes() if n["Alive"]
        }
        ray.shutdown()
        up_s = time.time() - t
        address = f"http://127.0.0.1:{dash}"
        submit = [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT), "--"]
        submit += [
            "python",
            "-m",
            "phase2_ray",
            "run",
            "-c",
            "configs/smoke.yaml",
            "--output",
            out,
            "--json-logs",
        ]
        submit += ["--set", f"serve.port={serve_port}"]
        for o in overrides:
            submit += ["--set", o]
        t = time.time()
        for _ in range(60):
            done = subprocess.run(submit, capture_output=True, text=True, timeout=600, cwd=ROOT)
            logs = done.stdout + done.stderr
            # The dashboard answers a little before the head's job agent does.
            if "No available agent to submit job" not in logs:
                break
            time.sleep(1)
        job_s = time.time() - t
        refused = subprocess.run(
            [RAY, "job", "list", "--address", address],
            env={**os.environ, "RAY_AUTH_TOKEN": "wrong"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        return {
            "node_names": names,
            "rc": done.returncode,
            "logs": logs[-20000:],
            "refused_rc": refused.returncode,
            "refused_text": (refused.stdout + refused.stderr)[-3000:],
            "cluster_up_s": up_s,
            "job_s": job_s,
            # a driver that joined another cluster names that address ("Failed to connect to Ray cluster at")
            "gcs_address": cluster.address,
        }
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    args = sys.argv[1:]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    print(json.dumps(run(args[0], int(args[1]), sets)), flush=True)
