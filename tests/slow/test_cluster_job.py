"""The pipeline as a Ray job on a multi-node cluster, as on a user's cloud cluster: a simulated three-node cluster
with token authentication on (tests/slow/cluster_driver.py), `ray job submit --working-dir .` of the smoke pipeline
with spread placement, the report's path and decision in the job's logs, each training actor on a node of its own,
and a wrong token refused. A spread placement the session's one-node cluster cannot give failing as a config error
is tests/integration/test_multinode.py."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.ray


def test_job_on_a_token_authenticated_three_node_cluster_spreads_the_variants(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "slow" / "cluster_driver.py"), str(out), str(free_port())]
        + ["--set", "training.placement.policy=spread", "--set", "validation.replica_sweep=[2]"]
        # two replicas from the start: the sweep finds them running instead of scaling up
        + ["--set", "serve.num_replicas=2"]
        + ["--set", "validation.concurrency=[1]", "--set", "validation.requests=4"]
        # the speed trial at its minimum, and no more training, data or serving than placement needs: placement
        # and the job are what is checked here (the smoke run checks what these leave out)
        + ["--set", "speed_trial.replicates=2", "--set", "speed_trial.pairs=2"]
        + [
            "--set",
            "training.steps=30",
            "--set",
            "training.eval_interval=0",
            "--set",
            "data.max_chars=100000",
        ]
        + ["--set", "serve.int8=false", "--set", "validation.inprocess_reference=false"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    # shown with -s, or with the failure: how long the cluster and the job took, and where the job belonged
    print({k: res[k] for k in ("cluster_up_s", "job_s", "gcs_address")})
    logs = res["logs"]
    names = res["node_names"]  # node id -> the custom resource only that node has
    assert sorted(names.values()) == ["head_node", "node_a", "node_b"]

    # The job ran the pipeline; its status carries the gate (`phase2 run` exits 1 on REJECTED, so the job and
    # `ray job submit` fail), and its logs name the decision and the report.
    assert (out / "report.json").is_file(), logs[-12000:]
    report = json.loads((out / "report.json").read_text())
    decision = "APPROVED" if report["decision"]["approved"] else "REJECTED"
    assert (res["rc"] == 0) == report["decision"]["approved"], logs[-3000:]
    assert f"2d: decision {decision}" in logs and str(out / "report.md") in logs
    assert [s["status"] for s in report["stages"]] == ["ok"] * 6  # data, 2a, 2b, speed-trial, 2c, 2d
    assert report["environment"]["ray_cluster_resources"]["CPU"] == 3.0
    assert (out / "checkpoints" / "optimized" / "meta.json").exists()

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
