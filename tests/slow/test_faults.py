"""Faults in 2c: a Serve replica SIGKILLed under load. Nothing hangs (every request has a timeout), the failures are
counted by category, the success-rate gate fails, and Serve replaces the replica, which then serves again. Before
it, a bounded soak on the same application; after it, a diverging training run."""

import os
import signal
import threading
import time
from dataclasses import replace

import httpx
import pytest
import torch

from phase2_ray.config import ServeConfig, TargetsConfig
from phase2_ray.core.checkpoint import checkpoint_files
from phase2_ray.core.model import GPT, GPTConfig
from phase2_ray.loadtest.client import run_requests
from phase2_ray.loadtest.plan import Endpoint, LevelSpec
from phase2_ray.report.gates import evaluate_gates
from phase2_ray.report.serving import request_frame
from phase2_ray.report.stats import summarize_requests
from tests.conftest import free_port

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def served(serve_url, tiny_corpus):
    """One application for the module (a Serve start costs seconds): the soak runs first, on a fresh replica,
    then the kill test, which ends with the replaced replica serving again."""
    from ray import serve

    from phase2_ray.serving.build import APP_NAME, build_app, plain_specs

    _, tok, *_ = tiny_corpus
    cfg = dict(vocab_size=tok.get_vocab_size(), block_size=64, n_layer=1, n_head=2, d_model=16, dropout=0.0)
    torch.manual_seed(0)
    files = checkpoint_files(GPT(GPTConfig(**cfg)), {"model": cfg}, tok.to_str())
    sc = ServeConfig(cpus_per_replica=0, max_batch_size=16, max_waiting=64, int8=False)
    serve.run(build_app(plain_specs({"tiny": files}), sc), name=APP_NAME, route_prefix="/")
    yield serve_url
    serve.delete(APP_NAME)


def test_soak_1000_requests_at_c16(served):
    """A bounded soak on loopback: no errors, the replica's memory flat, latency the same at the end as at the
    start. Bounds: RSS growth <= 10% after warm-up; p50 and p90 of TTFT and E2E in the last quarter within 2x of
    the first quarter's (this shared 2-core VM's speed drifts, measured up to 1.5x within one run; a leak or a
    growing queue shows as a climb well past that). 1,000 requests (was 2,000): quarters of 250 still give
    stable p50/p90, and it is the same replica, warm-up and bounds."""
    from phase2_ray.serving.build import replica_stats

    prompts = ["def f(x):", "import os", "class A:", "return"]
    ep = Endpoint(
        base_url=served, prompts=prompts, max_tokens=8, temperature=0.8, top_k=20, seed=0, timeout_s=30
    )
    run_requests(ep, LevelSpec(model="tiny", n=100, concurrency=16))  # warm-up: allocator, caches, routing
    before = replica_stats(1)[0]
    t0 = time.time()
    recs = run_requests(ep, LevelSpec(model="tiny", n=1000, concurrency=16))
    took = time.time() - t0
    after = replica_stats(1)[0]
    assert after["pid"] == before["pid"]  # the same replica served all of it
    assert len(recs) == 1000 and all(r["ok"] for r in recs), [r["error"] for r in recs if not r["ok"]][:3]
    growth = after["rss_mb"] / before["rss_mb"] - 1
    assert growth <= 0.10, f"replica RSS grew {growth:.1%}"
    recs.sort(key=lambda r: r["start"])
    first, last = recs[:250], recs[-250:]
    shift = {}
    for metric in ("ttft_ms", "e2e_ms"):
        a = summarize_requests(request_frame(first))[metric]
        b = summarize_requests(request_frame(last))[metric]
        for p in ("p50", "p90"):
            shift[f"{metric} {p}"] = b[p] / a[p]
            assert 1 / 2 <= b[p] / a[p] <= 2, (metric, p, a[p], b[p])
    print(
        f"soak: 1000 requests in {took:.1f}s, RSS {before['rss_mb']:.1f} -> {after['rss_mb']:.1f} MB; last/first {shift}"
    )


