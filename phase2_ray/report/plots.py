"""PNG charts of a run, drawn headless (matplotlib Agg) from report.json and the run's CSVs alone."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib
import matplotlib.ticker

from phase2_ray.config import stored_skip_steps

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from phase2_ray.core.atomic import write_atomic  # noqa: E402
from phase2_ray.core.specs import tokens_per_step  # noqa: E402
from phase2_ray.report.schema import Report  # noqa: E402
from phase2_ray.report.schema.inference import LevelSummary, ModelInference  # noqa: E402
from phase2_ray.report.schema.serving import Capacity  # noqa: E402
from phase2_ray.report.stats import median_ci  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return write_atomic(path, buf.getvalue())


def loss_curves(steps: pd.DataFrame, val: pd.DataFrame, path: Path) -> Path:
    """Train loss of every variant overlaid, val loss as points on the same axes."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, (v, g) in enumerate(steps.groupby("variant", sort=False)):
        color = f"C{i}"
        ax.plot(g["step"], g["loss"], lw=1, alpha=0.8, color=color, label=f"{v} train")
        vv = val[val["variant"] == v]
        ax.plot(vv["step"], vv["val_loss"], "o", ms=5, color=color, mec="black", label=f"{v} val")
    ax.set(
        xlabel="step", ylabel="loss (nats/token)", title="Loss curves (same seed, data order, token budget)"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def step_time_distribution(steps: pd.DataFrame, skip: int, path: Path) -> Path:
    """Steady-state step times per variant (warm-up/compile steps left out), as box plots over the raw points."""
    steady = steps[steps["step"] > skip]
    groups = [(v, g["step_s"].to_numpy() * 1000) for v, g in steady.groupby("variant", sort=False)]
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.7 * max(1, len(groups))))
    ax.boxplot([x for _, x in groups], vert=False, showfliers=False, widths=0.5)
    for i, (_, x) in enumerate(groups, start=1):
        jitter = np.random.default_rng(i).uniform(-0.18, 0.18, len(x))
        ax.plot(x, i + jitter, ".", ms=2, alpha=0.35, color=f"C{i - 1}")
    ax.set_yticks(range(1, len(groups) + 1), [v for v, _ in groups])
    ax.set(xlabel=f"step time (ms), steps > {skip}", title="Step-time distribution")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def throughput_bars(steps: pd.DataFrame, skip: int, tokens_per_step: int, path: Path) -> Path:
    """Steady tokens/s per variant (from the median step time) with its 95% moving-block bootstrap CI as whiskers (concurrent run: descriptive)."""
    steady = steps[steps["step"] > skip]
    names, mid, lo, hi = [], [], [], []
    for v, g in steady.groupby("variant", sort=False):
        ci = median_ci(g["step_s"].to_numpy())
        names.append(v)
        mid.append(tokens_per_step / ci["median"])
        lo.append(tokens_per_step / ci["ci_high"])  # a slower step is fewer tokens/s
        hi.append(tokens_per_step / ci["ci_low"])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(names))
    ax.bar(x, mid, color=[f"C{i}" for i in range(len(names))], alpha=0.85)
    ax.errorbar(
        x, mid, yerr=[np.subtract(mid, lo), np.subtract(hi, mid)], fmt="none", ecolor="black", capsize=6
    )
    for xi, m in zip(x, mid, strict=True):
        ax.text(xi, m / 2, f"{m:,.0f}", ha="center", va="center", fontsize=10, color="white")
    ax.set_xticks(x, names)
    ax.set(
        ylabel="tokens/s (steady state)", title="Training throughput (concurrent run), 95% block-bootstrap CI"
    )
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def latency_percentiles(inference: dict[str, ModelInference], path: Path) -> Path:
    """TTFT and TPOT at p50/p90/p99 for every model and load level (log scale: levels differ by 10x)."""
    return _save(latency_figure(inference), path)


def latency_figure(inference: dict[str, ModelInference]):
    """latency_percentiles' figure. Constrained layout: the figure's title gets its own room above the subplots'
    (with a few rows the figure is short, and a suptitle placed by hand ran into them)."""
    rows: list[tuple[str, str, LevelSummary]] = [
        (m, lv, s)
        for m, i in inference.items()
        for lv, s in (i.levels or {i.headline_level or "run": i}).items()
    ]
    fig, axes = plt.subplots(
        1, 2, figsize=(11, 0.8 + 0.32 * max(4, len(rows))), sharey=True, layout="constrained"
    )
    y = np.arange(len(rows))
    for ax, metric, title in ((axes[0], "ttft_ms", "TTFT (ms)"), (axes[1], "tpot_ms", "TPOT (ms)")):
        for k, (q, alpha) in enumerate((("p50", 1.0), ("p90", 0.6), ("p99", 0.35))):
            vals = [(getattr(getattr(s, metric), q, None) or np.nan) for _, _, s in rows]
            ax.barh(
                y + (k - 1) * 0.27, vals, height=0.26, alpha=alpha, color="C0" if k == 0 else "C1", label=q
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(title=title)
        ax.grid(axis="x", alpha=0.3, which="both")
    axes[0].set_yticks(y, [f"{m} · {lv}" for m, lv, _ in rows])
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=8)
    fig.suptitle("Inference latency percentiles at the client (HTTP)")
    return fig


