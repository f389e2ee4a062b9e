"""benchmarks/gpu_check.py --quick on the CPU, in this process: the benchmark is code, so a refactor of the core
it drives cannot break it silently. The GPU config's variants (the optimized one with fused AdamW and bf16
autocast; compile is dropped on the CPU) on a tiny model, then generation. That it imports neither Ray nor
pydantic is tests/integration/test_gpu_check.py (a process of its own, both imports blocked)."""

import json

import pytest

from tests.conftest import benchmark


def test_gpu_check_quick_trains_both_variants_and_generates_on_the_cpu(tmp_path, capsys):
    gpu_check = benchmark("gpu_check")
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    res = json.loads(out.read_text())
    # the JSON line GPU machines' logs carry is the same result
    line = next(x for x in stdout.splitlines() if x.startswith("GPU_CHECK_JSON "))
    assert json.loads(line.split(" ", 1)[1]) == res
    assert res["machine"]["device"] == "cpu" and "gpu" not in res["machine"]
    assert res["peaks_measured"]["float32"] > 0 and res["peaks_measured"]["bfloat16"] > 0
    assert res["datasheet_bf16_peak"] is None and res["generation_cuda_max_allocated_mb"] is None
    tr = res["training"]
    assert set(tr) == {"baseline", "optimized"}  # configs/gpu.yaml's variants
    for r in tr.values():
        assert r["status"] == "ok" and r["steps"] == 30 and r["params"] > 0
        assert r["tokens_per_s"] > 0 and r["step_ms"]["n"] == 30 - 5 and r["final_val_loss"] > 0
        assert r["mfu_vs_measured"] > 0 and r["flops_per_token"] > 0
        assert r["cuda_max_allocated_mb"] is None and r["mfu_vs_datasheet_bf16"] is None
    opt = tr["optimized"]["optimizations"]
    assert [c["name"] for c in opt] == ["fused_adamw", "bf16"]  # compile off on the CPU quick run
    # MFU against the peak of the dtype each variant computes in: bf16 autocast against the bf16 matmul's
    for name, dtype in (("baseline", "float32"), ("optimized", "bfloat16")):
        r = tr[name]
        achieved = r["flops_per_token"] * r["tokens_per_s"]
        assert r["mfu_vs_measured"] == pytest.approx(achieved / res["peaks_measured"][dtype])
    sp = tr["optimized"]["speedup"]
    assert sp["ci_low"] <= sp["ratio"] <= sp["ci_high"]
    assert "val_loss_delta_pct" in tr["optimized"] and "speedup" not in tr["baseline"]
    assert [g["concurrency"] for g in res["generation"]] == [1, 4]
    for g in res["generation"]:
        assert g["requests"] == 6 and g["ttft_ms"]["n"] == 6 and g["tokens_per_s"] > 0
    assert res["wall_s"] > 0 and "speedup" in stdout and "TTFT p50" in stdout
