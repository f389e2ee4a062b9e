"""benchmarks/llama_bench.py --quick: the benchmark is code. What it measures is printed, not asserted; what it must
produce is: every comparison with its rounds, the same greedy tokens on both sides, MFU from a measured peak."""

import json

from tests.conftest import benchmark


def test_llama_bench_quick_produces_every_comparison(tmp_path, capsys):
    llama_bench = benchmark("llama_bench")
    out = tmp_path / "llama.json"
    assert llama_bench.main(["--quick", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    m = res["models"]["quick"]
    assert m["decode"]["greedy_tokens_equal"] is True
    for row in (m["decode"]["batch1"], m["decode"]["batch16"], m["decode"]["mixed16"], m["training"]):
        assert row["ours"] > 0 and row["theirs"] > 0 and row["range"][0] <= row["ratio"] <= row["range"][1]
    t = m["training"]
    assert 0 < t["mfu_ours"] < 1 and t["peak_flops"] > 0 and t["flops_per_token"] > 0
    assert m["int8"]["int8_bytes"] < m["int8"]["fp32_bytes"]
    assert [t["met"] in ("met", "missed", "undecided") for t in res["targets"]] == [True] * 3
    assert "target decode batch 1" in capsys.readouterr().out
