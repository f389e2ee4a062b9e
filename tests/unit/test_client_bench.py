"""benchmarks/client_bench.py --quick: the benchmark is code (a refactor of the client cannot break it silently).
Every client streams every request whole from the local server; what they cost is printed, not asserted."""

import json

from tests.conftest import benchmark


def test_client_bench_quick_streams_every_request_with_both_clients(tmp_path, capsys):
    client_bench = benchmark("client_bench")
    out = tmp_path / "client.json"
    assert client_bench.main(["--quick", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    for r in res["rounds"]:
        for name in ("httpx", "aiohttp", "phase2"):
            assert r[name]["ok"] == r[name]["requests"] == 60, (name, r)
            assert r[name]["cpu_ms_per_request"] > 0
    assert res["ratio_httpx_over_aiohttp"] > 0 and "httpx / aiohttp" in capsys.readouterr().out
