"""benchmarks/verdict_bench.py --quick: the benchmark is code, so a refactor of the verdict path cannot break it
silently. It runs in this process on the session's Ray cluster, every series once or twice on tiny runs."""

import json

import pytest

from tests.conftest import benchmark

pytestmark = pytest.mark.ray


def test_verdict_bench_quick_runs_every_series(ray_cluster, tmp_path, capsys):
    verdict_bench = benchmark("verdict_bench")
    out = tmp_path / "verdict.json"
    assert verdict_bench.main(["--quick", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    res = json.loads(out.read_text())
    s = res["summary"]
    assert s["aa_runs"] == 2 and s["power_runs"] == 1 and s["default_runs"] == 1
    assert s["compare_same_code_pairs"] == 1 and s["compare_slowdown_pairs"] == 1
    assert s["known_effect_alone"] > 1.0  # fused AdamW on many small tensors is faster, measured alone
    for r in res["aa"]:
        # an A/A run is a no-op: whatever the trial measured, the speedup gate does not pass
        assert not r["speedup_approved"] and "eager fp32" in str(r["stack"])
        assert r["ci"][0] <= r["ratio"] <= r["ci"][1]
    # the default series runs `optimized` as `auto`: its probe record is in the report, and it chose the fastest
    # candidate it accepted, eager fp32 first
    auto = res["default"][0]["auto"]
    names = [x["name"] for x in auto["candidates"]]
    assert names[0] == "eager-fp32" and auto["chosen"] in names
    assert auto["chosen"] == res["default"][0]["auto_chose"]
    chosen = next(x for x in auto["candidates"] if x["name"] == auto["chosen"])
    # eager fp32 unless a candidate is faster beyond noise (its whole round-paired interval above the threshold)
    assert chosen["accepted"]
    assert chosen["name"] == "eager-fp32" or chosen["ci_low"] > 1 + auto["min_gain_pct"] / 100
    assert (chosen["name"] == "eager-fp32") == (not any(x["faster"] for x in auto["candidates"]))
    assert "A/A:" in stdout and "compare:" in stdout
    assert ray_cluster.is_initialized()  # the bench left the session's cluster running
