"""benchmarks/gpu_check.py refuses a config with missing keys, naming them (the run itself is
tests/integration/test_gpu_check.py)."""

import subprocess
import sys

from tests.conftest import ROOT


def test_gpu_check_names_missing_keys(tmp_path):
    cfg = tmp_path / "partial.yaml"
    cfg.write_text("model: {block_size: 64}\nvariants: {baseline: {}}\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "model.n_layer" in proc.stderr and "training.lr" in proc.stderr
