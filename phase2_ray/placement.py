"""Which cores each concurrent training actor may use. Plain Python: the Ray glue wraps it in an actor."""

from __future__ import annotations


class CoreAllocator:
    """Hands out disjoint sets of cores on one node and takes them back.

    Ray never runs more actors than the node's CPUs allow, so when logical CPUs equal cores an actor that asks
    always finds a free set; `None` (run unpinned) only when more logical CPUs than cores were declared."""

    def __init__(self, cores: list[int]) -> None:
        self.free = sorted(cores)
        self.held: set[int] = set()

    def acquire(self, n: int) -> list[int] | None:
        if n < 1 or len(self.free) < n:
            return None
        got, self.free = self.free[:n], self.free[n:]
        self.held.update(got)
        return got

    def release(self, cores: list[int] | None) -> None:
        for c in cores or []:
            if c in self.held:
                self.held.discard(c)
                self.free.append(c)
        self.free.sort()
