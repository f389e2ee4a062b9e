"""The order 2c measures the served models in: randomized and interleaved, reproducible from the seed.

Measuring the baseline always first would hand it the machine of the first minutes; the models instead take
turns in rounds, each round in a fresh random order, so drift and warm-up fall on all of them alike and each
round pairs the models moments apart (the between-model ratios take Student's t over the rounds)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    level: str
    round: int
    model: str
    requests: int
    first_index: int
    """Index of this slot's first request within its model and level (request seeds follow the index)."""


def rounds_for(requests: int, concurrency: int, max_rounds: int) -> int:
    """Rounds a level is split into: at most `max_rounds`, and each round long enough (2 x concurrency
    requests) that the level's concurrency is actually reached."""
    return max(1, min(max_rounds, requests // max(2 * concurrency, 1)))


def interleaved_schedule(
    models: list[str], levels: list[tuple[str, int]], requests: int, max_rounds: int, seed: int
) -> list[Slot]:
    """Every (level, round, model) slot in the order to run them. `levels` = [(name, concurrency)]."""
    rng = random.Random(seed)
    out: list[Slot] = []
    for name, conc in levels:
        k = rounds_for(requests, conc, max_rounds)
        sizes = [requests // k + (i < requests % k) for i in range(k)]
        for r, n in enumerate(sizes):
            order = list(models)
            rng.shuffle(order)
            out += [Slot(name, r, m, n, sum(sizes[:r])) for m in order]
    return out
