"""Magnitude pruning for serving: zero the smallest weights of every MLP matrix (unstructured, per matrix), the
first step of a sparse-serving recipe. It is applied to the trained checkpoint only when it is served, so it is
judged as a served copy (`serve_from`): its val loss against its source's on the same windows
(targets.served_val_loss_delta_pct_max), and its latency and throughput against the baseline's. Dense kernels run
as fast on zeros as on other numbers, so expect no speed-up from this step alone: the report says so.

Use: variants.pruned: {serve_from: baseline, converters: [{use: "examples/converters/prune.py:MagnitudePrune",
     args: {sparsity: 0.3}}]}  (examples/converters/prune.yaml)."""

import torch
from torch import nn


class MagnitudePrune:
    def __init__(self, sparsity: float = 0.5) -> None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        self.sparsity = sparsity

    @torch.no_grad()
    def serve(self, model: nn.Module) -> nn.Module:
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and ".mlp." in f".{name}.":
                w = mod.weight
                k = int(w.numel() * self.sparsity)
                if k:
                    cut = w.abs().flatten().kthvalue(k).values
                    w.mul_(w.abs() > cut)
        return model
