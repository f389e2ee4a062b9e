"""benchmarks/decode_bench.py --quick: the benchmark is code (a refactor of the decoder or the int8 kernels cannot
break it silently). What it measures is printed, not asserted; what it must produce is."""

import json

from tests.conftest import benchmark


def test_decode_bench_quick_measures_every_model_kernel_and_byte_count(tmp_path, capsys):
    decode_bench = benchmark("decode_bench")
    out = tmp_path / "decode.json"
    assert decode_bench.main(["--quick", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    m = res["models"]["default"]
    kernels = [k for k in m["auto_probe"]]
    assert m["auto_kernel"] in kernels
    for key in ["fp32", *(f"int8-{k}" for k in kernels), "fp32, bf16 KV"]:
        s = m["single_stream"][key]
        assert (
            s["tok_s_median"] > 0
            and s["rounds"] == 2
            and s["ratio_min"] <= s["ratio_median"] <= s["ratio_max"]
        )
    assert m["single_stream"]["fp32"]["ratio_median"] == 1.0
    for key, b in m["bytes"].items():
        assert b["total"] == b["weights"] + b["kv_cache"] + b["activations"] and b["activations"] > 0, key
    assert m["bytes"]["fp32, bf16 KV"]["kv_cache"] * 2 == m["bytes"]["fp32"]["kv_cache"]
    assert "auto chose int8 kernel" in capsys.readouterr().out
