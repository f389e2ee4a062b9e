"""The capacity search against the real stack: load-client actors, HTTP, Serve, and an engine whose service time
is known (`serve.min_step_ms` paces each decode step), so the true capacity under the SLO can be computed: 8 cache
slots, each request holding one for (TOKENS - 1) paced steps after its first token, is an M/D/8 queue under
Poisson arrivals, plus the stack's own fixed time to a first token (measured at the lowest level). The search
must land within 15% of that. Its first level offers more than the slots can ever serve: over-saturation must
stop that level early. The search alone, against a simulated queue, is tests/unit/test_capacity.py."""

import functools
import heapq
import random

import pytest
import torch

from phase2_ray.config import ServeConfig
from phase2_ray.config.serving import CapacityConfig
from phase2_ray.core.checkpoint import checkpoint_files
from phase2_ray.core.model import GPT, GPTConfig
from phase2_ray.loadtest.capacity import Slo

pytestmark = pytest.mark.ray

STEP_S = 0.050
TOKENS = 6  # the first token at admission, then 5 paced steps: 250 ms per request
SLOTS = 8  # at most 8 / 0.25 s = 32 requests/s
SERVICE_S = (TOKENS - 1) * STEP_S
SLO = Slo(ttft_ms=300.0, tpot_ms=1000.0)
GOODPUT = 0.9
ROUTE = "/slow"


@pytest.fixture(scope="module")
def slow_app(serve_url, tiny_corpus):
    from ray import serve

    from phase2_ray.serving.build import build_app, plain_specs

    _, tok, *_ = tiny_corpus
    cfg = dict(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=1, n_head=2, d_model=16, dropout=0.0)
    torch.manual_seed(0)
    files = checkpoint_files(GPT(GPTConfig(**cfg)), {"model": cfg}, tok.to_str())
    sc = ServeConfig(
        cpus_per_replica=0, max_batch_size=SLOTS, max_waiting=256, min_step_ms=STEP_S * 1000, api_key=None
    )
    serve.run(build_app(plain_specs({"slow": files}), sc), name="capacity-test", route_prefix=ROUTE)
    yield serve_url + ROUTE
    serve.delete("capacity-test")


def simulated_goodput(rate: float, fixed_s: float, n: int = 40_000, seed: int = 1) -> float:
    """Share of Poisson arrivals at `rate` whose first token comes within the TTFT SLO: FIFO over SLOTS slots
    of SERVICE_S each; a request admitted between steps waits for the running step (uniform over one step)."""
    rng = random.Random(seed)
    t, slots, good = 0.0, [0.0] * SLOTS, 0
    for _ in range(n):
        begin = max(t, heapq.heappop(slots)) + rng.uniform(0, STEP_S)
        heapq.heappush(slots, begin + SERVICE_S)
        good += begin - t + fixed_s <= SLO.ttft_ms / 1000
        t += rng.expovariate(rate)
    return good / n


@functools.cache
def true_capacity(fixed_s: float) -> float:
    lo, hi = 1.0, SLOTS / SERVICE_S
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if simulated_goodput(mid, fixed_s) >= GOODPUT else (lo, mid)
    return (lo + hi) / 2


def test_the_search_finds_the_known_knee_and_stops_an_over_saturated_level_early(
    slow_app, ray_cluster, cluster_job
):
    from phase2_ray.loadtest.actors import start_clients
    from phase2_ray.loadtest.plan import Endpoint
    from phase2_ray.loadtest.search import capacity_search

    # The knee is computed for this stack on cores it has to itself: the session's background cluster job (a
    # whole pipeline on a cluster of its own, tests/conftest.py) would add its own load to every latency.
    if cluster_job is not None:
        cluster_job.proc.wait(timeout=600)

    clients = start_clients(2, "capacity-test")
    # The first level offers 40 req/s, more than the 32 the slots can serve: the queue only grows, and the
    # level stops sending once 24 requests are in flight.
    cap = CapacityConfig(
        start_rps=40.0,
        level_s=5.0,
        min_requests=24,
        max_levels=10,
        rel_tol=0.1,
        max_s=180,
        max_inflight=24,
        goodput_min=GOODPUT,
    )
    endpoint = Endpoint(
        base_url=slow_app,
        prompts=["def main():", "import os", "class A:"],
        max_tokens=TOKENS,
        temperature=0.0,
        top_k=None,
        seed=0,
        timeout_s=30,
    )
    res, records = capacity_search(clients, endpoint, "slow", cap, SLO, level_prefix="cap")
    for c in clients:
        ray_cluster.kill(c)
    levels = res["levels"]
    first = levels[0]
    assert first["offered_rps"] == 40.0 and first["stopped_early"] and first["goodput_frac"] < GOODPUT
    first_recs = [r for r in records if r["level"] == "cap:0"]
    not_sent = [r for r in first_recs if r["error_type"] == "not_sent"]
    assert len(first_recs) == 200 and not_sent and not any(r["ok"] for r in not_sent)
    # what was not sent is the end of a client's schedule, from the first arrival that found its slots full on
    # (two clients, indices 0-99 and 100-199, each with its own arrivals and its share of the in-flight cap)
    for lo in (0, 100):
        share = [r for r in first_recs if lo <= r["index"] < lo + 100]
        unsent = [r["index"] for r in share if r["error_type"] == "not_sent"]
        sent_idx = [r["index"] for r in share if r["error_type"] != "not_sent"]
        assert not unsent or min(unsent) > max(sent_idx)

    # The stack's own time to a first token, from the lowest level (its queue is short): the model's first
    # token comes at admission, after half a step on average.
    low = min(levels, key=lambda lv: lv["offered_rps"])
    fixed_s = max(0.0, low["latency"]["ttft_p50_ms"] / 1000 - STEP_S / 2)
    truth = true_capacity(round(fixed_s, 3))
    print(
        {
            "truth": truth,
            "fixed_ms": fixed_s * 1000,
            "found": res["capacity_rps"],
            "ci": [res["ci_low"], res["ci_high"]],
        }
    )
    assert res["capacity_rps"] == pytest.approx(truth, rel=0.15), (truth, fixed_s, res["stop_reason"], levels)
    assert res["ci_low"] <= res["capacity_rps"] <= res["ci_high"]
    assert res["confirmed"] and levels[-1]["confirm"]
    # the generator kept to its schedule and its own cost was measured, level by level
    assert all(lv["valid"] for lv in levels)
    assert all(lv["client_cpu_ms_per_request"] > 0 for lv in levels)
