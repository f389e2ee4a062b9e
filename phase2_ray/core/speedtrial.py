"""The speed trial: a paired, interleaved measurement of two optimization stacks on the same cores.

Why it exists: two concurrent training actors on a small VM do not see the same machine (which core shares the
driver's, raylet's and Serve's processes changes from run to run) and the machine's speed drifts by tens of
percent between minutes, so the ratio of two actors' step times says more about the machine than about the
stack. Here both stacks train side by side in one process, on one set of cores, in short blocks ordered
A B B A or B A A B: linear drift within a pair cancels. The design is balanced rather than merely random, so
order effects cancel in every run, not only on average over runs: half the pairs of a replicate are ABBA and
half BAAB (their sequence shuffled from the seed), and half the replicates build A's model first. The
statistics live in `phase2_ray.report.stats.paired_speedup`."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, replace

import torch

from phase2_ray.core.model import GPTConfig
from phase2_ray.core.specs import OptimizationSettings
from phase2_ray.core.train import Trainer, TrainSettings


@dataclass(kw_only=True)
class TrialSettings:
    pairs: int = 4
    """Pairs per replicate, half ABBA and half BAAB."""
    block_steps: int = 4
    """Timed training steps per block (each pair has two blocks of each stack). Every block first runs one
    untimed step: after a switch the caches hold the other model, a cost that training one model never pays,
    and which would otherwise fall unevenly on the two stacks wherever consecutive pairs join (ABBA then BAAB
    makes A's first block follow a B block, BAAB then ABBA does the opposite)."""
    warmup_steps: int = 5
    """Untimed steps per stack first (compilation, allocator and cache warm-up)."""
    seed: int = 0
    """Shuffles the pairs' orders: reproducible, not chosen."""
    a_first: bool = True
    """Build A's model first (else B's): a run's replicates alternate it, so build order is balanced."""


@dataclass
class TrialPair:
    index: int
    order: str
    """"ABBA" or "BAAB"."""
    a_s: float
    """Wall time of the two blocks of stack A (the reference), seconds."""
    b_s: float
    """Wall time of the two blocks of stack B (the candidate), seconds. a_s / b_s above 1: B is faster."""


def trial_steps(t: TrialSettings) -> int:
    """Steps each stack trains in a trial."""
    return t.warmup_steps + t.pairs * 2 * (t.block_steps + 1)


def paired_trial(
    model_cfg: GPTConfig,
    settings: TrainSettings,
    stack_a: OptimizationSettings,
    stack_b: OptimizationSettings,
    train_tokens: torch.Tensor,
    trial: TrialSettings,
    *,
    device: str | torch.device | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Trains one model per stack from the same init on the same batches, timing blocks in ABBA / BAAB order.

    Returns {"pairs": [TrialPair as dict], "build_order", "warmup_s": {a, b}, "losses_equal"} where
    `losses_equal` says the two stacks computed bit-identical losses (true for equal stacks: an A/A trial)."""
    rng = random.Random(trial.seed)
    steps = trial_steps(trial)
    s = replace(settings, steps=steps, warmup_steps=min(settings.warmup_steps, steps))
    # Which model is allocated first can matter (memory placement): alternate it across replicates.
    build_order = "AB" if trial.a_first else "BA"
    orders = ["ABBA", "BAAB"] * (trial.pairs // 2) + (
        [rng.choice(["ABBA", "BAAB"])] if trial.pairs % 2 else []
    )
    rng.shuffle(orders)
    stacks = {"A": stack_a, "B": stack_b}
    trainers: dict[str, Trainer] = {}
    for k in build_order:
        trainers[k] = Trainer(model_cfg, s, stacks[k], train_tokens, device, init_state)
    warm = {"A": 0.0, "B": 0.0}
    for _ in range(trial.warmup_steps):
        for k in build_order:
            trainers[k].train_step()
            warm[k] += trainers[k].times[-1]

    def block(k: str) -> float:
        tr = trainers[k]
        tr.train_step()  # untimed: re-warm the caches after the switch (see TrialSettings.block_steps)
        t0 = time.perf_counter()
        for _ in range(trial.block_steps):
            tr.train_step()
        return time.perf_counter() - t0

    pairs = []
    for i, order in enumerate(orders):
        spent = {"A": 0.0, "B": 0.0}
        for k in order:
            spent[k] += block(k)
        pairs.append(asdict(TrialPair(i, order, spent["A"], spent["B"])))
    return {
        "pairs": pairs,
        "build_order": build_order,
        "warmup_s": {"a": warm["A"], "b": warm["B"]},
        "steps_per_stack": steps,
        "losses_equal": trainers["A"].losses == trainers["B"].losses,
    }
