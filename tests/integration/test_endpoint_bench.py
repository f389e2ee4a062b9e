"""benchmarks/endpoint_bench.py --quick, in the session's Ray and Serve: the benchmark is code, so a refactor of the
endpoint path cannot break it silently. Its measurements are printed, not asserted; what it must produce is."""

import json

from ray import serve

from tests.conftest import benchmark


def test_endpoint_bench_quick_compares_our_engine_with_transformers_serve(serve_url, tmp_path, capsys):
    apps_before = set(serve.status().applications)
    bench = benchmark("endpoint_bench")
    out = tmp_path / "endpoint.json"
    assert bench.main(["--quick", "--arch", "llama", "--out", str(out)]) == 0  # gpt2: test_endpoints.py
    res = json.loads(out.read_text())
    assert res["model"]["arch"] == "llama"
    eps = res["comparison"]["endpoints"]
    assert set(eps) == {"baseline", "tf", "tf_cb"}
    for m, row in eps.items():  # every endpoint measured whole at both levels
        assert row["success_rate"] == 1.0 and row["ttft_p50_ms_c1"] > 0 and row["tok_s_c4"] > 0, m
        assert row["tokens"]["output_tokens_from"] == "usage.completion_tokens"
    assert set(res["comparison"]["verdicts"]) == {"tf", "tf_cb"}
    assert all(
        v["outcome"] in ("approved", "rejected", "inconclusive")
        for v in res["comparison"]["verdicts"].values()
    )
    assert res["floor"]["succeeded"] == res["floor"]["requests"] > 0
    sens = res["sensitivity"]["runs"]
    assert set(sens) == {"0", "30"} and all(r["n"] == 1 and len(r["results"]) == 1 for r in sens.values())
    assert {t["target"].split(":")[0] for t in res["targets"]} >= {"A/A", "+30% per-token delay"}
    assert all(isinstance(t["met"], bool) for t in res["targets"])
    assert "| phase2 (Ray Serve) |" in capsys.readouterr().out
    assert set(serve.status().applications) == apps_before  # its own apps only, deleted


def test_endpoint_servers_self_check_quick(capsys):
    """The helpers the endpoint tests and bench stand on: transformers serve up, the proxy slower by its delay."""
    servers = benchmark("endpoint_servers")
    assert servers.main(["--quick"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # transformers serve's streamer groups tokens into events by timing and text: counts differ between requests
    assert out["direct"]["events"] >= 2 and out["proxy +5 ms/event"]["events"] >= 2
