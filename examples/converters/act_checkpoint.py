"""Activation checkpointing: each transformer block keeps only its input for the backward pass and recomputes the
rest there. Less memory (the activations of all but one block are not held), more time (every block's forward
runs twice). The recomputation is exact, so training is bit-for-bit the baseline's: `changes_numerics = False`,
and the convergence gate is shown but does not decide.

Use: variants.optimized.converters: ["examples/converters/act_checkpoint.py:ActCheckpoint"]
     (examples/converters/act_checkpoint.yaml; `phase2 ablate` shows its memory and time beside the baseline's)."""

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint


class ActCheckpoint:
    changes_numerics = False

    def __init__(self, every: int = 1) -> None:
        if every < 1:
            raise ValueError("every must be at least 1 (checkpoint every n-th block)")
        self.every = every

    def convert(self, model: nn.Module) -> nn.Module:
        # phase2_ray's GPT keeps its blocks in `model.blocks`; a Hugging Face Llama in `model.model.layers`.
        blocks = getattr(model, "blocks", None) or model.model.layers
        for i, block in enumerate(blocks):
            if i % self.every == 0:
                block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
        return model  # changed in place: the same parameters train
