"""Placement on more than one node: the smoke pipeline on a simulated three-node cluster (its own processes, see
multinode_driver.py), and a spread placement the cluster cannot give failing as a config error."""

import json
import subprocess
import sys

import pytest

from phase2_ray.cli import main
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.ray


def test_spread_puts_each_variant_on_its_own_node(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "multinode_driver.py"), str(out), str(free_port())]
        + ["--set", "training.placement.policy=spread", "--set", "validation.replica_sweep=[2]"]
        + ["--set", "validation.concurrency=[1]", "--set", "validation.requests=4"],
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


def test_spread_without_enough_nodes_is_a_config_error(ray_cluster, tmp_path, capsys):
    """One node cannot hold two STRICT_SPREAD bundles: exit 2 naming the field, the need and the nodes."""
    rc = main(
        ["run", "-c", str(ROOT / "configs" / "smoke.yaml"), "--output", str(tmp_path / "r"), "--quiet"]
        + ["--set", "training.placement.policy=spread", "--set", "training.placement.timeout_s=3"]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "training.placement.policy=spread" in err and "STRICT_SPREAD" in err and "CPU=2" in err
    assert "training.placement.policy=pack" in err
    assert not (tmp_path / "r" / "report.json").exists()


def test_gpu_config_on_a_cpu_only_cluster_is_a_config_error(ray_cluster, tmp_path, capsys):
    """configs/gpu.yaml asks for GPUs: on this CPU-only cluster it stops before training, naming the field."""
    rc = main(
        ["run", "-c", str(ROOT / "configs" / "gpu.yaml"), "--output", str(tmp_path / "r"), "--quiet"]
        + ["--set", "data.max_chars=100000", "--set", "data.vocab_size=512"]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "training.placement.gpus_per_actor=0.5 exceeds the cluster's 0 GPUs" in err
