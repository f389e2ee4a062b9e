import pandas as pd
import pytest

from phase2_ray.report.stats import describe, summarize_requests, summarize_training


def rec(ok=True, ttft=10.0, e2e=40.0, n=4, start=0.0, end=1.0, err=None):
    return {
        "ok": ok,
        "ttft_ms": ttft if ok else None,
        "e2e_ms": e2e if ok else None,
        "output_tokens": n if ok else 0,
        "itl_ms": [10.0] * (n - 1) if ok else [],
        "start": start,
        "end": end,
        "error_type": err,
    }


def test_request_summary_follows_vllm_definitions():
    df = pd.DataFrame(
        [
            rec(start=0.0, end=0.5),
            rec(ttft=20.0, e2e=50.0, start=0.5, end=1.0),
            rec(False, err="timeout", start=1.0, end=2.0),
        ]
    )
    s = summarize_requests(df)
    assert (s["requests"], s["succeeded"]) == (3, 2)
    assert s["success_rate"] == pytest.approx(2 / 3)
    assert s["errors"] == {"timeout": 1}
    assert s["ttft_ms"]["p50"] == pytest.approx(15.0) and s["ttft_ms"]["n"] == 2  # failures not averaged in
    assert s["tpot_ms"]["mean"] == pytest.approx(10.0)  # (40-10)/3 and (50-20)/3
    assert s["itl_ms"]["n"] == 6
    assert s["output_tokens_per_s"] == pytest.approx(8 / 2.0)  # 8 tokens over the 2 s window


def test_nothing_measured_reports_nothing():
    assert describe([]) is None
    s = summarize_requests(pd.DataFrame([rec(False, err="http_500")]))
    assert s["ttft_ms"] is None and s["output_tokens_per_s"] is None and s["success_rate"] == 0


def test_training_summary_leaves_out_warmup_steps():
    s = summarize_training([5.0, 0.1, 0.1, 0.2], tokens_per_step=100, skip_steps=1)
    # tokens per step / median step: the same robust statistic as the step-time ratio
    assert s["tokens_per_s"] == pytest.approx(100 / 0.1)
    assert s["tokens_per_s_mean"] == pytest.approx(300 / 0.4)
    assert s["warmup_s"] == 5.0 and s["steady_steps"] == 3


def test_goodput_counts_requests_meeting_every_slo():
    rows = [
        # ttft 50, tpot (50-... ) : (e2e - ttft) / (tokens - 1)
        {
            "ok": True,
            "ttft_ms": 50.0,
            "e2e_ms": 150.0,
            "output_tokens": 11,
            "itl_ms": [],
            "start": 0.0,
            "end": 1.0,
        },
        {
            "ok": True,
            "ttft_ms": 200.0,
            "e2e_ms": 300.0,
            "output_tokens": 11,
            "itl_ms": [],
            "start": 0.0,
            "end": 1.0,
        },
        {
            "ok": True,
            "ttft_ms": 50.0,
            "e2e_ms": 1050.0,
            "output_tokens": 11,
            "itl_ms": [],
            "start": 0.0,
            "end": 2.0,
        },
        {
            "ok": False,
            "error_type": "timeout",
            "ttft_ms": None,
            "e2e_ms": None,
            "output_tokens": 0,
            "itl_ms": [],
            "start": 0.0,
            "end": 2.0,
        },
    ]
    s = summarize_requests(pd.DataFrame(rows), {"ttft_ms": 120.0, "tpot_ms": 40.0})
    # only the first meets both: TTFT 50 <= 120 and TPOT 10 <= 40 (the 2nd is late, the 3rd slow, the 4th failed)
    assert s["goodput"]["good_requests"] == 1 and s["goodput"]["fraction"] == 0.25
    assert s["goodput"]["requests_per_s"] == pytest.approx(1 / 2.0)


def test_progress_lines_come_every_interval_and_at_the_last_step(monkeypatch, capsys):
    """In "lines" mode (stdout not a terminal): one line per interval, throughput over that interval, no bar."""
    from types import SimpleNamespace

    from phase2_ray import telemetry

    clock = iter([100.0, 101.0, 105.0, 110.5, 112.0, 113.0])  # time.monotonic() at steps 1..6
    monkeypatch.setattr(telemetry, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    t = telemetry.TrainTelemetry(
        "lines-test", "v", "baseline seed 1", 6, 1000, progress="lines", interval_s=10
    )
    for step in range(1, 7):
        t.step(step, 5.0 - step / 10, 0.5)
    t.close()
    assert t.bar is None
    # The interval counts from the start of step 1 (99.5 s): 4 steps in 11 s, then 2 steps in 2.5 s.
    assert capsys.readouterr().out.splitlines() == [
        "[baseline seed 1] step 4/6 loss 4.6000 364 tok/s",
        "[baseline seed 1] step 6/6 loss 4.4000 800 tok/s",
    ]
    with pytest.raises(ValueError, match="progress="):
        telemetry.TrainTelemetry("lines-test", "v", "v", 6, 1000, progress="yes")


def test_log_every_prints_each_nth_step_unless_progress_is_off(capsys):
    from phase2_ray import telemetry

    for progress, want in (("lines", 2), ("off", 0)):
        t = telemetry.TrainTelemetry(
            "every-test", "v", "b", 4, 100, progress=progress, log_every=2, interval_s=1e9
        )
        for step in range(1, 5):
            t.step(step, 1.0, 0.01)
        out = [ln for ln in capsys.readouterr().out.splitlines() if "ms" in ln]
        assert len(out) == want, out
        assert all(ln.startswith("[b] step ") and ln.endswith("step 10.0 ms") for ln in out)
