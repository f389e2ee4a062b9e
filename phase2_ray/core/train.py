"""The training loop: loss every step, held-out val loss at intervals and at the end, per-step wall times."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from phase2_ray.core.converters import ConverterStack
from phase2_ray.core.data import batch_schedule, get_batch, val_offsets
from phase2_ray.core.model import CausalLM, GPTConfig, build_model
from phase2_ray.core.specs import OptimizationSettings, tokens_per_step
from phase2_ray.records import TrainResult

STATE_TENSORS = "train_state.safetensors"
STATE_META = "train_state.json"
"""The files of a saved training state (Trainer.state_files)."""


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
    divergence_factor: float = 0.0
    """Also stop when a step's loss exceeds this many times the first step's (0 = only non-finite losses)."""


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to min_lr at the last step."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    span = max(s.steps - s.warmup_steps, 1)
    frac = min((step - s.warmup_steps) / span, 1.0)
    return s.min_lr + 0.5 * (1 + math.cos(math.pi * frac)) * (s.lr - s.min_lr)


@torch.no_grad()
def evaluate(model: CausalLM, tokens: torch.Tensor, offsets: torch.Tensor, batch_size: int) -> float:
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


@torch.no_grad()
def evaluate_windows(
    model: CausalLM, tokens: torch.Tensor, offsets: torch.Tensor, batch_size: int
) -> list[float]:
    """Each fixed val window's own mean next-token loss, eager fp32: the same windows for every variant, so two
    models' losses pair window by window (the convergence gate's interval is over these pairs)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(offsets), batch_size):
        x, y = (t.to(device) for t in get_batch(tokens, offsets[i : i + batch_size], model.cfg.block_size))
        logits, _ = model(x)
        per_token = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")
        out += per_token.mean(dim=1).tolist()
    model.train(was_training)
    return out


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
        init_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        # The caller says which device it was given (Ray's GPU ids); alone, CUDA whenever torch sees one.
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.settings = settings
        self.tokens = train_tokens
        torch.manual_seed(settings.seed)
        self.model = build_model(model_cfg)
        if init_state is not None:  # model.init_from: given weights instead of the seeded init
            self.model.load_state_dict(init_state, strict=True)
        self.model.to(self.device)
        self.optim = optim
        # serve-only converters (int8) are not built here: training reaches none of their hooks
        self.stack = ConverterStack(optim.training_converters(), self.device)
        self.step_fn = self.stack.convert(self.model)
        self.opt = self.stack.optimizer(
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
        with self.stack.step_context():
            _, loss = self.step_fn(x, y)
        loss.backward()
        if s.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        lv = loss.item()
        if self.optim.delay_pct:  # the calibration delay: a known share of this step's own time
            # A busy wait, not a sleep: the stack keeps its core as a slower kernel would, instead of letting it
            # idle (an idle core changes clock and caches, a machine state no real optimization produces).
            until = time.perf_counter() + (time.perf_counter() - t0) * self.optim.delay_pct / 100.0
            while time.perf_counter() < until:
                pass
        self.times.append(time.perf_counter() - t0)
        self.losses.append(lv)
        return lv

    @property
    def data_order_sha256(self) -> str:
        return hashlib.sha256(self.schedule.numpy().tobytes()).hexdigest()[:16]

    def state_files(self, val_curve: list[tuple[int, float]]) -> dict[str, bytes]:
        """Everything the next step depends on, as {name: bytes}: weights, AdamW moments and step counts, the RNG
        state (safetensors), and the step, losses, step times, val curve and param groups (JSON). The data
        position is the step: the batch schedule is a function of the seed. No pickle either way."""
        tensors = {f"model.{k}": v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        opt = self.opt.state_dict()
        for idx, st in opt["state"].items():
            for name, t in st.items():
                tensors[f"opt.{idx}.{name}"] = torch.as_tensor(t).detach().cpu().clone()
        tensors["rng.cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {
            "format": 1,
            "step": self.step,
            "losses": self.losses,
            "times": self.times,
            "val_curve": [list(p) for p in val_curve],
            "param_groups": opt["param_groups"],
        }
        return {STATE_TENSORS: st_save(tensors), STATE_META: json.dumps(meta).encode("utf-8")}

    def load_state_files(self, files: dict[str, bytes]) -> list[tuple[int, float]]:
        """Restores what `state_files` saved; returns the val curve so far. The next step is then bit-identical
        to the one an uninterrupted run would take (same device and thread count)."""
        meta = json.loads(files[STATE_META])
        tensors = st_load(files[STATE_TENSORS])
        self.model.load_state_dict(
            {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True
        )
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        self.opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.losses, self.times = list(meta["losses"]), list(meta["times"])
        return [(int(s), float(x)) for s, x in meta["val_curve"]]


def train(
    model_cfg: GPTConfig,
    settings: TrainSettings,
    optim: OptimizationSettings,
    train_tokens: torch.Tensor,
    val_tokens: torch.Tensor,
    on_step: Callable[[int, float, float], None] | None = None,
    device: str | torch.device | None = None,
    *,
    resume: dict[str, bytes] | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[int, dict[str, bytes]], None] | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> tuple[TrainResult, torch.nn.Module]:
    """Trains a fresh model (seeded init, seeded data order) with the given optimization stack; returns the
    result's training-loop part (records.TrainResult: the actor adds where and how it ran) and the trained model.

    Every variant with the same seed and settings starts from the same weights and sees the same batches.
    Every `checkpoint_every` steps the whole training state goes to `on_checkpoint(step, files)`; `resume`
    (such files) continues from that step instead of starting over. `init_state` (model.init_from) replaces the
    seeded init; the data order stays seeded."""
    t_start = time.perf_counter()
    tr = Trainer(model_cfg, settings, optim, train_tokens, device, init_state)
    voffsets = val_offsets(len(val_tokens), model_cfg.block_size, settings.eval_windows)
    if resume is not None:
        val_curve = tr.load_state_files(resume)
    else:
        val_curve = [(0, evaluate(tr.model, val_tokens, voffsets, settings.batch_size))]
    resumed_from = tr.step if resume is not None else None
    status, error = "ok", None
    for step in range(tr.step, settings.steps):
        lv = tr.train_step()
        if on_step is not None:
            on_step(step + 1, lv, tr.times[-1])
        # Stop at the first non-finite loss (every later step would only propagate NaN), or one that has blown
        # up far past where training started: it will not come back within this run's budget.
        if not math.isfinite(lv):
            status, error = "diverged", f"loss became {lv} at step {step + 1}"
            break
        if settings.divergence_factor and lv > settings.divergence_factor * tr.losses[0]:
            status, error = (
                "diverged",
                f"loss {lv:.4g} at step {step + 1} exceeds {settings.divergence_factor:g} x the first step's "
                f"{tr.losses[0]:.4g} (training.divergence_factor)",
            )
            break
        last = step + 1 == settings.steps
        if last or (settings.eval_interval and (step + 1) % settings.eval_interval == 0):
            val_curve.append((step + 1, evaluate(tr.model, val_tokens, voffsets, settings.batch_size)))
        if on_checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and not last:
            on_checkpoint(step + 1, tr.state_files(val_curve))
    done = tr.step
    result = TrainResult(
        params=tr.model.num_params(),
        steps=done,
        tokens=done * tokens_per_step(settings.batch_size, model_cfg.block_size),
        status=status,
        error=error,
        losses=tr.losses,
        step_times=tr.times,
        val_curve=val_curve,
        applied=tr.stack.applied,
        train_s=time.perf_counter() - t_start,
        data_order_sha256=tr.data_order_sha256,
        resumed_from_step=resumed_from,
        val_windows=evaluate_windows(tr.model, val_tokens, voffsets, settings.batch_size)
        if status == "ok"
        else None,
    )
    return result, tr.model
