"""The training loop: loss every step, held-out val loss at intervals and at the end, per-step wall times."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from phase2_ray.core.data import batch_schedule, get_batch, val_offsets
from phase2_ray.core.model import GPT, GPTConfig
from phase2_ray.core.optimize import KernelOptimizer, OptimizationSettings


@dataclass(kw_only=True)
class TrainSettings:
    steps: int
    batch_size: int
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 50
    eval_windows: int = 64
    seed: int = 1337


@dataclass
class TrainResult:
    params: int
    steps: int
    tokens: int
    status: str  # "ok" or "diverged"
    error: str | None
    losses: list[float]
    step_times: list[float]
    val_curve: list[tuple[int, float]]
    applied: dict[str, object]
    train_s: float
    data_order_sha256: str
    """Hash of the batch schedule: equal across variants means the same data in the same order."""
    model: torch.nn.Module = field(repr=False)


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to min_lr at the last step."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    span = max(s.steps - s.warmup_steps, 1)
    frac = min((step - s.warmup_steps) / span, 1.0)
    return s.min_lr + 0.5 * (1 + math.cos(math.pi * frac)) * (s.lr - s.min_lr)


@torch.no_grad()
def evaluate(model: GPT, tokens: torch.Tensor, offsets: torch.Tensor, batch_size: int) -> float:
    """Mean next-token loss over fixed val windows, eager fp32, so every variant is judged by the same code."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, n = 0.0, 0
    for i in range(0, len(offsets), batch_size):
        batch = get_batch(tokens, offsets[i : i + batch_size], model.cfg.block_size)
        x, y = (t.to(device) for t in batch)
        _, loss = model(x, y)
        total += float(loss) * len(x)
        n += len(x)
    model.train(was_training)
    return total / n


class Trainer:
    """One model, its optimization stack and its data order, advanced one step at a time.

    `train` drives one to the end; the `auto` probe interleaves several step by step so that the machine's
    drift hits every candidate alike."""

    def __init__(
        self,
        model_cfg: GPTConfig,
        settings: TrainSettings,
        optim: OptimizationSettings,
        train_tokens: torch.Tensor,
        device: str | torch.device | None = None,
    ) -> None:
        # The caller says which device it was given (Ray's GPU ids); alone, CUDA whenever torch sees one.
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.settings = settings
        self.tokens = train_tokens
        torch.manual_seed(settings.seed)
        self.model = GPT(model_cfg).to(self.device)
        self.ko = KernelOptimizer(optim, self.device)
        self.step_fn = self.ko.wrap_model(self.model)
        self.opt = self.ko.make_optimizer(
            self.model, lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.95)
        )
        self.schedule = batch_schedule(
            len(train_tokens), model_cfg.block_size, settings.batch_size, settings.steps, settings.seed
        )
        self.losses: list[float] = []
        self.times: list[float] = []
        self.model.train()

    @property
    def step(self) -> int:
        return len(self.losses)

    def train_step(self) -> float:
        """Runs the next step; records and returns its loss (its wall time goes to `times`)."""
        step, s = self.step, self.settings
        t0 = time.perf_counter()
        for g in self.opt.param_groups:
            g["lr"] = lr_at(step, s)
        x, y = (
            t.to(self.device) for t in get_batch(self.tokens, self.schedule[step], self.model.cfg.block_size)
        )
        with self.ko.step_context():
            _, loss = self.step_fn(x, y)
        loss.backward()
        if s.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        lv = loss.item()
        self.times.append(time.perf_counter() - t0)
        self.losses.append(lv)
        return lv

    @property
    def data_order_sha256(self) -> str:
        return hashlib.sha256(self.schedule.numpy().tobytes()).hexdigest()[:16]


def train(
    model_cfg: GPTConfig,
    settings: TrainSettings,
    optim: OptimizationSettings,
    train_tokens: torch.Tensor,
    val_tokens: torch.Tensor,
    on_step: Callable[[int, float, float], None] | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Trains a fresh GPT (seeded init, seeded data order) with the given optimization stack.

    Every variant with the same seed and settings starts from the same weights and sees the same batches."""
    t_start = time.perf_counter()
    tr = Trainer(model_cfg, settings, optim, train_tokens, device)
    voffsets = val_offsets(len(val_tokens), model_cfg.block_size, settings.eval_windows)
    val_curve = [(0, evaluate(tr.model, val_tokens, voffsets, settings.batch_size))]
    status, error = "ok", None
    for step in range(settings.steps):
        lv = tr.train_step()
        if on_step is not None:
            on_step(step + 1, lv, tr.times[-1])
        # Stop at the first non-finite loss: every later step would only propagate NaN.
        if not math.isfinite(lv):
            status, error = "diverged", f"loss became {lv} at step {step + 1}"
            break
        last = step + 1 == settings.steps
        if last or (settings.eval_interval and (step + 1) % settings.eval_interval == 0):
            val_curve.append((step + 1, evaluate(tr.model, val_tokens, voffsets, settings.batch_size)))
    done = tr.step
    return TrainResult(
        params=tr.model.num_params(),
        steps=done,
        tokens=done * settings.batch_size * model_cfg.block_size,
        status=status,
        error=error,
        losses=tr.losses,
        step_times=tr.times,
        val_curve=val_curve,
        applied=tr.ko.applied,
        train_s=time.perf_counter() - t_start,
        data_order_sha256=tr.data_order_sha256,
        model=tr.model,
    )
