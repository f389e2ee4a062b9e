"""benchmarks/verdict_bench.py --quick: the benchmark is code, so a refactor of the verdict path cannot break it
silently. It starts its own Ray in a subprocess and runs every series once or twice on tiny runs."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_verdict_bench_quick_runs_every_series(tmp_path):
    out = tmp_path / "verdict.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "verdict_bench.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    s = res["summary"]
    assert s["aa_runs"] == 2 and s["power_runs"] == 1 and s["default_runs"] == 1
    assert s["compare_same_code_pairs"] == 1 and s["compare_slowdown_pairs"] == 1
    assert s["known_effect_alone"] > 1.0  # fused AdamW on many small tensors is faster, measured alone
    for r in res["aa"]:
        # an A/A run is a no-op: whatever the trial measured, the speedup gate does not pass
        assert not r["speedup_approved"] and "eager fp32" in str(r["stack"])
        assert r["ci"][0] <= r["ratio"] <= r["ci"][1]
    assert "A/A:" in proc.stdout and "compare:" in proc.stdout
