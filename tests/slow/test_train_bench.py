"""benchmarks/train_bench.py --quick: the benchmark is code, so a refactor of the training path cannot break it
silently. It runs in this process on the session's Ray cluster: the plain loop before and after, the optimized
pair trained together, then each variant alone, and the speed trial, on a tiny model. What it measures is printed,
not asserted."""

import json

import pytest

from tests.conftest import benchmark

pytestmark = pytest.mark.ray


def test_train_bench_quick_measures_the_plain_loop_and_the_optimized_pair(ray_cluster, tmp_path, capsys):
    train_bench = benchmark("train_bench")
    out = tmp_path / "train.json"
    assert train_bench.main(["--quick", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["quick"] is True and set(res["models"]) == {"default"}
    m = res["models"]["default"]
    assert m["params"] > 0 and m["flops_per_token"] > 0
    assert set(m["variants"]) == {"baseline", "optimized"}
    for v in m["variants"].values():
        assert v["step_ms_p50"] > 0 and v["tokens_per_s"] > 0 and v["train_s"] > 0
        assert 0 < v["mfu"] < 1 and v["peak_flops"] > 0 and v["val_loss"] > 0
    # the plain loop ran before and after the actors; the baseline also ran alone, for the actor overhead
    p = m["plain_loop"]
    assert len(p["step_ms_p50_before_after"]) == 2 and all(x > 0 for x in p["step_ms_p50_before_after"])
    assert p["tokens_per_s"] > 0 and p["peak_flops"] > 0
    assert m["actor_isolated_baseline_step_ms_p50"] > 0 and m["actor_overhead_pct"] > -100
    # the optimized variant: the paired trial's interval, concurrent and alone (isolation `both`)
    o = m["variants"]["optimized"]
    sp = o["speedup"]
    assert sp["ci_low"] <= sp["ratio"] <= sp["ci_high"]
    assert o["concurrent_speedup"]["ratio"] > 0 and o["isolated_speedup"]["ratio"] > 0
    assert o["concurrent_vs_isolated_pct"] is not None and o["work_time_ratio"] > 0
    # it is `auto` in the default config: the probe's record, and it kept a candidate it accepted
    names = [c["name"] for c in o["auto"]["candidates"]]
    assert names[0] == "eager-fp32" and o["auto"]["chosen"] in names
    assert m["variants"]["baseline"]["speedup"] is None  # the baseline is what the others are compared with
    assert "Ray actor overhead" in stdout and "auto chose" in stdout and "paired trial" in stdout
    assert ray_cluster.is_initialized()  # the bench left the session's cluster running
