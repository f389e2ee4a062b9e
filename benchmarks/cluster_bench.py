"""The smoke pipeline four ways, one after another on this machine: embedded local Ray, submitted as a Ray job to a
`ray start --head`, and as a Ray job on a simulated three-node cluster (ray.cluster_utils, one CPU per node) with
training.placement pack and spread. Prints each run's stage times and where things ran, so the cost of each way of
running and what placement changes are read side by side.

A simulated cluster shares this machine's cores, so it shows placement and the overhead of more nodes (more
raylets, object transfers between nodes), never scale-out speed.

usage: .venv/bin/python benchmarks/cluster_bench.py [--out FILE]"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from phase2_ray.provenance import cpu_model

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CONFIG = "configs/smoke.yaml"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary(out: Path, command_s: float) -> dict:
    r = json.loads((out / "report.json").read_text())
    stages = {s["name"]: s["end"] - s["start"] for s in r["stages"] if s.get("end")}
    p = r.get("placement", {})
    names = {n["node_id"]: f"node{i}" for i, n in enumerate(p.get("nodes", []))}
    return {
        "command_s": command_s,
        "run_wall_s": r["wall_s"],
        "stages_s": stages,
        "decision": "APPROVED" if r["decision"]["approved"] else "REJECTED",
        "nodes": len(p.get("nodes", [])),
        "training_nodes": {v: names.get(n, n[:8]) for v, n in p.get("training", {}).items()},
        "replica_nodes": sorted({names.get(n, n[:8]) for n in p.get("replicas", [])}),
        "sweep2_nodes": [names.get(n, n[:8]) for n in p.get("sweep_replicas", {}).get("2", [])],
        "client_nodes": [names.get(n, n[:8]) for n in p.get("load_clients", [])],
        "tokens_per_s": {v: t["tokens_per_s"] for v, t in r["training"].items()},
        "c1_tokens_per_s": {m: i.get("output_tokens_per_s") for m, i in r["inference"].items()},
    }


def embedded(tmp: Path) -> dict:
    out = tmp / "embedded"
    t = time.time()
    cmd = [str(BIN / "phase2"), "run", "-c", CONFIG, "--output", str(out), "--quiet"]
    subprocess.run(cmd + ["--set", f"serve.port={free_port()}"], cwd=ROOT, timeout=900, env=_env())
    return summary(out, time.time() - t)


def _env(**extra) -> dict:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def submitted_job(tmp: Path) -> dict:
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    dash, temp_dir = free_port(), tempfile.mkdtemp(prefix="rb", dir="/tmp")
    t_head = time.time()
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp_dir}",
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
         f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dash}"
    try:
        while subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                             capture_output=True).returncode:  # fmt: skip
            time.sleep(1)
        head_s = time.time() - t_head
        out = tmp / "job"
        t = time.time()
        for _ in range(30):  # the job agent comes up a little after the dashboard answers
            done = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
                 "python", "-m", "phase2_ray", "run", "-c", CONFIG, "--output", str(out), "--quiet",
                 "--set", f"serve.port={free_port()}"],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            if "No available agent to submit job" not in done.stdout + done.stderr:
                break
            time.sleep(2)
            t = time.time()
        res = summary(out, time.time() - t)
        res["head_start_s"] = head_s
        return res
    finally:
        family = [head, *psutil.Process(head.pid).children(recursive=True)]
        for p in family:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=5)
        shutil.rmtree(temp_dir, ignore_errors=True)


def simulated(tmp: Path, policy: str) -> dict:
    """The smoke pipeline submitted as a Ray job to a token-authenticated simulated three-node cluster (the test
    suite's tests/slow/cluster_driver.py)."""
    out = tmp / f"sim-{policy}"
    t = time.time()
    proc = subprocess.run(
        [sys.executable, "tests/slow/cluster_driver.py", str(out), str(free_port()),
         "--set", f"training.placement.policy={policy}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    meta = json.loads(proc.stdout.strip().splitlines()[-1])
    res = summary(out, time.time() - t)
    res["cluster_up_s"] = meta["cluster_up_s"]
    res["command_s"] = meta["job_s"]  # without the cluster's start-up, as for the job
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
    }
    print(f"machine: {json.dumps(machine)}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, fn in (
            ("embedded", lambda: embedded(tmp)),
            ("ray job submit", lambda: submitted_job(tmp)),
            ("3 nodes, pack", lambda: simulated(tmp, "pack")),
            ("3 nodes, spread", lambda: simulated(tmp, "spread")),
        ):
            results[name] = fn()
            r = results[name]
            st = r["stages_s"]
            print(
                f"{name:16s} command {r['command_s']:5.1f}s  run {r['run_wall_s']:5.1f}s  "
                f"data {st.get('data', 0):4.1f}  2a {st.get('2a', 0):4.1f}  2b {st.get('2b', 0):4.1f}  "
                f"2c {st.get('2c', 0):5.1f}  2d {st.get('2d', 0):4.1f}  nodes {r['nodes'] or 1}  "
                f"training on {r['training_nodes']}  replicas {r['replica_nodes']} (sweep of 2: "
                f"{r['sweep2_nodes']})  clients {r['client_nodes']}  {r['decision']}",
                flush=True,
            )
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
