"""Which device Ray gave this worker: shared by the training actors, the speed trial and the replicas."""

from __future__ import annotations

import ray


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
