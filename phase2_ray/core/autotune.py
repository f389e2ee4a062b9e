"""`auto` optimization: probe candidate stacks on this hardware and model, and keep the reference (eager fp32)
unless a candidate that learns like it is faster beyond noise, judged over paired rounds as the speed trial is
judged; on a tie the simpler stack. The right stack depends on size and hardware, so it is measured, not assumed."""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from phase2_ray.core.model import GPTConfig
from phase2_ray.core.specs import OptimizationSettings
from phase2_ray.core.train import Trainer, TrainSettings

REFERENCE = "eager-fp32"


@dataclass
class ProbeResult:
    name: str
    settings: dict
    median_step_ms: float
    first_step_s: float
    """The first step's wall time: compile and warm-up, paid once per run."""
    mean_loss: float
    loss_delta_pct: float = 0.0
    accepted: bool = True
    block_s: list[float] = field(default_factory=list)
    """Wall time of this stack's timed block in each round (the rounds pair the stacks moments apart)."""
    speedup: float | None = None
    """Reference block time / this stack's, geometric mean over the rounds (above 1: faster)."""
    ci_low: float | None = None
    ci_high: float | None = None
    faster: bool = False
    """Faster than the reference beyond noise: the whole interval above 1 + the configured minimum gain."""

    def to_dict(self) -> dict:
        return asdict(self)


def parts(settings: dict) -> int:
    """How many optimizations a stack turns on: the simpler stack wins a tie."""
    return len(OptimizationSettings.from_dict(settings).converters)


def probe(
    model_cfg: GPTConfig,
    settings: TrainSettings,
    candidates: dict[str, OptimizationSettings],
    train_tokens: torch.Tensor,
    steps: int,
    on_step=None,
    device: str | None = None,
    init_state: dict | None = None,
    *,
    rounds: int = 12,
    block_steps: int = 3,
    seed: int = 0,
) -> list[ProbeResult]:
    """Runs every candidate from the same init on the same batches: first `steps` steps interleaved step by step
    (A, B, C, A, B, C, ...: warm-up, compile, and the loss check), then `rounds` timed rounds in which each
    candidate, in a fresh seeded order, runs one untimed step (its caches back after the switch) and a block of
    `block_steps` timed steps. A round pairs the candidates moments apart, so the machine's drift cancels in
    each round's ratio; the interval over rounds is what `select_stack` judges."""
    total = steps + rounds * (block_steps + 1)
    probe_settings = replace(settings, steps=total, warmup_steps=min(settings.warmup_steps, total))
    trainers = {
        name: Trainer(model_cfg, probe_settings, opt, train_tokens, device, init_state)
        for name, opt in candidates.items()
    }
    for i in range(steps):
        for tr in trainers.values():
            loss = tr.train_step()
            if on_step is not None:
                on_step(i + 1, loss, tr.times[-1])
    losses = {name: list(tr.losses) for name, tr in trainers.items()}  # the loss check: the common steps only
    blocks: dict[str, list[float]] = {name: [] for name in trainers}
    rng = random.Random(seed)
    for r in range(rounds):
        order = list(trainers)
        rng.shuffle(order)
        for name in order:
            tr = trainers[name]
            tr.train_step()  # untimed: re-warm the caches after the switch
            t0 = time.perf_counter()
            for _ in range(block_steps):
                tr.train_step()
            blocks[name].append(time.perf_counter() - t0)
            if on_step is not None:
                on_step(steps + r + 1, tr.losses[-1], tr.times[-1])
    out = []
    for name, tr in trainers.items():
        steady = tr.times[min(3, len(tr.times) - 1) :]
        out.append(
            ProbeResult(
                name=name,
                settings=asdict(candidates[name]),
                median_step_ms=statistics.median(steady) * 1000.0,
                first_step_s=tr.times[0],
                mean_loss=sum(losses[name]) / len(losses[name]),
                block_s=blocks[name],
            )
        )
    return out


def round_ratio(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """a / b paired by round: the geometric mean of the rounds' ratios and its Student-t interval (log scale)."""
    logs = [math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0 and y > 0]
    centre = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(centre), 0.0, math.inf
    from scipy.special import stdtrit  # the same quantile report.stats uses; imported where it is needed

    se = statistics.stdev(logs) / math.sqrt(len(logs))
    t = float(stdtrit(len(logs) - 1, 0.5 + confidence / 2))
    return math.exp(centre), math.exp(centre - t * se), math.exp(centre + t * se)


def candidate_level(candidates: int, confidence: float = 0.95) -> float:
    """Each candidate's interval level when `candidates` are judged against the reference together (Bonferroni):
    the chance that any of them is called faster by noise stays at 1 - confidence."""
    return 1 - (1 - confidence) / max(1, candidates)


def select_stack(
    results: list[ProbeResult], tolerance_pct: float, min_gain_pct: float = 0.0, confidence: float = 0.95
) -> ProbeResult:
    """The stack `auto` keeps. Each candidate is accepted if its mean probe loss is within `tolerance_pct` of
    the reference's (the first result), and called faster only when its round-paired speedup interval lies
    wholly above 1 + `min_gain_pct`/100. The intervals are family-wise (Bonferroni over the candidates): with
    k candidates each is taken at 1 - (1 - confidence)/k, so the chance that any stack within noise of the
    reference is called faster stays at 1 - confidence, however many are probed. No accepted candidate faster:
    the reference. Otherwise the fastest, unless a simpler faster one cannot be told apart from it (their own
    paired interval contains 1): then the simplest of those. A 4-step median decides nothing here: a coin toss
    between stacks within noise of each other would then decide the verdict."""
    if not results:
        raise ValueError("no probe results to choose from")
    ref = results[0]
    each = candidate_level(len(results) - 1, confidence)
    for r in results:
        finite = r.mean_loss == r.mean_loss and abs(r.mean_loss) != float("inf")
        r.loss_delta_pct = (
            abs(r.mean_loss - ref.mean_loss) / abs(ref.mean_loss) * 100.0 if finite else float("inf")
        )
        r.accepted = r is ref or (finite and r.loss_delta_pct <= tolerance_pct)
        if r is not ref and ref.block_s and r.block_s:
            r.speedup, r.ci_low, r.ci_high = round_ratio(ref.block_s, r.block_s, each)
            r.faster = r.accepted and r.ci_low > 1 + min_gain_pct / 100.0
    faster = [r for r in results if r.faster]
    if not faster:
        return ref
    best = max(faster, key=lambda r: r.speedup or 0.0)
    tied = [r for r in faster if r is best or round_ratio(r.block_s, best.block_s)[1] <= 1.0]
    return min(tied, key=lambda r: (parts(r.settings), -(r.speedup or 0.0)))
