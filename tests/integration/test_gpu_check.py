"""benchmarks/gpu_check.py, the script GPU machines run without Ray or pydantic: run here on the CPU with both
imports blocked, on a tiny config, so that the core it drives is proven free of them and the script works."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

BLOCKER = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "pydantic"):
            raise ImportError(f"{name} imported: the GPU check must run without it")
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

TINY = """
data: {max_chars: 100000, vocab_size: 512}
model: {block_size: 64, n_layer: 1, n_head: 2, d_model: 32}
training: {steps: 30, batch_size: 8, lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 5, skip_steps: 5}
variants:
  baseline: {}
  optimized: {fused_adamw: true}
validation: {prompt_tokens: 8, max_tokens: 16, concurrency: [1, 4]}
"""


def test_gpu_check_runs_on_the_core_alone(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    script = str(ROOT / "benchmarks" / "gpu_check.py")
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, script, "--config", str(cfg), "--requests", "6", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        # one torch thread, as the suite's own process (conftest): two spin against the Ray actors' busy cores
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("GPU_CHECK_JSON "))
    res = json.loads(line.split(" ", 1)[1])
    assert res["machine"]["device"] == "cpu"
    tr = res["training"]
    assert set(tr) == {"baseline", "optimized"}
    for r in tr.values():
        assert r["status"] == "ok" and r["steps"] == 30 and r["tokens_per_s"] > 0
        assert 0 < r["mfu_vs_measured"] < 1 and r["cuda_max_allocated_mb"] is None
    assert "fused_adamw" in [c["name"] for c in tr["optimized"]["optimizations"]]
    sp = tr["optimized"]["speedup"]
    assert sp["ci_low"] <= sp["ratio"] <= sp["ci_high"]
    # Same seed, same data order: fused AdamW lands on the baseline's loss.
    assert abs(tr["optimized"]["val_loss_delta_pct"]) < 0.1
    assert [g["concurrency"] for g in res["generation"]] == [1, 4]
    assert all(g["ttft_ms"]["n"] == 6 and g["tokens_per_s"] > 0 for g in res["generation"])
    assert "speedup" in proc.stdout and "TTFT p50" in proc.stdout
