"""The pipeline as a Ray job on a multi-node cluster, as on a user's cloud cluster: a simulated three-node cluster
with token authentication on (tests/slow/cluster_driver.py), `ray job submit --working-dir .` of the smoke pipeline
with spread placement, the report's path and decision in the job's logs, each training actor on a node of its own,
and a wrong token refused. A spread placement the session's one-node cluster cannot give failing as a config error
is tests/integration/test_multinode.py."""

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.ray


# the smoke pipeline with spread placement, two replicas from the start (the sweep finds them running instead of
# scaling up), the speed trial at its minimum, and no more training, data or serving than placement needs:
# placement and the job are what is checked here (the smoke run checks what these leave out)
SETS = ["training.placement.policy=spread", "validation.replica_sweep=[2]", "serve.num_replicas=2"]
SETS += [
    "validation.concurrency=[1]",
    "validation.requests=4",
    "speed_trial.replicates=2",
    "speed_trial.pairs=2",
]
SETS += ["training.steps=30", "training.eval_interval=0", "data.max_chars=100000"]
SETS += ["serve.int8=false", "validation.inprocess_reference=false", "validation.capacity.enabled=false"]
# the optimized stack a converter file (relative to the config file, inside the job's working_dir): the job's
# runtime_env (working_dir from `ray job submit`, py_modules from phase2's ray.init) carries it to every node
SETS += [
    "variants.optimized.fused_adamw=false",
    "variants.optimized.converters=['../examples/converters/foreach_adamw.py:ForeachAdamW']",
]


@dataclass
class ClusterJob:
    """tests/slow/cluster_driver.py running in a process of its own (its output goes to files: nobody reads a
    pipe while it runs)."""

    out: Path
    proc: subprocess.Popen
    stdout: Path
    stderr: Path

    def result(self, timeout: float = 600) -> tuple[int, dict | None, str]:
        rc = self.proc.wait(timeout=timeout)
        lines = self.stdout.read_text().strip().splitlines()
        res = json.loads(lines[-1]) if rc == 0 and lines else None
        return rc, res, self.stderr.read_text()[-3000:]

    def stop(self) -> None:
        """SIGINT first: the driver's `finally` shuts its cluster down; a kill would leave the nodes running."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start(tmp: Path) -> ClusterJob:
    stdout, stderr = tmp / "driver.out", tmp / "driver.err"
    cmd = [
        sys.executable,
        str(ROOT / "tests" / "slow" / "cluster_driver.py"),
        str(tmp / "run"),
        str(free_port()),
    ]
    cmd += [a for s in SETS for a in ("--set", s)]
    with stdout.open("w") as o, stderr.open("w") as e:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=o, stderr=e, text=True)
    return ClusterJob(tmp / "run", proc, stdout, stderr)


def test_job_on_a_token_authenticated_three_node_cluster_spreads_the_variants(cluster_job):
    # started with the session (tests/conftest.py): it runs on a cluster of its own while the other tiers run
    out = cluster_job.out
    rc, res, err = cluster_job.result()
    assert rc == 0 and res is not None, err
    # shown with -s, or with the failure: how long the cluster and the job took, and where the job belonged
    print({k: res[k] for k in ("cluster_up_s", "job_s", "gcs_address")})
    logs = res["logs"]
    names = res["node_names"]  # node id -> the custom resource only that node has
    assert sorted(names.values()) == ["head_node", "node_a", "node_b"]

    # The job ran the pipeline; its status carries the gate (`phase2 run` exits 1 on REJECTED, so the job and
    # `ray job submit` fail), and its logs name the decision and the report.
    assert (out / "report.json").is_file(), logs[-12000:]
    report = json.loads((out / "report.json").read_text())
    decision = report["decision"]["outcome"].upper()
    assert (res["rc"] == 0) == report["decision"]["approved"], logs[-3000:]
    assert f"2d: decision {decision}" in logs and str(out / "report.md") in logs
    assert [s["status"] for s in report["stages"]] == ["ok"] * 6  # data, 2a, 2b, speed-trial, 2c, 2d
    assert report["environment"]["ray_cluster_resources"]["CPU"] == 3.0
    assert (out / "checkpoints" / "optimized" / "meta.json").exists()
    import hashlib

    conv = report["training"]["optimized"]["settings"]["converters"]
    sha = hashlib.sha256((ROOT / "examples/converters/foreach_adamw.py").read_bytes()).hexdigest()
    assert [c["name"] for c in conv] == ["ForeachAdamW"] and conv[0]["source"]["sha256"] == sha
    assert [c["name"] for c in report["training"]["optimized"]["optimizations"]] == ["ForeachAdamW"]

    # The STRICT_SPREAD group put baseline and optimized on two different nodes of this cluster.
    p = report["placement"]
    assert p["policy"] == "spread" and p["strategy"] == "STRICT_SPREAD"
    assert {n["node_id"] for n in p["nodes"]} == set(names)
    assert set(p["training"]) == {"baseline", "optimized"}
    assert p["training"]["baseline"] != p["training"]["optimized"]
    assert p["training_distinct_nodes"] == 2
    assert all(n in names for n in p["training"].values())
    # Serve replicas and load clients ran on this cluster's nodes, and say which.
    assert p["replicas"] and all(n in names for n in p["replicas"])
    assert len(p["sweep_replicas"]["2"]) == 2 and all(n in names for n in p["sweep_replicas"]["2"])
    assert len(p["load_clients"]) == 2 and all(n in names for n in p["load_clients"])
    # The requests reached the replicas from clients on whatever node they landed on.
    assert report["inference"]["optimized"]["success_rate"] == 1.0
    assert "Placement over 3 nodes, policy spread (STRICT_SPREAD)" in (out / "report.md").read_text()

    # without the token the same cluster refuses us
    assert res["refused_rc"] != 0 and "token" in res["refused_text"].lower()
