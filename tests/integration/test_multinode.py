"""Placement requests the session's one-node cluster cannot give fail as config errors (the simulated three-node
cluster is tests/slow/test_cluster_job.py)."""

import pytest

from phase2_ray.cli import main
from tests.conftest import ROOT

pytestmark = pytest.mark.ray


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
