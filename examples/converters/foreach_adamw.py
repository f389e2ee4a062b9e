"""AdamW's multi-tensor ("foreach") implementation: one vectorized update over lists of tensors instead of a Python
loop of small ops per parameter. phase2_ray's baseline pins the per-tensor loop (`foreach=False`), so this is the
optimization a user would try first on a CPU, and it pays most where a model has many small tensors: a deep, narrow
model (foreach_adamw.yaml beside this file: 16 layers of width 32, batches of 2 x 32 tokens). The update is the same
arithmetic in another order of kernels, so the losses may differ in the last bits: `changes_numerics` stays True
(the default) and the convergence gate decides.

Use: variants.optimized.converters: ["examples/converters/foreach_adamw.py:ForeachAdamW"] (relative to the config)"""

import torch


class ForeachAdamW:
    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def optimizer(self, param_groups, *, lr, betas, weight_decay):
        # param_groups already split decayed matrices from norms and biases (weight_decay set per group).
        return torch.optim.AdamW(
            param_groups, lr=lr, betas=betas, weight_decay=weight_decay, eps=self.eps, foreach=True
        )
