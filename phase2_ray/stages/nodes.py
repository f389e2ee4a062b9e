"""Where the stages run on a multi-node cluster: the training placement group and a description of the nodes.

`pack` keeps the concurrent variants on as few nodes as possible (on one node they get disjoint cores);
`spread` puts every variant on its own node with a STRICT_SPREAD placement group, so that no variant shares a
node's memory bandwidth or caches with another. Either way nothing assumes a shared filesystem: checkpoints and
metrics travel through the object store."""

from __future__ import annotations

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from phase2_ray.config import ConfigError


def assigned_device() -> str:
    """ "cuda" when Ray gave this worker a GPU, else "cpu". Not torch.cuda.is_available(): a worker asking for no
    GPU still sees the node's GPUs (Ray leaves CUDA_VISIBLE_DEVICES alone then) and must not use them."""
    if not ray.get_gpu_ids():
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            f"Ray assigned GPU(s) {ray.get_gpu_ids()} but this torch ({torch.__version__}) sees no CUDA device: "
            "install a CUDA build of torch on the GPU nodes"
        )
    return "cuda"


def cluster_nodes() -> list[dict]:
    """Alive nodes: id, address, whether it is the head, and its total resources (custom ones included)."""
    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = {k: v for k, v in n.get("Resources", {}).items() if not k.startswith("node:")}
        out.append(
            {
                "node_id": n["NodeID"],
                "address": n.get("NodeManagerAddress"),
                "is_head": "node:__internal_head__" in n.get("Resources", {}),
                "resources": res,
            }
        )
    return sorted(out, key=lambda n: (not n["is_head"], n["node_id"]))


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
                f"training.placement={policy}: no room for {len(bundles)} x {bundle} ({strategy}, a bundle per "
                f"variant) after waiting training.placement_timeout_s={timeout_s:g}s; the cluster's nodes: "
                f"{nodes}. Add nodes, lower training.cpus_per_actor / repeats, or use placement=pack."
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
