"""benchmarks/serve_bench.py --quick, in the session's Serve: the benchmark is code, so a refactor of the engine,
the client or the Serve glue cannot break it silently. Its measurements are printed, not asserted; what it must
produce is, and it must leave the session's Serve as it found it."""

import json

from ray import serve

from tests.conftest import benchmark


def test_serve_bench_quick_measures_every_target_side_by_side(serve_url, tmp_path, capsys):
    apps_before = set(serve.status().applications)
    serve_bench = benchmark("serve_bench")
    out = tmp_path / "serve.json"
    assert serve_bench.main(["--quick", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {t["target"].split(" ")[0] for t in res["targets"]} == {"TTFT", "aggregate", "replica", "failed"}
    assert all(isinstance(t["met"], bool) for t in res["targets"])
    failed = next(t for t in res["targets"] if t["target"].startswith("failed"))
    assert failed["value"] == 0 and failed["met"]
    for level in ("c1", "c4", "c16"):
        assert res["levels"][level]["succeeded"] == res["levels"][level]["requests"] > 0
    assert res["floor"]["succeeded"] == res["floor"]["requests"] > 0  # the floor streams the same framing
    models = res["replica"]["models"]
    assert set(models) == {"baseline", "default", "default-int8"} == set(res["reference"])
    assert models["default-int8"]["weight_bytes"] < models["default"]["weight_bytes"]
    assert all(r["activation_bytes"] > 0 for r in res["reference"].values())
    assert res["bare_engine"]["models"] == {} and res["bare_replica"]["peak_rss_mb"] > 0
    assert "| TTFT p50 at c1" in capsys.readouterr().out
    assert set(serve.status().applications) == apps_before  # only its own apps, deleted
