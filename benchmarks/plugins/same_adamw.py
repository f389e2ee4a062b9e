"""A user's converter that changes nothing: its optimizer hook builds the baseline's own AdamW (the per-tensor loop).
verdict_bench's plugin series run it through the whole plugin path (config, file import, runtime_env, the stack in
every actor) to check that the path costs nothing and that the verdict on it is the A/A one."""

import torch


class SameAdamW:
    changes_numerics = False

    def optimizer(self, param_groups, *, lr, betas, weight_decay):
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, weight_decay=weight_decay, foreach=False)
