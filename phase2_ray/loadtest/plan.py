"""The order 2c measures the served models in: randomized and interleaved, reproducible from the seed.

Measuring the baseline always first would hand it the machine of the first minutes; the models instead take
turns in rounds, each round in a fresh random order, so drift and warm-up fall on all of them alike and each
round pairs the models moments apart (the between-model ratios take Student's t over the rounds)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace


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


@dataclass(frozen=True)
class Route:
    """Where one model id's requests go: a server's root URL, the name that server knows the model by, the API it
    speaks and its key (read from the environment by whoever builds the route, never stored in a report)."""

    base_url: str
    model: str
    api: str = "completions"
    api_key: str | None = field(default=None, repr=False)  # never in a log line

    def scrub(self, text: str) -> str:
        """`text` with the key masked: a server or gateway may echo the key it got in an error body."""
        return text.replace(self.api_key, "***") if self.api_key else text


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """Where a stage's requests go and how each one asks: the same for every level it runs."""

    base_url: str
    """The server's root (the client appends /v1/completions or /v1/chat/completions)."""
    prompts: list
    """Prompt texts, or a workload's (prompt, max_tokens) pairs; request i takes prompts[i % len]."""
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float = 1.0
    seed: int
    """Request i samples with seed + i, so every model gets the same requests."""
    timeout_s: float
    api_key: str | None = field(default=None, repr=False)
    api: str = "completions"
    """completions (POST /v1/completions, `prompt`) or chat (POST /v1/chat/completions, one user message)."""
    routes: dict[str, Route] | None = None
    """Model ids served elsewhere (another server, another name, another API); the others go to `base_url`."""

    def route(self, model_id: str) -> Route:
        """Where model `model_id`'s requests go."""
        if self.routes and model_id in self.routes:
            return self.routes[model_id]
        return Route(self.base_url, model_id, self.api, self.api_key)

    @property
    def payload_args(self) -> dict:
        """Sampling fields of every request; top_k (not in OpenAI's API: vLLM's and ours) only when set."""
        args = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p}
        return args if self.top_k is None else {**args, "top_k": self.top_k}


@dataclass(frozen=True, kw_only=True)
class LevelSpec:
    """One load level as a client runs it: which model, how many requests and how they arrive, and the level
    and round its records are tagged with."""

    model: str
    n: int
    concurrency: int
    level: str = ""
    round: int | None = None
    warmup: int = 0
    """Requests sent first and kept apart (indices -1, -2, ...); closed loop always."""
    first_index: int = 0
    """Index of the first measured request (its sampling seed and prompt follow the index)."""
    request_rate: float | None = None
    """Open loop: Poisson arrivals at this mean rate (at most `concurrency` in flight); None: closed loop."""
    stop_when_full: bool = False
    """Open loop (the capacity search): an arrival that finds `concurrency` in flight stops the level."""
    exact_rate: bool = False
    """Open loop: arrivals conditioned on their count (the level offers exactly the rate it names)."""

    def shares(self, k: int) -> list[LevelSpec]:
        """This level split over `k` clients: each its share of requests, concurrency and rate, and its own
        consecutive run of indices."""
        out, first = [], self.first_index
        for i in range(k):
            n = self.n // k + (i < self.n % k)
            c = self.concurrency // k + (i < self.concurrency % k)
            rate = self.request_rate / k if self.request_rate else None
            out.append(replace(self, n=n, concurrency=c, request_rate=rate, first_index=first))
            first += n
        return out
