"""Runs the smoke pipeline on a simulated three-node cluster (`ray.cluster_utils.Cluster`: a head and two worker
nodes, each with its own custom resource) and prints, as the last line, JSON with the exit code and which node id
carries which custom resource. Its own process, because a process joins one Ray cluster at most.

usage: python tests/slow/multinode_driver.py OUTPUT_DIR SERVE_PORT [--set KEY=VALUE ...]"""

import json
import socket
import sys
import tempfile
import time

import ray
from ray.cluster_utils import Cluster

from phase2_ray.cli import main

NODES = {"head_node": 1, "node_a": 1, "node_b": 1}  # custom resource -> CPUs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(out: str, serve_port: int, overrides: list[str]) -> dict:
    # short: Ray's Unix sockets live under it, and socket paths are limited to ~107 bytes
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    t = time.time()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": NODES["head_node"],
            "resources": {"head_node": 1},
            "include_dashboard": False,
            "temp_dir": temp_dir,
        },
    )
    try:
        for name in ("node_a", "node_b"):
            cluster.add_node(num_cpus=NODES[name], resources={name: 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        names = {
            n["NodeID"]: next(k for k in NODES if k in n["Resources"]) for n in ray.nodes() if n["Alive"]
        }
        ray.shutdown()
        up_s = time.time() - t
        t = time.time()
        argv = ["run", "-c", "configs/smoke.yaml", "--address", cluster.address, "--output", out, "--quiet"]
        argv += ["--set", f"serve.port={serve_port}"]
        for o in overrides:
            argv += ["--set", o]
        rc = main(argv)
        return {"rc": rc, "node_names": names, "cluster_up_s": up_s, "run_s": time.time() - t}
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    args = sys.argv[1:]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    print(json.dumps(run(args[0], int(args[1]), sets)), flush=True)
