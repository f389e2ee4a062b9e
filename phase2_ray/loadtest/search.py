"""One capacity search through the load clients: open-loop levels, each drained before the next, that
loadtest.capacity's CapacitySearch chooses (Ray glue: the clients are actors)."""

from __future__ import annotations

import time

import ray

from phase2_ray.config.serving import CapacityConfig
from phase2_ray.loadtest.actors import run_level
from phase2_ray.loadtest.capacity import CapacitySearch, Slo, level_outcome, requests_to_show
from phase2_ray.loadtest.plan import Endpoint, LevelSpec


def capacity_search(
    clients: list, endpoint: Endpoint, model: str, cap: CapacityConfig, slo: Slo, *, level_prefix: str
) -> tuple[dict, list[dict]]:
    """One search of `model` at `endpoint`: open-loop Poisson levels from `cap.start_rps` (loadtest.capacity
    decides the next rate), each drained before the next; latency counts from each request's scheduled arrival.
    Returns the search's result (every level, `search_s`) and its request records."""
    search = CapacitySearch(
        goodput_min=cap.goodput_min,
        start_rps=cap.start_rps or 4.0,
        rel_tol=cap.rel_tol,
        max_levels=cap.max_levels,
        max_rps=cap.max_rps,
    )
    t0 = time.time()
    first, records = 0, []
    while (rate := search.next_rate()) is not None:
        confirm = search.confirming
        n = max(cap.min_requests, round(rate * cap.level_s * (search.confirm_factor if confirm else 1)))
        if confirm:
            n = max(n, requests_to_show(cap.goodput_min))
        level = f"{level_prefix}:{len(search.levels)}"
        cpu0 = sum(ray.get([c.cpu_s.remote() for c in clients]))
        recs = run_level(
            clients,
            endpoint,
            LevelSpec(
                model=model,
                level=level,
                round=0,
                n=n,
                concurrency=cap.max_inflight,
                request_rate=rate,
                first_index=first,
                stop_when_full=True,
                exact_rate=True,
            ),
        )
        cpu = sum(ray.get([c.cpu_s.remote() for c in clients])) - cpu0
        first += n
        records += recs
        sent = [r for r in recs if r["error_type"] != "not_sent"]
        o = level_outcome(recs, rate, slo, stopped_early=len(sent) < len(recs), confirm=confirm)
        o.client_cpu_ms_per_request = cpu * 1000.0 / len(sent) if sent else None
        search.observe(o)
        if time.time() - t0 > cap.max_s:
            search.stop(f"time budget spent (max_s={cap.max_s:g})")
    return {**search.result(), "search_s": time.time() - t0}, records
