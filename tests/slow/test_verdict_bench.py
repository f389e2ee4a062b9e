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
    assert [s[k]["runs"] for k in ("aa", "known", "near", "default")] == [2, 1, 1, 1]
    assert s["capacity"]["runs"] == 1 and len(res["capacity"][0]["estimates"]) == 2
    # the serving A/A control: the baseline's checkpoint under a second name, its four ratios judged
    assert s["serving_aa"]["runs"] == 1 and s["serving_aa"]["ratios_judged"] == 4
    for r in res["aa"]:
        # an A/A run is a no-op: whatever the trial measured, it is rejected, and says why
        assert r["verdict"] == "fail" and r["outcome"] == "rejected" and "eager fp32" in str(r["stack"])
        assert r["ci"][0] <= r["ratio"] <= r["ci"][1] and 2 <= r["replicates"] <= 4
    # the known effect's stacks differ by the delay alone: not a no-op
    assert isinstance(res["known"][0]["stack"], dict)  # settings, not a no-op's reason
    # the default series runs `optimized` as `auto`: its probe record is in the report; eager fp32 unless a stack
    # was faster beyond noise (its whole round-paired interval above the threshold)
    auto = res["default"][0]["auto"]
    names = [x["name"] for x in auto["candidates"]]
    assert names[0] == "eager-fp32" and auto["chosen"] == res["default"][0]["auto_chose"]
    chosen = next(x for x in auto["candidates"] if x["name"] == auto["chosen"])
    assert chosen["accepted"]
    assert chosen["name"] == "eager-fp32" or chosen["ci_low"] > 1 + auto["min_gain_pct"] / 100
    assert (chosen["name"] == "eager-fp32") == (not any(x["faster"] for x in auto["candidates"]))
    assert "A/A:" in stdout and "compare:" in stdout and "capacity:" in stdout and "serving A/A:" in stdout
    # the plugin series: the optimized stack is a user's converter file, recorded with its source
    assert s["plugin_aa"]["runs"] == 1 and s["plugin_known"]["runs"] == 1
    pa = res["plugin_aa"][0]
    # the same optimizer as the baseline's: never approved (rejected once shown equivalent, else inconclusive)
    assert pa["outcome"] in ("rejected", "inconclusive")
    # the no-op guard fires when the trial shows the stack equivalent to the baseline, and only then
    assert pa["noop"] == (pa["relation"] == "equivalent")
    assert "plugin A/A:" in stdout
    assert ray_cluster.is_initialized()  # the bench left the session's cluster running
