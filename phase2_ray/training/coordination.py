"""The driver's helper actors for a training stage: the core pool, the start barrier and the training-state store.

Kept apart from the training actor (and free of torch) because each runs in a process of its own: importing
torch there would cost every run seconds of CPU for actors that only hold numbers and bytes."""

from __future__ import annotations

import asyncio
import time

import ray

from phase2_ray.training.placement import CoreAllocator

# Holds the node's free cores for the run; costs no CPU of its own.
CorePool = ray.remote(num_cpus=0)(CoreAllocator)


@ray.remote(num_cpus=0)
class StartBarrier:
    """Holds every concurrent actor until all have finished preparing (an `auto` probe, measuring the matmul peak), so
    their timed training loops run at the same time: a loop that starts later measures a different machine."""

    def __init__(self, parties: int, timeout_s: float = 900.0) -> None:
        self.timeout_s = timeout_s
        self.arrived = 0
        self.parties = parties
        self.all_in = asyncio.Event()

    async def wait(self) -> float:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.all_in.set()
        try:
            # A backstop: an actor that died before arriving must not hold the others forever.
            await asyncio.wait_for(self.all_in.wait(), timeout=self.timeout_s)
        except asyncio.TimeoutError:
            pass
        return time.time()


@ray.remote(num_cpus=0)
class TrainStateStore:
    """The latest saved training state of every run, in an actor the driver owns: it outlives a training actor's
    process, so the restarted actor (Ray retries its `train` call) resumes from there. With storage.uri only the
    state's URI is kept here."""

    def __init__(self) -> None:
        self.latest: dict[str, dict] = {}
        self.attempts: dict[str, list[dict]] = {}

    def begin(self, key: str, pid: int) -> tuple[int, float]:
        """Registers an attempt of run `key`; returns (attempt number from 1, start time of the first)."""
        self.attempts.setdefault(key, []).append({"pid": pid, "start": time.time()})
        return len(self.attempts[key]), self.attempts[key][0]["start"]

    def put(self, key: str, step: int, state: dict, info: dict) -> None:
        self.latest[key] = {"step": step, "state": state, "info": info}

    def get(self, key: str) -> dict | None:
        return self.latest.get(key)

    def export(self) -> dict[str, dict]:
        """Every run's latest state: what the driver writes to the run directory for `--resume`."""
        return self.latest

    def status(self) -> dict:
        """{run key: {"step": last saved step, "attempts": n, "pid": pid of the latest attempt}}."""
        return {
            k: {"step": self.latest.get(k, {}).get("step"), "attempts": len(a), "pid": a[-1]["pid"]}
            for k, a in self.attempts.items()
        }
