"""What a run shows while it runs: progress bars from the actors and metrics on Ray's metrics endpoint.

Metrics go through `ray.util.metrics`, so they reach the node's Prometheus endpoint and the dashboard's Metrics
view as `ray_phase2_*`, tagged with the run id and the variant (or model id)."""

from __future__ import annotations

import time

from ray.util.metrics import Counter, Gauge, Histogram

TAGS = ("run_id", "variant")
STEP_BOUNDARIES = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
TTFT_BOUNDARIES = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]


class TrainTelemetry:
    """Per training actor: loss and tokens/s gauges, a step-time histogram, and progress for whoever watches:
    a bar at a terminal, plain lines otherwise, nothing when the driver's output must stay parseable."""

    def __init__(
        self,
        run_id: str,
        variant: str,
        label: str,
        steps: int,
        tokens_per_step: int,
        progress: str = "off",
        log_every: int = 0,
        line_interval_s: float = 10.0,
    ) -> None:
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
        self.label, self.steps = label, steps
        self.progress, self.log_every, self.line_interval_s = progress, log_every, line_interval_s
        self.last_line = time.monotonic()
        self.bar = None
        if progress == "bar":
            from ray.experimental.tqdm_ray import tqdm  # draws on the driver, whichever node the actor is on

            self.bar = tqdm(desc=label, total=steps, unit="step")

    def step(self, step: int, loss: float, dt: float) -> None:
        tps = self.tokens_per_step / dt if dt > 0 else 0.0
        self.loss.set(loss)
        self.tokens_per_s.set(tps)
        self.step_s.observe(dt)
        if self.progress == "off":
            return
        if self.bar is not None:
            self.bar.update(1)
            if step % 10 == 0:
                self.bar.set_description(f"{self.label} loss {loss:.3f} {tps:,.0f} tok/s")
        now = time.monotonic()
        due = bool(self.log_every) and step % self.log_every == 0
        # Where no terminal is attached (CI logs, `ray job logs`) a bar's redraws would fill the log with
        # partial bars: one plain line per interval instead, and the last step's.
        if self.bar is None and (now - self.last_line >= self.line_interval_s or step == self.steps):
            due = True
        if due:
            self.last_line = now
            print(
                f"[{self.label}] step {step}/{self.steps} loss {loss:.4f} step {dt * 1000:.1f} ms "
                f"{tps:,.0f} tok/s",
                flush=True,
            )

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
