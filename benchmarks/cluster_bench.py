"""The smoke pipeline four ways, one after another on this machine: embedded local Ray, submitted as a Ray job to a
`ray start --head`, and as a Ray job on a simulated three-node cluster (ray.cluster_utils, one CPU per node) with
training.placement pack and spread. Prints each run's stage times and where things ran, so the cost of each way of
running and what placement changes are read side by side.

A simulated cluster shares this machine's cores, so it shows placement and the overhead of more nodes (more
raylets, object transfers between nodes), never scale-out speed.

Every cluster is its own (`phase2 run`'s embedded one with address "local", and the others on free ports with temp
dirs of their own), so the bench runs beside another Ray on this machine (the test suite's session cluster).

--quick (the test suite runs it): the smoke config shrunk (30 steps on 100,000 characters, the speed trial at its
minimum, 4 requests at concurrency 1 from one client, no replica sweep, no int8 model, no in-process reference, no
capacity search; the suite's smoke run checks what that leaves out), run one way: embedded, which is this script's
command line, summary and output. Each other way costs a cluster start-up and a pipeline run more (80 s or more
on a 2-core machine), so quick leaves them out:
- the simulated three-node cluster, pack and spread: tests/slow/cluster_driver.py with one override apart, which
  tests/slow/test_cluster_job.py runs in every suite, reading the same fields of its output;
- `ray job submit` to a `ray start --head`: the same `phase2_ray run` command line as a job (job submission is
  checked by test_cluster_job, on its cluster), but `ray start`'s flags and this script's handling of the head
  (waiting for its job server, stopping its processes) are checked only by `--quick --ways job`.
Quick's times mean nothing. --ways picks ways, with or without --quick.

usage: .venv/bin/python benchmarks/cluster_bench.py [--quick] [--ways embedded,job,pack,spread] [--out FILE]"""

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
QUICK = [
    "training.steps=30",
    "training.eval_interval=0",
    "data.max_chars=100000",
    "speed_trial.replicates=2",
    "speed_trial.pairs=2",
    "speed_trial.block_steps=2",
    "speed_trial.warmup_steps=2",
    "validation.concurrency=[1]",
    "validation.requests=4",
    "validation.warmup_requests=0",
    "validation.clients=1",
    "validation.replica_sweep=[]",
    "serve.int8=false",
    "validation.inprocess_reference=false",
    "validation.capacity.enabled=false",
]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WAYS = ("embedded", "job", "pack", "spread")
QUICK_WAYS = ("embedded",)


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def summary(out: Path, command_s: float, rc: int) -> dict:
    """What report.json says about the run; `rc`: the command's exit code (0 approved, 1 rejected, 4 inconclusive,
    else failed)."""
    r = json.loads((out / "report.json").read_text())
    stages = {s["name"]: s["end"] - s["start"] for s in r["stages"] if s.get("end")}
    p = r.get("placement", {})
    names = {n["node_id"]: f"node{i}" for i, n in enumerate(p.get("nodes", []))}
    return {
        "exit_code": rc,
        "command_s": command_s,
        "run_wall_s": r["wall_s"],
        "stages_s": stages,
        "stage_status": {s["name"]: s["status"] for s in r["stages"]},
        "failure": r.get("failure"),
        "decision": r["decision"]["outcome"].upper(),
        "nodes": len(p.get("nodes", [])),
        "training_nodes": {v: names.get(n, n[:8]) for v, n in p.get("training", {}).items()},
        "replica_nodes": sorted({names.get(n, n[:8]) for n in p.get("replicas", [])}),
        "sweep2_nodes": [names.get(n, n[:8]) for n in p.get("sweep_replicas", {}).get("2", [])],
        "client_nodes": [names.get(n, n[:8]) for n in p.get("load_clients", [])],
        "tokens_per_s": {v: t["tokens_per_s"] for v, t in r["training"].items()},
        "c1_tokens_per_s": {m: i.get("output_tokens_per_s") for m, i in r["inference"].items()},
    }


def embedded(tmp: Path, overrides: list[str]) -> dict:
    out = tmp / "embedded"
    t = time.time()
    cmd = [str(BIN / "phase2"), "run", "-c", CONFIG, "--output", str(out), "--quiet"]
    cmd += ["--set", f"serve.port={free_port()}", *_sets(overrides)]
    done = subprocess.run(cmd, cwd=ROOT, timeout=900, env=_env())
    return summary(out, time.time() - t, done.returncode)