def test_replica_killed_under_load(served):
    N = 480
    from phase2_ray.serving.build import replica_stats

    before = replica_stats(1)[0]
    out: dict = {}
    ep = Endpoint(
        base_url=served, prompts=["def f(x):"], max_tokens=48, temperature=0.8, top_k=20, seed=0, timeout_s=10
    )
    load = threading.Thread(
        target=lambda: out.update(recs=run_requests(ep, LevelSpec(model="tiny", n=N, concurrency=16)))
    )

    def decode_steps() -> int:
        return replica_stats(1)[0]["models"]["tiny"]["decode_steps"]

    # The kill lands by the load's progress, not by the clock (a fixed 1.5 s came after all 120 requests had
    # finished on a fast machine): 16 requests of 48 tokens decode together, so after 100 decode steps two waves
    # have finished and the third is mid-stream (its first tokens sent: Serve cannot retry those elsewhere). The
    # load is long (N requests, ~30 waves) so that a stats call slowed by a busy machine cannot see it end first.
    s0 = decode_steps()
    t0 = time.time()
    load.start()
    # ... and only while sequences are mid-stream: 16 requests of one length admitted together finish together,
    # and a kill in the moment between two waves would cut nothing (Serve routes the next wave elsewhere).
    while time.time() - t0 < 60:
        st = replica_stats(1)[0]["models"]["tiny"]
        if st["decode_steps"] - s0 >= 100 and st["active"] >= 8:
            break
        time.sleep(0.02)
    os.kill(before["pid"], signal.SIGKILL)
    load.join(timeout=300)
    assert not load.is_alive(), "the load run hung after the replica died"
    recs = out["recs"]
    assert len(recs) == N
    summary = summarize_requests(request_frame(recs))
    failed = [r for r in recs if not r["ok"]]
    assert failed and summary["succeeded"] > 0  # some finished before the kill, some were cut
    # Every failure has a category, and the categories add up to the failures.
    assert all(r["error_type"] for r in failed)
    assert sum(summary["errors"].values()) == len(failed) == N - summary["succeeded"]
    # The success-rate gate sees the failures.
    gates = evaluate_gates({"training": {}, "inference": {"tiny": summary}}, TargetsConfig().model_dump())
    success = next(g for g in gates if g.name == "success_rate")
    assert not success.passed and success.value == summary["success_rate"] < 1.0

    # Serve replaced the replica: a new process answers, and requests succeed again.
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            after = replica_stats(1)[0]
            if after["pid"] != before["pid"]:
                break
        except Exception:  # noqa: BLE001 - no healthy replica yet
            pass
        time.sleep(0.5)
    else:
        pytest.fail("the killed replica was not replaced within 90 s")
    assert httpx.get(f"{served}/healthz", timeout=10).status_code == 200
    again = run_requests(replace(ep, prompts=["import os"]), LevelSpec(model="tiny", n=8, concurrency=4))
    assert all(r["ok"] for r in again)
    print(f"replica replaced {time.time() - t0:.1f}s after the load began; errors {summary['errors']}")


def test_diverging_run_is_rejected_with_its_reason_and_artifacts_kept(ray_cluster, tmp_path):
    """lr=10 without clipping: the loss blows past 10x its start within a couple of steps. The run stops there,
    its stage is FAILED with the reason, the decision is REJECTED (exit 1), and the report and CSVs are written."""
    import json

    from phase2_ray.cli import main
    from tests.conftest import ROOT

    out = tmp_path / "run"
    rc = main(
        ["run", "-c", str(ROOT / "configs" / "smoke.yaml"), "--output", str(out), "--quiet"]
        + ["--set", "training.lr=10", "--set", "training.min_lr=1", "--set", "training.grad_clip=0"]
        + ["--set", "training.warmup_steps=1", "--set", f"serve.port={free_port()}"]
        + ["--set", "validation.capacity.enabled=false"]  # what 2c does after a diverged run is not the point
    )
    assert rc == 1
    report = json.loads((out / "report.json").read_text())
    assert report["decision"]["approved"] is False
    for v in ("baseline", "optimized"):
        t = report["training"][v]
        assert t["status"] == "diverged" and t["steps"] <= 5 and "divergence_factor" in t["error"]
        stage = next(s for s in report["stages"] if s["variant"] == v)
        assert stage["status"] == "failed" and "exceeds 10 x" in stage["detail"]
    failed = [g for g in report["decision"]["gates"] if g["name"] == "training_completed"]
    assert len(failed) == 2 and not any(g["passed"] for g in failed)
    for name in ("report.md", "report.html", "steps.csv", "gates.csv"):
        assert (out / name).stat().st_size > 0
    assert "DIVERGED" in (out / "report.md").read_text()
