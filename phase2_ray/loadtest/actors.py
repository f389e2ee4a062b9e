"""Load-generator actors: each runs the streaming client (loadtest.client) against the Serve endpoint and
reports its requests as records, and each level's TTFTs and counts to Ray's metrics."""

from __future__ import annotations

import time

import ray

from phase2_ray.loadtest.client import run_requests
from phase2_ray.loadtest.plan import Endpoint, LevelSpec
from phase2_ray.telemetry import RequestTelemetry


@ray.remote(num_cpus=0)
class LoadClient:
    """Runs on any node (num_cpus=0: it waits on sockets); records travel back to the driver as results, and
    each level's TTFTs and request counts also go to Ray's metrics."""

    def __init__(self, run_id: str) -> None:
        self.telemetry = RequestTelemetry(run_id)
        self.busy_cpu_s = 0.0

    def cpu_s(self) -> float:
        """CPU seconds this generator has spent sending and reading requests (its own thread's time)."""
        return self.busy_cpu_s

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def run(self, endpoint: Endpoint, spec: LevelSpec) -> list[dict]:
        t = time.thread_time()  # the event loop runs on this thread: its time is the generator's own work
        records = run_requests(endpoint, spec)
        self.busy_cpu_s += time.thread_time() - t
        self.telemetry.record(records, spec.level)
        return records


def start_clients(n: int, run_id: str) -> list:
    """`n` load-generator actors named `<run_id>:2c:client<i>`, spread over the cluster's nodes."""
    return [
        LoadClient.options(name=f"{run_id}:2c:client{i}", scheduling_strategy="SPREAD").remote(run_id)
        for i in range(n)
    ]


def run_level(clients: list, endpoint: Endpoint, spec: LevelSpec) -> list[dict]:
    """One load level split over the clients (each its share of requests and concurrency: LevelSpec.shares);
    their records merged."""
    k = max(1, min(len(clients), spec.concurrency, spec.n))
    refs = [c.run.remote(endpoint, share) for c, share in zip(clients, spec.shares(k), strict=False)]
    return [r for part in ray.get(refs) for r in part]