def _env(**extra) -> dict:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def submitted_job(tmp: Path, overrides: list[str]) -> dict:
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
            if head.poll() is not None or time.time() - t_head > 300:
                raise RuntimeError(f"`ray start --head` (exit {head.poll()}): no job server at {address}")
            time.sleep(1)
        head_s = time.time() - t_head
        out = tmp / "job"
        t = time.time()
        for _ in range(30):  # the job agent comes up a little after the dashboard answers
            done = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
                 "python", "-m", "phase2_ray", "run", "-c", CONFIG, "--output", str(out), "--quiet",
                 "--set", f"serve.port={free_port()}", *_sets(overrides)],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            if "No available agent to submit job" not in done.stdout + done.stderr:
                break
            time.sleep(2)
            t = time.time()
        res = summary(out, time.time() - t, done.returncode)
        res["head_start_s"] = head_s
        res["head_temp_dir"] = temp_dir  # removed at the end, with every process of the head
        return res
    finally:
        # the head's whole tree: SIGTERM, then SIGKILL for what is still there after 10 s (a raylet or an agent
        # left running would hold its ports and CPU for the next way)
        try:
            top = psutil.Process(head.pid)
            family = [top, *top.children(recursive=True)]
        except psutil.Error:  # it exited already (its children, if any, are found no more)
            family = []
        for p in family:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        head.wait(timeout=5)
        shutil.rmtree(temp_dir, ignore_errors=True)


def simulated(tmp: Path, policy: str, overrides: list[str]) -> dict:
    """The smoke pipeline submitted as a Ray job to a token-authenticated simulated three-node cluster (the test
    suite's tests/slow/cluster_driver.py)."""
    out = tmp / f"sim-{policy}"
    t = time.time()
    proc = subprocess.run(
        [sys.executable, "tests/slow/cluster_driver.py", str(out), str(free_port()),
         "--set", f"training.placement.policy={policy}", *_sets(overrides)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"cluster_driver.py exited {proc.returncode}: {proc.stderr[-3000:]}")
    meta = json.loads(proc.stdout.strip().splitlines()[-1])
    res = summary(out, time.time() - t, meta["rc"])
    res["cluster_up_s"] = meta["cluster_up_s"]
    res["command_s"] = meta["job_s"]  # without the cluster's start-up, as for the job
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="a smaller config, fewer ways (the test suite runs this)"
    )
    ap.add_argument(
        "--ways",
        help=f"which ways, comma-separated, of {','.join(WAYS)} (default: all; --quick: {','.join(QUICK_WAYS)})",
    )
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    sets = QUICK if args.quick else []
    chosen = args.ways.split(",") if args.ways else list(QUICK_WAYS if args.quick else WAYS)
    if unknown := set(chosen) - set(WAYS):
        ap.error(f"--ways: unknown {', '.join(sorted(unknown))} (known: {', '.join(WAYS)})")
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
        ways = {
            "embedded": ("embedded", lambda: embedded(tmp, sets)),
            "job": ("ray job submit", lambda: submitted_job(tmp, sets)),
            "pack": ("3 nodes, pack", lambda: simulated(tmp, "pack", sets)),
            "spread": ("3 nodes, spread", lambda: simulated(tmp, "spread", sets)),
        }
        for name, fn in (ways[k] for k in WAYS if k in chosen):
            results[name] = fn()
            r = results[name]
            st = r["stages_s"]
            print(
                f"{name:16s} command {r['command_s']:5.1f}s  run {r['run_wall_s']:5.1f}s  "
                f"data {st.get('data', 0):4.1f}  2a {st.get('2a', 0):4.1f}  2b {st.get('2b', 0):4.1f}  "
                f"2c {st.get('2c', 0):5.1f}  2d {st.get('2d', 0):4.1f}  nodes {r['nodes'] or 1}  "
                f"training on {r['training_nodes']}  replicas {r['replica_nodes']} (sweep of 2: "
                f"{r['sweep2_nodes']})  clients {r['client_nodes']}  {r['decision']} (exit {r['exit_code']})",
                flush=True,
            )
    if args.out:
        out = {"machine": machine, "quick": args.quick, "results": results}
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
