"""Where the concurrent training actors run: cores on one node and placement groups across nodes.

On one node, logical CPUs do not isolate: concurrent actors get disjoint cores (affinity), held by a
CoreAllocator actor, or rotate through the cores together so that no variant keeps a faster core.
Across nodes, `pack` keeps the variants on as few nodes as possible and `spread` puts each on its own node
(STRICT_SPREAD), so that no variant shares a node's memory bandwidth or caches with another. Nothing assumes
a shared filesystem: checkpoints and metrics travel through the object store."""

from __future__ import annotations

import os

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from phase2_ray.config import ConfigError
from phase2_ray.provenance import cluster_nodes


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

    Cores of one machine are not equal (benchmarks/RESULTS.md: one core's matmul peak above the other's), so an
    actor pinned to one core for the whole run would carry that core's bias into the speedup. Every actor computes its
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


def _bundle(cpus: float, gpus: float, count: int) -> dict:
    b = {"CPU": float(cpus * count)}
    if gpus:
        b["GPU"] = float(gpus * count)
    return b


class TrainingPlacement:
    """One bundle per variant, big enough for its concurrent seeds; actors of a variant go in its bundle.

    With `pack` and a cluster too small for every run at once, no group is made: Ray queues the actors that do
    not fit and starts them as others finish (a placement group would wait for room that never comes)."""

    def __init__(
        self,
        policy: str,
        variants: list[str],
        runs_per_variant: int,
        cpus: float,
        gpus: float,
        timeout_s: float,
    ) -> None:
        self.policy = policy
        self.index = {v: i for i, v in enumerate(variants)}
        bundle = _bundle(cpus, gpus, runs_per_variant)
        bundles = [dict(bundle) for _ in variants]
        self.group: PlacementGroup | None = None
        if not runs_per_variant or (policy == "pack" and not self._fits_at_once(bundles)):
            return  # nothing runs concurrently (isolation=sequential), or Ray queues what does not fit
        strategy = "STRICT_SPREAD" if policy == "spread" else "PACK"
        self.group = placement_group(bundles, strategy=strategy)
        try:
            ray.get(self.group.ready(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.group)
            self.group = None
            nodes = "; ".join(
                f"{n['node_id'][:8]} CPU={n['resources'].get('CPU', 0):g} GPU={n['resources'].get('GPU', 0):g}"
                for n in cluster_nodes()
            )
            raise ConfigError(
                f"training.placement.policy={policy}: no room for {len(bundles)} x {bundle} ({strategy}, a bundle per "
                f"variant) after waiting training.placement.timeout_s={timeout_s:g}s; the cluster's nodes: "
                f"{nodes}. Add nodes, lower training.placement.cpus_per_actor / training.measurement.repeats, or use training.placement.policy=pack."
            ) from None

    @staticmethod
    def _fits_at_once(bundles: list[dict]) -> bool:
        nodes = [n["resources"] for n in cluster_nodes()]
        free = [dict(n) for n in nodes]
        # First fit, biggest bundle first: good enough to tell "fits" from "queue" for equal bundles.
        for b in sorted(bundles, key=lambda b: -b["CPU"]):
            for node in free:
                if all(node.get(k, 0) >= v for k, v in b.items()):
                    for k, v in b.items():
                        node[k] -= v
                    break
            else:
                return False
        return True

    def strategy(self, variant: str) -> PlacementGroupSchedulingStrategy | None:
        """The scheduling strategy for a concurrent run of `variant` (None: Ray's default scheduling)."""
        if self.group is None:
            return None
        return PlacementGroupSchedulingStrategy(
            placement_group=self.group, placement_group_bundle_index=self.index[variant]
        )

    def describe(self) -> dict:
        return {
            "policy": self.policy,
            "placement_group": None if self.group is None else self.group.id.hex(),
            "strategy": None
            if self.group is None
            else ("STRICT_SPREAD" if self.policy == "spread" else "PACK"),
        }

    def release(self) -> None:
        """Frees the reserved CPUs for Serve's replicas once training is over."""
        if self.group is not None:
            remove_placement_group(self.group)
            self.group = None


def node_cores(pin: bool) -> list[int] | None:
    """This node's cores when pinning applies (`pin` and a one-node cluster), else None."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if not pin or len(alive) != 1:
        return None
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def rotation_plan(cores: list[int] | None, per: int, n_jobs: int, period_s: float) -> list[dict] | None:
    """Per-job core rotation for jobs that all run at once, or None when they do not all fit (then the pool
    hands out fixed cores as actors start) or rotation is off."""
    if not cores or period_s <= 0 or n_jobs < 2 or n_jobs * per > len(cores):
        return None
    slots = [cores[i * per : (i + 1) * per] for i in range(n_jobs)]
    return [{"slots": slots, "index": i, "period_s": period_s} for i in range(n_jobs)]
