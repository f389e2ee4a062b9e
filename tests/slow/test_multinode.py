"""Placement on more than one node: the smoke pipeline on a simulated three-node cluster (its own processes, see
multinode_driver.py). A spread placement the cluster cannot give failing as a config error is
tests/integration/test_multinode.py."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.ray


def test_spread_puts_each_variant_on_its_own_node(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "slow" / "multinode_driver.py"), str(out), str(free_port())]
        + ["--set", "training.placement.policy=spread", "--set", "validation.replica_sweep=[2]"]
        + ["--set", "validation.concurrency=[1]", "--set", "validation.requests=4"]
        # the speed trial at its minimum: placement is what is checked here
        + ["--set", "speed_trial.replicates=2", "--set", "speed_trial.pairs=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    names = res["node_names"]  # node id -> the custom resource only that node has
    assert sorted(names.values()) == ["head_node", "node_a", "node_b"]
    assert res["rc"] in (0, 1), res  # approved or rejected: every stage ran

    report = json.loads((out / "report.json").read_text())
    assert [s["status"] for s in report["stages"]] == ["ok"] * 6  # data, 2a, 2b, speed-trial, 2c, 2d
    assert (out / "report.md").exists() and (out / "checkpoints" / "optimized" / "meta.json").exists()
    p = report["placement"]
    assert p["policy"] == "spread" and p["strategy"] == "STRICT_SPREAD"
    assert {n["node_id"] for n in p["nodes"]} == set(names)
    # The STRICT_SPREAD group put baseline and optimized on two different nodes of this cluster.
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
