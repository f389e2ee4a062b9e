"""One definition of each request metric, used by 2c's summaries, the capacity search and the in-process reference."""

import pandas as pd
import pytest

from phase2_ray.loadtest.capacity import Slo, _latency
from phase2_ray.loadtest.capacity import meets_slo as capacity_meets_slo
from phase2_ray.report.request_metrics import describe, meets_slo, spread_gap, tpot_ms
from phase2_ray.report.stats import summarize_requests, with_per_request


def rec(ttft=10.0, e2e=40.0, tokens=4, ok=True, **kw):
    return {"ok": ok, "ttft_ms": ttft, "e2e_ms": e2e, "output_tokens": tokens, "itl_ms": [], **kw}


def test_tpot_has_no_value_for_a_one_token_request():
    assert tpot_ms(40.0, 10.0, 4) == pytest.approx(10.0)
    assert tpot_ms(40.0, 10.0, 1) is None and tpot_ms(None, 10.0, 4) is None


def test_itl_spreads_a_write_over_its_tokens():
    assert spread_gap(12.0, 3) == [4.0, 4.0, 4.0] and sum(spread_gap(7.0, 7)) == pytest.approx(7.0)
    assert spread_gap(5.0, 0) == []


def test_goodput_has_one_rule_everywhere():
    """A one-token request is judged on TTFT alone (it has no TPOT), in 2c's goodput and in the capacity search."""
    slo = {"ttft_ms": 50.0, "tpot_ms": 5.0}
    records = [
        rec(),  # TPOT 10 ms > 5: not good
        rec(e2e=20.0),  # TPOT 3.3 ms: good
        rec(e2e=500.0, tokens=1),  # one token, TTFT 10 ms: good (its E2E is not a TPOT)
        rec(ttft=60.0, e2e=61.0, tokens=1),  # TTFT over: not good
        rec(ok=False),
    ]
    flags = [meets_slo(r, slo["ttft_ms"], slo["tpot_ms"]) for r in records]
    assert flags == [False, True, True, False, False]
    assert [capacity_meets_slo(r, Slo(**slo)) for r in records] == flags
    frame = pd.DataFrame([{**r, "error_type": None, "start": 0.0, "end": 1.0} for r in records])
    s = summarize_requests(frame, slo)
    assert s["goodput"]["good_requests"] == 2 and s["goodput"]["fraction"] == pytest.approx(2 / 5)


def test_percentiles_and_tpot_agree_between_the_summaries():
    records = [rec(e2e=10.0 + 3.0 * i, tokens=4) for i in range(1, 11)] + [rec(tokens=1)]
    frame = pd.DataFrame([{**r, "error_type": None, "start": 0.0, "end": 1.0} for r in records])
    per = with_per_request(frame)
    assert per["tpot_ms"].isna().sum() == 1  # the one-token request
    tpots = [tpot_ms(r["e2e_ms"], r["ttft_ms"], r["output_tokens"]) for r in records]
    d = describe(x for x in tpots if x is not None)
    assert summarize_requests(frame)["tpot_ms"] == d
    lat = _latency(records)
    assert lat["tpot_p50_ms"] == pytest.approx(d["p50"]) and lat["ok"] == len(records)
