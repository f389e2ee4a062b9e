"""cluster.yaml passes Ray's own cluster-launcher validation (the schema `ray up` applies), and a typo fails it."""

import copy

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT


def validated(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_validator():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    prepared = validated(config)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head" and {"cpu_worker", "gpu_worker"} <= set(types)
    assert types["gpu_worker"]["min_workers"] == 0 and types["gpu_worker"]["max_workers"] >= 1
    head = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert "~/.ray/auth_token" in prepared["file_mounts"]


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c.__setitem__("max_worker", c.pop("max_workers")),  # misspelled top-level key
        lambda c: c["available_node_types"]["cpu_worker"].__setitem__("min_worker", 1),  # misspelled node key
        lambda c: c.__setitem__("head_node_type", "headd"),  # names no node type
    ],
)
def test_a_misspelled_key_fails_validation(edit):
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    edit(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validated(config)