def latency_vs_load(cap: Capacity, path: Path) -> Path:
    """p50 / p99 TTFT and TPOT against the offered rate, one line per search (model, replica count), the SLO as a
    horizontal line and each capacity (with its interval) as a vertical one."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for i, run in enumerate(cap.runs):
        color = f"C{i}"
        lv = sorted((x for x in run.levels if x.valid), key=lambda x: x.offered_rps)
        rates = [x.offered_rps for x in lv]
        for ax, key in ((axes[0], "ttft"), (axes[1], "tpot")):
            for q, style in (("p50", "-o"), ("p99", ":^")):
                ys = [
                    (getattr(x.latency, f"{key}_{q}_ms", None) if x.latency else None) or np.nan for x in lv
                ]
                ax.plot(rates, ys, style, color=color, ms=4, label=f"{run.model} ×{run.replicas} {q}")
            if run.capacity_rps:
                ax.axvline(run.capacity_rps, color=color, lw=1, ls="--")
                if run.ci_low is not None and run.ci_high is not None:
                    ax.axvspan(run.ci_low, run.ci_high, color=color, alpha=0.08)
    for ax, key, title in ((axes[0], "ttft_ms", "TTFT (ms)"), (axes[1], "tpot_ms", "TPOT (ms)")):
        slo = getattr(cap.slo, key)
        ax.axhline(slo, color="black", lw=1, label=f"SLO {slo:g} ms")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set(xlabel="offered rate (requests/s, Poisson)", title=title)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle("Latency vs offered load (dashed: capacity under the SLO, shaded: its interval)")
    return _save(fig, path)


def latency_cdfs(req: pd.DataFrame, path: Path) -> Path:
    """Empirical CDFs of TTFT and of inter-token latency per model, over every measured successful request."""
    ok = req[req["ok"].astype(bool) & ~req["warmup"].astype(bool)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for i, (m, g) in enumerate(ok.groupby("variant", sort=False)):
        itl = [x for v in g["itl_ms"] for x in (json.loads(v) if isinstance(v, str) else v)]
        for ax, xs in ((axes[0], g["ttft_ms"].dropna().to_numpy()), (axes[1], np.asarray(itl, dtype=float))):
            if len(xs):
                xs = np.sort(xs)
                ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", color=f"C{i}", label=m)
    for ax, title in ((axes[0], "TTFT (ms)"), (axes[1], "inter-token latency (ms)")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set(xlabel=title, ylabel="share of requests" if ax is axes[0] else "share of tokens")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle("Latency CDFs per model (every closed-loop level, measured requests)")
    return _save(fig, path)


def gantt(report: Report, path: Path) -> Path:
    """Every stage and actor on one time axis: overlapping bars are work that ran at the same time."""
    stages = [s for s in report.stages if s.start and s.end]
    t0 = report.started_at
    fig, ax = plt.subplots(figsize=(10, 0.8 + 0.38 * max(3, len(stages))))
    colors = {"ok": "C2", "failed": "C3", "running": "C7"}
    for i, s in enumerate(stages):
        end = s.end or s.start
        ax.barh(i, end - s.start, left=s.start - t0, color=colors.get(s.status, "C0"), alpha=0.85)
        ax.text(end - t0, i, f" {end - s.start:.1f} s", va="center", fontsize=8)
    ax.set_yticks(range(len(stages)), [s.name + (f" ({s.variant})" if s.variant else "") for s in stages])
    ax.invert_yaxis()
    ax.set(xlabel="seconds since the run started", title="Run timeline (green ok, red failed)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def write_plots(out: Path, report: Report, steps: pd.DataFrame, val: pd.DataFrame) -> dict[str, str]:
    """Every chart the data allows, under out/plots/; returns {chart: path relative to out}."""
    plots = out / "plots"
    made: dict[str, Path] = {}
    cfg = report.config  # the stored config: open JSON (its layout is the config's, not the report's)
    skip = stored_skip_steps(cfg)
    per_step = tokens_per_step(cfg["training"]["batch_size"], cfg["model"]["block_size"])
    if len(steps):
        made["loss"] = loss_curves(steps, val, plots / "loss.png")
        if (steps["step"] > skip).any():
            made["step_times"] = step_time_distribution(steps, skip, plots / "step_times.png")
            made["throughput"] = throughput_bars(steps, skip, per_step, plots / "throughput.png")
    if report.inference:
        made["latency"] = latency_percentiles(report.inference, plots / "latency.png")
        if (out / "requests.csv").exists():
            req = pd.read_csv(out / "requests.csv")
            if len(req):
                made["latency_cdf"] = latency_cdfs(req, plots / "latency_cdf.png")
    cap = report.serving.capacity
    if cap and cap.runs:
        made["capacity"] = latency_vs_load(cap, plots / "capacity.png")
    if report.stages:
        made["timeline"] = gantt(report, plots / "timeline.png")
    return {k: str(p.relative_to(out)) for k, p in made.items()}
