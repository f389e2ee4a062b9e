"""benchmarks/gpu_check.py refuses a config with missing keys, naming them (the run itself is
tests/integration/test_gpu_check.py). Run in this process (the script's own `__main__`): the refusal comes before
any work."""

import runpy
import sys

import pytest

from tests.conftest import ROOT


def test_gpu_check_names_missing_keys(tmp_path, monkeypatch):
    cfg = tmp_path / "partial.yaml"
    cfg.write_text("model: {block_size: 64}\nvariants: {baseline: {}}\n")
    script = str(ROOT / "benchmarks" / "gpu_check.py")
    monkeypatch.setattr(sys, "argv", [script, "--config", str(cfg)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(script, run_name="__main__")
    message = str(exit_.value.code)  # sys.exit(message): printed to stderr with exit status 1
    assert "model.n_layer" in message and "training.lr" in message
