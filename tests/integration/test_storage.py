"""The smoke pipeline with storage.uri set: training writes there, the replicas and the driver read from there,
only the URI crosses the object store. The URI round trips themselves are in tests/unit/test_storage.py."""

import json
from pathlib import Path

import pytest

from phase2_ray.cli import main
from tests.conftest import ROOT, free_port


@pytest.mark.ray
def test_pipeline_with_a_storage_uri(ray_cluster, tmp_path):
    store = tmp_path / "store"
    out = tmp_path / "run"
    rc = main(
        ["run", "-c", str(ROOT / "configs" / "smoke.yaml"), "--output", str(out), "--quiet"]
        + ["--set", f"storage.uri=file://{store}", "--set", f"serve.port={free_port()}"]
        + ["--set", "validation.replica_sweep=[]", "--set", "validation.concurrency=[1]"]
    )
    assert rc in (0, 1)
    report = json.loads((out / "report.json").read_text())
    run_id = report["run_id"]
    for v in ("baseline", "optimized"):
        uri = report["training"][v]["checkpoint_uri"]
        assert uri == f"file://{store}/{run_id}/{v}"
        at_uri = Path(store / run_id / v)
        # The run directory's copy is the stored one, byte for byte.
        for name in ("model.safetensors", "meta.json", "tokenizer.json"):
            assert (at_uri / name).read_bytes() == (out / "checkpoints" / v / name).read_bytes()
    # Each replica loaded its models from the URI, not from bytes sent through the object store.
    sources = report["serving"]["replicas"][0]["checkpoint_sources"]
    assert sources["baseline"] == report["training"]["baseline"]["checkpoint_uri"]
    assert sources["optimized-int8"] == report["training"]["optimized"]["checkpoint_uri"]
    assert all(report["inference"][m]["success_rate"] == 1.0 for m in sources)
