"""Which cores each concurrent training actor may use. Plain Python: the Ray glue wraps it in an actor."""

from __future__ import annotations


class CoreAllocator:
    """Hands out disjoint sets of cores on one node and takes them back.

    Ray never runs more actors than the node's CPUs allow, so when logical CPUs equal cores an actor that asks
    always finds a free set; `None` (run unpinned) only when more logical CPUs than cores were declared."""

    def __init__(self, cores: list[int]) -> None:
        self.free = sorted(cores)
        self.held: dict[str, list[int]] = {}

    def acquire(self, n: int, holder: str) -> list[int] | None:
        """`n` free cores for `holder`; a holder that asks again (a restarted actor) gets the cores it held."""
        if holder in self.held:
            return self.held[holder]
        if n < 1 or len(self.free) < n:
            return None
        got, self.free = self.free[:n], self.free[n:]
        self.held[holder] = got
        return got

    def release(self, holder: str) -> None:
        self.free = sorted(self.free + self.held.pop(holder, []))


def pin_all_threads(cores: list[int]) -> None:
    """Sets the affinity of every thread of this process (a process-level call moves only the calling thread,
    and torch's intra-op threads keep the mask they were created with)."""
    import os

    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cores)
        except (OSError, ProcessLookupError):
            pass  # the thread ended meanwhile


class CoreRotation:
    """Rotates concurrent actors through the same core slots on a shared wall-clock period (a crossover design).

    Cores of one machine are not equal (measured here: one core's matmul peak ~8% above the other's), so an actor
    pinned to one core for the whole run would carry that core's bias into the speedup. Every actor computes its
    slot as (index + floor(now / period)) mod slots, so all actors move at the same moments and each spends about
    the same time on every core."""

    def __init__(self, slots: list[list[int]], index: int, period_s: float) -> None:
        self.slots = slots
        self.index = index
        self.period_s = period_s
        self.current: list[int] | None = None
        self.seconds_on: dict[str, float] = {}
        self.switches = 0
        self._last: float | None = None

    def slot_at(self, now: float) -> list[int]:
        return self.slots[(self.index + int(now // self.period_s)) % len(self.slots)]

    def tick(self, now: float) -> None:
        """Books the time since the last tick to the current slot, then moves to the slot `now` calls for."""
        if self.current is not None and self._last is not None:
            key = ",".join(map(str, self.current))
            self.seconds_on[key] = self.seconds_on.get(key, 0.0) + (now - self._last)
        self._last = now
        want = self.slot_at(now)
        if want != self.current:
            pin_all_threads(want)
            self.switches += int(self.current is not None)
            self.current = want
