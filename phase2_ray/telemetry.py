"""What a run shows while it runs: the actors' progress (bars or lines) and metrics on Ray's metrics endpoint.

Metrics go through `ray.util.metrics`, so they reach the node's Prometheus endpoint and the dashboard's Metrics
view as `ray_phase2_*`, tagged with the run id and the variant (or model id)."""

from __future__ import annotations

import time

from ray.util.metrics import Counter, Gauge, Histogram

PROGRESS_MODES = ("bar", "lines", "off")
TAGS = ("run_id", "variant")
STEP_BOUNDARIES = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
TTFT_BOUNDARIES = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]


class TrainTelemetry:
    """Per training actor: loss and tokens/s gauges, a step-time histogram and progress, one of PROGRESS_MODES:
    "bar" (a tqdm bar, for a terminal), "lines" (a plain line every `interval_s` and at the last step, for logs
    that keep every redraw: CI, `ray job logs`) or "off"."""

    def __init__(
        self,
        run_id: str,
        variant: str,
        label: str,
        steps: int,
        tokens_per_step: int,
        progress: str = "off",
        interval_s: float = 10.0,
        log_every: int = 0,
    ) -> None:
        if progress not in PROGRESS_MODES:
            raise ValueError(f"progress={progress!r}: expected one of {PROGRESS_MODES}")
        tags = {"run_id": run_id, "variant": variant}
        self.loss = Gauge("phase2_train_loss", "Training loss of the latest step.", tag_keys=TAGS)
        self.tokens_per_s = Gauge("phase2_train_tokens_per_s", "Tokens/s of the latest step.", tag_keys=TAGS)
        self.step_s = Histogram(
            "phase2_train_step_seconds",
            "Wall time per optimizer step.",
            boundaries=STEP_BOUNDARIES,
            tag_keys=TAGS,
        )
        for m in (self.loss, self.tokens_per_s, self.step_s):
            m.set_default_tags(tags)
        self.tokens_per_step = tokens_per_step
        self.label = label
        self.steps = steps
        self.lines = progress == "lines"
        self.interval_s = interval_s
        # training.log_every: a line with the step's own time every N steps, wherever progress is shown.
        self.log_every = log_every if progress != "off" else 0
        self.last_line: tuple[float, int] | None = None  # (time, step) of the last line printed
        self.bar = None
        if progress == "bar":
            from ray.experimental.tqdm_ray import tqdm  # draws on the driver, whichever node the actor is on

            self.bar = tqdm(desc=label, total=steps, unit="step")

    def step(self, step: int, loss: float, dt: float) -> None:
        tps = self.tokens_per_step / dt if dt > 0 else 0.0
        self.loss.set(loss)
        self.tokens_per_s.set(tps)
        self.step_s.observe(dt)
        if self.bar is not None:
            self.bar.update(1)
            if step % 10 == 0:
                self.bar.set_description(f"{self.label} loss {loss:.3f} {tps:,.0f} tok/s")
        if self.lines:
            self._line(step, loss, dt)
        if self.log_every and (step % self.log_every == 0 or step == self.steps):
            print(
                f"[{self.label}] step {step}/{self.steps} loss {loss:.4f} step {dt * 1000:.1f} ms", flush=True
            )

    def _line(self, step: int, loss: float, dt: float) -> None:
        now = time.monotonic()
        if self.last_line is None:  # the interval counts from the first step (a resumed run starts past 1)
            self.last_line = (now - dt, step - 1)
        t_last, step_last = self.last_line
        if step != self.steps and now - t_last < self.interval_s:
            return
        # Throughput over the interval (evaluations and checkpoints included), not the latest step's.
        tps = (step - step_last) * self.tokens_per_step / max(now - t_last, 1e-9)
        print(f"[{self.label}] step {step}/{self.steps} loss {loss:.4f} {tps:,.0f} tok/s", flush=True)
        self.last_line = (now, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RequestTelemetry:
    """Per load-generator actor: client-side TTFT histogram and a request counter by status."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        keys = (*TAGS, "level")
        self.ttft = Histogram(
            "phase2_ttft_seconds",
            "Time to first token at the client.",
            boundaries=TTFT_BOUNDARIES,
            tag_keys=keys,
        )
        self.requests = Counter(
            "phase2_requests_total",
            "Requests sent by status (ok or error category).",
            tag_keys=(*keys, "status"),
        )

    def record(self, records: list[dict], level: str) -> None:
        for r in records:
            tags = {"run_id": self.run_id, "variant": r["variant"], "level": level}
            if r["ok"] and r["ttft_ms"] is not None and not r.get("warmup"):  # cold starts stay out
                self.ttft.observe(r["ttft_ms"] / 1000.0, tags=tags)
            self.requests.inc(1, tags={**tags, "status": "ok" if r["ok"] else (r["error_type"] or "error")})
