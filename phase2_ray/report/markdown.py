"""Stage 2d: the CSVs, and report.md rendered from report.json alone.

Every figure in report.md is read or computed from the report dict, so every ratio recomputes from report.json."""

from __future__ import annotations

import html
import json
import math
import re
import textwrap
import time
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from phase2_ray.core.atomic import write_atomic
from phase2_ray.report.serving import request_frame
from phase2_ray.report.stats import ratio
from phase2_ray.report.training import step_frame

WIDTH = 100  # report.md's ASCII sections fit this many columns


def write_run_dir(out: Path, report: dict, training: dict[str, dict], validation: dict) -> Path:
    """Writes CSVs, report.json and report.md atomically; report.md last, so its presence means a whole report."""
    steps = step_frame(training)
    write_atomic(out / "steps.csv", steps.to_csv(index=False))
    val_rows = [
        {"variant": v, "step": s, "val_loss": x}
        for v, t in report["training"].items()
        for s, x in t["val_curve"]
    ]
    write_atomic(
        out / "val.csv", pd.DataFrame(val_rows, columns=["variant", "step", "val_loss"]).to_csv(index=False)
    )
    req = request_frame(validation.get("records", []))
    for col in ("itl_ms", "write_gap_ms", "tokens_per_write"):
        req[col] = req[col].map(json.dumps)
    write_atomic(out / "requests.csv", req.to_csv(index=False))
    ref = [r for m in validation.get("reference", {}).values() for r in m["records"]]
    ref_frame = request_frame(ref).drop(
        columns=["level", "status", "error_type", "error", "prompt_tokens", "text"]
    )
    for col in ("itl_ms", "write_gap_ms", "tokens_per_write"):
        ref_frame[col] = ref_frame[col].map(json.dumps)
    write_atomic(out / "inprocess_requests.csv", ref_frame.to_csv(index=False))
    write_atomic(out / "gates.csv", pd.DataFrame(report["decision"]["gates"]).to_csv(index=False))
    write_atomic(out / "report.json", json.dumps(report, indent=2, default=_json_default))
    return render_run_dir(out)


def render_run_dir(out: str | Path) -> Path:
    """Draws plots/*.png, report.md and a self-contained report.html from report.json and the CSVs alone (no
    Ray): what `phase2 report RUN_DIR` runs. report.md is written last, so its presence means a whole report."""
    from phase2_ray.report.plots import write_plots  # matplotlib only when drawing

    out = Path(out)
    report = json.loads((out / "report.json").read_text())
    steps = pd.read_csv(out / "steps.csv") if (out / "steps.csv").exists() else step_frame({})
    val_path = out / "val.csv"
    val = (
        pd.read_csv(val_path) if val_path.exists() else pd.DataFrame(columns=["variant", "step", "val_loss"])
    )
    plots = write_plots(out, report, steps, val)
    md = render_markdown(report, plots)
    write_atomic(out / "report.html", render_html(md, out, report["run_id"]))
    return write_atomic(out / "report.md", md)


def render_html(md: str, base: Path, title: str) -> str:
    """report.md as one HTML file with its images inlined (base64), readable in a browser with no server."""
    import base64

    import markdown

    body = markdown.markdown(md, extensions=["tables", "fenced_code"])

    def inline(m: re.Match) -> str:
        path = base / m.group(1)
        if not path.is_file():
            return m.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode("ascii")}"'

    body = re.sub(r'src="(plots/[^"]+\.png)"', inline, body)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
        "pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:12px;line-height:1.25}"
        "table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n{body}\n</body></html>\n"
    )


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


# ---------------------------------------------------------------- rendering (report dict -> Markdown)


def _f(x, digits: int = 2, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "not measured"
    return f"{x:,.{digits}f}{unit}"


def _bar(value: float | None, scale: float, width: int = 40, ch: str = "■") -> str:
    if value is None or not scale:
        return ""
    return ch * max(1, round(width * value / scale))


def _pct(a, b) -> str:
    """Relative change from a to b in percent, signed."""
    if a is None or b is None or not a:
        return "n/a"
    return f"{(b - a) / a * 100:+.1f}%"


def render_markdown(r: dict, plots: dict[str, str] | None = None) -> str:
    dec = r["decision"]
    parts = [
        f"# Phase 2 completion report — {r['run_id']}"
        + (" (INCOMPLETE)" if r.get("incomplete") else "")
        + "\n",
        f"**Decision: {'APPROVED' if dec['approved'] else 'REJECTED'}** "
        f"({sum(g['passed'] for g in dec['gates'])}/{len(dec['gates'])} gates passed)"
        + (f" — {r['failure']}" if r.get("failure") else ""),
        f"\nRun wall time {_f(r['wall_s'], 1, ' s')} on {r['environment'].get('cpu_model', '?')} "
        f"({r['environment'].get('cpu_count')} CPUs), torch {r['environment'].get('torch')}, "
        f"ray {r['environment'].get('ray')}.{_placement_line(r)}\n"
        "Every figure below is read from report.json in this directory.\n",
        _at_a_glance(r),
        _charts(plots or {}),
        _training_timeline(r),
        _speedup(r),
        _loss_chart(r),
        _inference_vs_targets(r),
        _serving_section(r),
        _gates_table(r),
        _dashboard(r),
        _comparative_table(r),
        _run_timeline(r),
        _checklist(r),
        _recommendation(r),
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _placement_line(r: dict) -> str:
    """One sentence on where things ran, only when the cluster had more than one node."""
    p = r.get("placement") or {}
    nodes = p.get("nodes") or []
    if len(nodes) < 2:
        return ""
    short = {n["node_id"]: f"node{i}" + (" (head)" if n["is_head"] else "") for i, n in enumerate(nodes)}

    def names(ids: list[str]) -> str:
        return ", ".join(sorted({short.get(i, i[:8]) for i in ids})) or "n/a"

    train = "; ".join(f"{v} on {short.get(n, n[:8])}" for v, n in p.get("training", {}).items())
    return (
        f"\nPlacement over {len(nodes)} nodes, policy {p.get('policy')}"
        f" ({p.get('strategy') or 'no placement group'}): {train}; Serve replicas on {names(p['replicas'])}; "
        f"load clients on {names(p['load_clients'])} (node ids in report.json `placement`)."
    )


CHART_TITLES = {
    "loss": "Loss curves: train loss per step, val loss as points",
    "step_times": "Step-time distribution (steady state)",
    "throughput": "Training throughput during the concurrent run, 95% block-bootstrap CI",
    "latency": "TTFT / TPOT percentiles per model and load level",
    "timeline": "Run timeline: stages and actors",
}


def _charts(plots: dict[str, str]) -> str:
    if not plots:
        return ""
    return (
        "## Charts\n\n"
        + "\n\n".join(f"![{CHART_TITLES.get(k, k)}]({path})" for k, path in plots.items())
        + "\n"
    )


def _training_timeline(r: dict) -> str:
    tr = r["training"]
    if not tr:
        return "## Training Timeline\n\nNo variant finished training.\n"
    longest = max(t["stage_s"] for t in tr.values())
    lines = []
    for v, t in tr.items():
        stage = next((s["name"] for s in r["stages"] if s.get("variant") == v), "?")
        # Only the parts switched on (all off: eager fp32), so the line fits 100 columns.
        on = [f"{k}={val}" for k, val in t["optimizations"].items() if val not in (False, None, "default")]
        opt = ", ".join(on) or "none (eager fp32)"
        if t.get("auto"):
            opt = f"auto → {t['auto']['chosen']}: {opt}"
        lines += [
            f"{v.upper()} TRAINING (Stage {stage})",
            f"├─ Duration: {_f(t['stage_s'], 1, ' s')} stage wall; training loop {_f(t['train_s'], 1, ' s')}, "
            f"of which warm-up/compile steps {_f(t['warmup_s'], 1, ' s')}",
            f"├─ Loss: {_f(t['initial_loss'], 4)} ──► {_f(t['final_loss'], 4)} "
            f"(train, {_pct(t['initial_loss'], t['final_loss'])}); val {_f(t['initial_val_loss'], 4)} ──► {_f(t['val_loss'], 4)}",
            f"├─ Throughput: {_f(t['tokens_per_s'], 0, ' tok/s')} ({t['tokens_per_s_basis']}); "
            f"{_f(t['stage_tokens_per_s'], 0, ' tok/s')} whole stage",
            f"├─ Model: {t['params']:,} parameters, {t['steps']} steps, {t['tokens']:,} tokens",
            f"├─ Optimizations: {opt}",
            *(
                [
                    f"├─ Restarts: {t['restarts']} (its process died; resumed from the state saved at step "
                    f"{t['resumed_from_step']})"
                ]
                if t.get("restarts")
                else []
            ),
            f"└─ Status: {t['status'].upper()}" + (f" — {t['error']}" if t["error"] else ""),
            "",
            f"   {_bar(t['stage_s'], longest, 60)} {_f(t['stage_s'], 1, ' s')}",
            "",
        ]
    return "## Training Timeline\n\n```\n" + "\n".join(_fit(lines)) + "```\n"


def _fit(lines: list[str], width: int = WIDTH) -> list[str]:
    """Lines of an ASCII block wrapped to `width` (continuations indented under their line's own indent): names
    and numbers vary in width from run to run and machine to machine."""
    out = []
    for ln in lines:
        indent = " " * (len(ln) - len(ln.lstrip()) + 4)
        out += textwrap.wrap(ln, width, subsequent_indent=indent) if len(ln) > width else [ln]
    return out


def _verdict(sp: dict) -> str:
    if sp.get("ratio") is None:
        return "not measured"
    if not sp["significant"]:
        return "not significant: the CI includes 1.00x"
    return "significantly faster" if sp["ci_low"] > 1 else "significantly SLOWER"


def speed_explanation(r: dict, v: str) -> str:
    """One plain sentence: what the speed trial shows for variant `v`, read from its figures and gates."""
    c = r["comparison"][v]
    sp, need = c["speedup"], r["config"]["targets"]["speedup_min"]
    if c.get("noop"):
        return f"No speedup to claim: {c['noop_reason']}."
    if sp.get("ratio") is None:
        return "The speed trial did not run, so no speedup was measured."
    ci = f"[{sp['ci_low']:.3f}, {sp['ci_high']:.3f}]"
    if sp["ci_low"] > 1 and sp["ratio"] >= need:
        return f"{v} is faster: {sp['ratio']:.3f}x, CI {ci} above 1 and above the {need:g}x floor."
    if sp["ci_low"] > 1:
        return (
            f"{v} is measurably faster ({sp['ratio']:.3f}x, CI {ci}) but by less than the {need:g}x floor: "
            "no speedup worth claiming on this machine."
        )
    if sp["ci_high"] < 1:
        return f"{v} is SLOWER than the baseline on this machine: {sp['ratio']:.3f}x, CI {ci}."
    return f"No measurable speedup on this machine: {sp['ratio']:.3f}x, CI {ci} includes 1."


def _speedup(r: dict) -> str:
    tr, comp = r["training"], r.get("comparison", {})
    if not comp:
        return ""
    b = tr["baseline"]
    lines = []
    for v, c in comp.items():
        t, sp = tr[v], c["speedup"]
        cc = c.get("concurrent") or {}
        st = cc.get("step_time_ratio") or {}
        conf = f"{(sp.get('confidence') or 0.95) * 100:g}%"
        reps = (c.get("speed_trial") or {}).get("replicates") or []
        source = "paired speed trial" if "speed_trial" in c else "concurrent-run median ratio, schema 1.0"
        lines += [
            f"{v} vs baseline",
            f"Speedup ({source}): {_f(sp['ratio'], 3, 'x')}   {conf} CI [{_f(sp['ci_low'], 3)}, "
            f"{_f(sp['ci_high'], 3)}] — {_verdict(sp)}",
            f"  {len(reps)} replicates x {sp.get('pairs', 0) // max(len(reps), 1)} ABBA pairs; replicate ratios "
            + ", ".join(_f(x, 3) for x in sp.get("replicate_ratios", [])),
            *textwrap.wrap(
                speed_explanation(r, v), WIDTH - 4, initial_indent="  => ", subsequent_indent="     "
            ),
            "Observed during the concurrent training (descriptive; not the speed claim):",
            f"  median step time:  {_f(b['step_ms']['p50'] if b['step_ms'] else None, 2)} → "
            f"{_f(t['step_ms']['p50'] if t['step_ms'] else None, 2)} ms = {_f(st.get('ratio'), 3, 'x')} "
            f"[{_f(st.get('ci_low'), 2)}, {_f(st.get('ci_high'), 2)}] (block bootstrap)",
            f"  throughput:        {_f(b['tokens_per_s'], 0)} → {_f(t['tokens_per_s'], 0)} tok/s = "
            f"{_f(cc.get('tokens_per_s_ratio'), 3, 'x')} (median-step basis: equals the step-time ratio)",
            f"  work time:         {_f(b.get('work_s'), 1)} → {_f(t.get('work_s'), 1)} s = "
            f"{_f(cc.get('work_time_ratio'), 3, 'x')} (baseline ÷ {v}; what a user waits for)",
            f"    of which {v}: "
            + (f"`auto` probe {_f(t['auto']['probe_s'], 1)} s, " if t.get("auto") else "")
            + f"warm-up/compile beyond the median step {_f(t['compile_warmup_s'], 1)} s",
            "  Why these can differ from the trial: the two actors ran on different cores next to different "
            "processes,",
            "  and the machine drifts; work time also pays one-time costs (probe, compile, evals).",
            f"Val loss change:             {_f(c['val_loss_delta_pct'], 3, '%')} vs tolerance "
            f"{_f(c['val_loss_tolerance_pct'], 3, '%')}",
            f"  tolerance: {c['val_loss_tolerance_basis']}",
            f"Same data order:             {'yes' if c['same_data_order'] else 'NO'} (batch schedule sha256 "
            f"{t['data_order_sha256']})",
        ]
        if "isolated_speedup" in c:
            iso = c["isolated_speedup"]
            lines.append(
                f"Concurrent vs isolated:      {_f(st.get('ratio'), 3, 'x')} concurrent, {_f(iso['ratio'], 3, 'x')} "
                f"alone [{_f(iso['ci_low'], 2)}, {_f(iso['ci_high'], 2)}] → {_f(c['concurrent_vs_isolated_pct'], 1, '%')}"
            )
        lines.append("")
    mfu_rows = []
    for v, t in tr.items():
        m = t["mfu"]
        mfu_rows.append(
            f"  {v:<12} {_f(m['value'] * 100 if m['value'] is not None else None, 1, '%'):>8}  = "
            f"{_f((m['achieved_flops'] or 0) / 1e9, 2)} GFLOP/s ÷ {_f((m['peak_flops'] or 0) / 1e9, 2)} GFLOP/s "
            f"({m['peak_dtype']} peak)"
        )
    first = next(iter(tr.values()))["mfu"]
    lines += [
        "MFU (model FLOPs utilisation, steady state)",
        *(f"  {part.strip()}" for part in first["formula"].split(";", 1)),
        f"  flops/token = {first['flops_per_token']:,}",
        f"  peak = {first['peak_basis']}",
        *mfu_rows,
    ]
    return "## Speedup Breakdown\n\n```\n" + "\n".join(_fit(lines)) + "\n```\n" + _stack_section(r)


def _stack_section(r: dict) -> str:
    """What each variant ran with; for `auto` variants, every probed candidate and why the winner won."""
    out = []
    for v, t in r["training"].items():
        a = t.get("auto")
        if not a:
            continue
        rows = [
            [
                c["name"],
                _f(c["median_step_ms"], 2),
                _f(c["first_step_s"], 2),
                _f(c["mean_loss"], 4),
                _f(c["loss_delta_pct"], 3),
                "yes" if c["accepted"] else "no",
                "<-" if c["name"] == a["chosen"] else "",
            ]
            for c in a["candidates"]
        ]
        out.append(
            f"\n`{v}` is `auto`: {len(rows)} candidate stacks probed for {a['steps']} steps each "
            f"({_f(a['probe_s'], 1, ' s')}); kept the fastest whose loss is within {a['tolerance_pct']}% of eager fp32.\n\n"
            + tabulate(
                rows,
                headers=[
                    "stack",
                    "median ms/step",
                    "first step s",
                    "mean loss",
                    "Δ loss %",
                    "accepted",
                    "chosen",
                ],
                tablefmt="github",
            )
            + "\n"
        )
    if any(len(t["repeats"]) > 1 for t in r["training"].values()):
        rows = [
            [
                v,
                x["seed"],
                x["phase"],
                _f(x["val_loss"], 4),
                _f(x["step_ms_p50"], 2),
                _f(x["tokens_per_s"], 0),
            ]
            for v, t in r["training"].items()
            for x in t["repeats"]
        ]
        out.append(
            "\n### Seeds\n\nEvery variant trained once per seed; the val-loss gate compares seed means and takes its "
            "tolerance from the baseline's seed-to-seed spread.\n\n"
            + tabulate(
                rows,
                headers=["variant", "seed", "run", "val loss", "median ms/step", "tok/s"],
                tablefmt="github",
            )
            + "\n"
        )
    if len(r["training"]) > 2:
        rows = []
        for v, t in r["training"].items():
            c = r["comparison"].get(v)
            opts = ", ".join(f"{k}={x}" for k, x in t["settings"].items() if x not in (False, "default"))
            rows.append(
                [
                    v,
                    opts or "(none)",
                    _f(c["speedup"]["ratio"], 3, "x") if c else "1 (reference)",
                    f"[{_f(c['speedup']['ci_low'], 2)}, {_f(c['speedup']['ci_high'], 2)}]" if c else "",
                    _verdict(c["speedup"]) if c else "",
                    _f(c["val_loss_delta_pct"], 3, "%") if c else "",
                    _f(t["mfu"]["value"] * 100 if t["mfu"]["value"] is not None else None, 1, "%"),
                ]
            )
        out.append(
            "\n### Each optimization's contribution\n\n"
            + tabulate(
                rows,
                headers=["variant", "settings", "speedup", "95% CI", "verdict", "Δ val loss", "MFU"],
                tablefmt="github",
            )
            + "\n"
        )
    return "".join(out)


def _loss_chart(r: dict, width: int = 72, height: int = 14) -> str:
    curves = {v: [p[1] for p in t["loss_curve"]] for v, t in r["training"].items() if t["loss_curve"]}
    curves = {v: c for v, c in curves.items() if all(math.isfinite(x) for x in c)}
    if not curves:
        return ""
    marks = "*o+x%@"
    steps = max(len(c) for c in curves.values())
    # Average the steps that fall in each column: the chart shows the trend, not per-step noise.
    cols = {v: _columns(c, width) for v, c in curves.items()}
    lo = min(min(c) for c in cols.values())
    hi = max(max(c) for c in cols.values())
    span = hi - lo or 1.0
    grid = [[" "] * width for _ in range(height)]
    for k, c in enumerate(cols.values()):
        for x, y in enumerate(c):
            row = height - 1 - round((y - lo) / span * (height - 1))
            grid[row][x] = "#" if grid[row][x] not in (" ", marks[k]) else marks[k]
    lines = []
    for i, row in enumerate(grid):
        yv = hi - i * span / (height - 1)
        lines.append(f"{yv:7.3f} │{''.join(row)}")
    lines.append("        └" + "─" * width)
    lines.append(f"         step 1{' ' * (width - 12 - len(str(steps)))}step {steps}")
    legend = "   ".join(f"{marks[k]} {v}" for k, v in enumerate(cols)) + "   # overlap"
    vals = []
    for v, t in r["training"].items():
        vals.append(f"{v}: final val loss {_f(t['val_loss'], 4)}")
    verdict = ""
    for v, c in r.get("comparison", {}).items():
        verdict += f"\n{v} vs baseline: |Δ val loss| = {_f(c['val_loss_delta_pct'], 3, '%')}"
    return (
        "## Loss Convergence Comparison\n\n```\nTraining loss (per-step, column-averaged)   "
        + legend
        + "\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(vals)
        + verdict
        + "\n```\n"
    )


def _columns(values: list[float], width: int) -> list[float]:
    """`values` resampled to `width` columns, each the mean of the values that fall in it."""
    out = []
    for i in range(width):
        lo = i * len(values) // width
        chunk = values[lo : max((i + 1) * len(values) // width, lo + 1)]
        out.append(sum(chunk) / len(chunk))
    return out


def _inference_vs_targets(r: dict) -> str:
    inf, targets = r["inference"], r["config"]["targets"]
    if not inf:
        return "## Inference Performance vs Targets\n\nStage 2c did not run: nothing measured.\n"
    rows = [
        ("TTFT p50", "ttft_ms", "p50", "ms", targets["ttft_p50_ms_max"], "max"),
        (
            "Output throughput",
            "output_tokens_per_s",
            None,
            "tok/s",
            targets["output_tokens_per_s_min"],
            "min",
        ),
        ("Peak replica memory (RSS)", "peak_memory_mb", None, "MB", targets["peak_memory_mb_max"], "max"),
    ]
    lines = []
    w = max(12, *(len(v) + 1 for v in inf))
    for title, key, sub, unit, target, kind in rows:
        vals = {v: (i.get(key) or {}).get(sub) if sub else i.get(key) for v, i in inf.items()}
        scale = max([target] + [x for x in vals.values() if x is not None])
        lines.append(f"{title} (target: {'≤' if kind == 'max' else '≥'} {target:g} {unit})")
        lines.append(f"  {'target':<{w}} {_bar(target, scale, 40, '█'):<40} {target:g} {unit}")
        for v, x in vals.items():
            if x is None:
                lines.append(f"  {v:<{w}} not measured")
                continue
            head = (target / x if kind == "max" else x / target) if x else float("inf")
            side = "within" if (x <= target if kind == "max" else x >= target) else "MISSES"
            lines.append(
                f"  {v:<{w}} {_bar(x, scale, 40):<40} {_f(x, 2)} {unit} ({side}; "
                f"{'target/value' if kind == 'max' else 'value/target'} {head:.2f})"
            )
        lines.append("")
    lat = []
    for v, i in inf.items():
        for m in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            d = i.get(m) or {}
            lat.append(
                [v, m, _f(d.get("p50")), _f(d.get("p90")), _f(d.get("p99")), _f(d.get("mean")), d.get("n", 0)]
            )
    succ = "\n".join(
        f"  {v}: {i['succeeded']}/{i['requests']} ({i['success_rate'] * 100:.1f}%)" for v, i in inf.items()
    )
    return (
        "## Inference Performance vs Targets\n\n```\n"
        + "\n".join(lines)
        + f"Success rate:\n{succ}\n```\n\nLatency percentiles (ms; TTFT and ITL measured at the client over HTTP):\n\n"
        + tabulate(lat, headers=["variant", "metric", "p50", "p90", "p99", "mean", "n"], tablefmt="github")
        + "\n"
    )


def _serving_section(r: dict) -> str:
    inf, sv = r["inference"], r.get("serving") or {}
    if not inf:
        return ""
    rows = []
    for m, i in inf.items():
        for lv, s in i.get("levels", {}).items():

            def g(k: str, q: str = "p50", s=s):
                return (s.get(k) or {}).get(q)

            rows.append(
                [
                    m,
                    lv,
                    _f(g("ttft_ms")),
                    _f(g("ttft_ms", "p99")),
                    _f(g("tpot_ms")),
                    _f(g("itl_ms", "p99")),
                    _f(g("e2e_ms")),
                    _f(s.get("output_tokens_per_s"), 0),
                    _f(s.get("requests_per_s"), 1),
                    _f((s.get("goodput") or {}).get("fraction", 0) * 100, 1),
                    f"{s['succeeded']}/{s['requests']}",
                ]
            )
    out = [
        "## Serving: Load Levels, Overhead, Scaling, Compression\n",
        "Closed-loop levels (cN = N requests in flight), measured at the client over HTTP; warm-up excluded. "
        "Output tok/s = all output tokens of successful requests / the level's wall window. Goodput = requests "
        "meeting both SLOs (TTFT ≤ the TTFT target, TPOT ≤ 1000 / the tok/s target), as vLLM's benchmark counts.\n",
        tabulate(
            rows,
            headers=[
                "model",
                "level",
                "TTFT p50",
                "TTFT p99",
                "TPOT p50",
                "ITL p99",
                "E2E p50",
                "out tok/s",
                "req/s",
                "goodput %",
                "ok",
            ],
            tablefmt="github",
        ),
    ]
    cs = sv.get("concurrency_scaling") or {}
    if cs:
        out.append("\nAggregate throughput from the first to the last level (batching at work):\n")
        out += [
            f"- {m}: {_f(c['output_tokens_per_s_to'], 0)} tok/s at {c['to']} / {_f(c['output_tokens_per_s_from'], 0)}"
            f" at {c['from']} = **{_f(c['ratio'])}x**"
            for m, c in cs.items()
        ]
    ov = sv.get("overhead") or {}
    if any(o["ttft_p50_ms_inprocess"] is not None for o in ov.values()):
        out.append(
            "\nServe + HTTP overhead: the same prompts and sampling through the same engine in-process (no Serve, "
            "no HTTP), one at a time, against the HTTP level above:\n"
        )
        out.append(
            tabulate(
                [
                    [
                        m,
                        o["level"],
                        _f(o["ttft_p50_ms_inprocess"]),
                        _f(o["ttft_p50_ms_http"]),
                        _f(o["ttft_p50_overhead_ms"]),
                        _f(o["tpot_p50_ms_inprocess"], 3),
                        _f(o["tpot_p50_ms_http"], 3),
                        _f(o["tpot_p50_overhead_ms"], 3),
                    ]
                    for m, o in ov.items()
                ],
                headers=[
                    "model",
                    "HTTP level",
                    "TTFT p50 in-proc",
                    "TTFT p50 HTTP",
                    "overhead ms",
                    "TPOT p50 in-proc",
                    "TPOT p50 HTTP",
                    "overhead ms/token",
                ],
                tablefmt="github",
            )
        )
    rsc = sv.get("replica_scaling")
    if rsc:
        out.append(f"\nReplica scaling ({rsc['model']}, {rsc['concurrency']} requests in flight):\n")
        out += [
            f"- {x['replicas']} replica(s): {_f(x['output_tokens_per_s'], 0)} tok/s, {_f(x['requests_per_s'], 1)} "
            f"req/s, {x['requests'] and round(x['success_rate'] * x['requests'])}/{x['requests']} ok, peak RSS "
            f"{', '.join(_f(p, 0) for p in x['peak_rss_mb'])} MB"
            for x in rsc["runs"]
        ]
        out.append(f"- ratio: **{_f(rsc['ratio'])}x** ({rsc['ratio_basis']})")
    mem = [
        [
            m,
            _f(i.get("peak_memory_mb"), 1),
            _f(i.get("rss_mb"), 1),
            _f(i.get("uss_mb"), 1),
            _f((i.get("model_bytes") or {}).get("weights"), 0),
            _f((i.get("model_bytes") or {}).get("kv_cache"), 0),
        ]
        for m, i in inf.items()
    ]
    out.append("\nMemory (one replica holds every model; MB = 2^20 bytes):\n")
    out.append(
        tabulate(
            mem,
            headers=[
                "model",
                "replica peak RSS MB",
                "RSS now MB",
                "USS MB",
                "weight bytes",
                "KV-cache bytes",
            ],
            tablefmt="github",
        )
    )
    comp = sv.get("compression")
    if comp:
        sp = comp["inprocess_request_tokens_per_s_p50"]
        out.append(
            f"\nCompression ({comp['method']}): val loss {_f(comp['val_loss_source'], 4)} → "
            f"{_f(comp['val_loss_int8'], 4)} ({comp['val_loss_delta_pct']:+.3f}%, gate ≤ {comp['threshold_pct']:g}%); "
            f"weights {_f(comp['weight_bytes_source'], 0)} → {_f(comp['weight_bytes_int8'], 0)} bytes "
            f"({_f(comp['weight_bytes_ratio'], 3)}x); in-process decode p50 {_f(sp[comp['source']], 0)} → "
            f"{_f(sp[comp['model']], 0)} tok/s per request."
        )
    return "\n".join(out) + "\n"


def _gates_table(r: dict) -> str:
    rows = [
        [
            g["name"],
            g["variant"],
            _f(g["value"], 3) if g["value"] is not None else "not measured",
            g["op"],
            f"{g['threshold']:g}",
            _f(g["margin"], 3) if g["margin"] is not None else "—",
            g["unit"],
            "PASS" if g["passed"] else "FAIL",
        ]
        for g in r["decision"]["gates"]
    ]
    return (
        "## Approval Gates\n\nMargin = how far the value sits on the passing side of the threshold (negative: missed by).\n\n"
        + tabulate(
            rows,
            headers=["gate", "variant", "value", "op", "threshold", "margin", "unit", "result"],
            tablefmt="github",
        )
        + "\n"
    )


def _dashboard(r: dict) -> str:
    titles = {
        "data": "Data + tokenizer",
        "2a": "Baseline training",
        "2b": "Optimized training",
        "speed-trial": "Paired speed trial",
        "2c": "Inference validation",
        "2d": "Final reporting",
    }
    lines = ["┌" + "─" * 62 + "┐", f"│ {'PHASE 2 COMPLETION STATUS':<60} │", "├" + "─" * 62 + "┤"]
    for s in r["stages"]:
        title = titles.get(s["name"], f"Training {s.get('variant')}")
        dur = (s["end"] or time.time()) - s["start"]
        label = f"Stage {s['name']:<5} {title:<26} {s['status'].upper():<8} {dur:6.1f} s"
        lines.append(f"│ {label:<60} │")
    verdict = "APPROVED" if r["decision"]["approved"] else "REJECTED"
    failed = [f"{g['name']}/{g['variant']}" for g in r["decision"]["gates"] if not g["passed"]]
    lines += ["├" + "─" * 62 + "┤", f"│ {'OVERALL RESULT: ' + verdict:<60} │"]
    for f in failed[:6]:
        lines.append(f"│ {'  failed gate: ' + f:<60} │")
    lines.append("└" + "─" * 62 + "┘")
    return "## Phase 2 Completion Dashboard\n\n```\n" + "\n".join(lines) + "\n```\n"


def _ci_cell(x: dict | None, better: str) -> tuple[str, str, str]:
    """(ratio, CI, call) cells of a ratio-with-CI: a difference is called only when the CI excludes 1."""
    if not x or x.get("ratio") is None:
        return "n/a", "", "not measured"
    if x.get("ci_low") is None:
        return f"{x['ratio']:.3f}", "no interval", f"not called ({x.get('rounds', 0)} round(s))"
    ci = f"[{x['ci_low']:.3f}, {x['ci_high']:.3f}]"
    if x["ci_low"] <= 1 <= x["ci_high"]:
        return f"{x['ratio']:.3f}", ci, "no difference shown"
    up = x["ci_low"] > 1
    return f"{x['ratio']:.3f}", ci, "better" if up == (better == "higher") else "WORSE"


GATE_ADVICE = {
    "training_speedup": "a stack at least {threshold:g}x faster than the baseline on this machine (a larger model, "
    "where compile and bf16 pay; hardware with AMX / AVX-512 BF16, or a GPU), or a lower targets.speedup_min "
    "if a smaller gain is worth shipping",
    "training_speedup_ci_low": "a speedup that stands out of the trial's noise: a faster stack, or more "
    "replicates (speed_trial.replicates) if the gain is real but small",
    "val_loss_delta_pct": "the variant must converge to within {threshold:g}% of the baseline's val loss "
    "(check bf16 / compile numerics, or the learning-rate schedule)",
    "int8_val_loss_delta_pct": "int8 weights must lose at most {threshold:g}% val loss (keep more layers in fp32)",
    "ttft_p50_ms": "TTFT p50 must come down to {threshold:g} ms (fewer requests in flight per replica, more "
    "replicas, a smaller prompt)",
    "output_tokens_per_s": "output throughput must reach {threshold:g} tok/s (larger batches, more replicas)",
    "peak_memory_mb": "the replica's peak RSS must fit {threshold:g} MB (fewer models per replica, a smaller "
    "KV cache: serve.max_batch_size)",
    "model_memory_mb": "the model's weights + KV cache must fit {threshold:g} MB (int8 weights, a smaller "
    "serve.max_batch_size)",
    "success_rate": "every request must succeed: see the errors by type in report.json inference.<model>.errors",
    "ttft_p50_vs_baseline": "this model's TTFT must not be worse than the baseline model's by more than the "
    "tolerance (targets.serving_regression_pct_max)",
    "tpot_p50_vs_baseline": "this model's per-token time must not be worse than the baseline model's by more "
    "than the tolerance (targets.serving_regression_pct_max)",
    "training_completed": "training must finish with finite loss (lower training.lr, keep grad_clip on)",
    "failed_stages": "every stage must finish: see the stage details and the log",
}


def _at_a_glance(r: dict) -> str:
    """The few lines a reader needs first: training, inference and architecture health, with intervals."""
    tr, inf, comp, sv = r["training"], r["inference"], r.get("comparison", {}), r.get("serving") or {}
    lines = ["Training"]
    for v, c in comp.items():
        sp = c["speedup"]
        lines.append(
            f"  speedup {v} vs baseline: {_f(sp.get('ratio'), 3, 'x')} "
            f"[{_f(sp.get('ci_low'), 3)}, {_f(sp.get('ci_high'), 3)}] "
            + ("(paired trial)" if "speed_trial" in c else "(concurrent-run median ratio, schema 1.0)")
        )
        lines += textwrap.wrap(
            speed_explanation(r, v), WIDTH - 4, initial_indent="    ", subsequent_indent="    "
        )
        lines.append(
            f"  convergence: val loss {_f(tr['baseline']['val_loss'], 4)} → {_f(tr[v]['val_loss'], 4)}, "
            f"|Δ| {_f(c.get('val_loss_delta_pct'), 3, '%')} (tolerance {_f(c.get('val_loss_tolerance_pct'), 2, '%')})"
        )
    for v, t in tr.items():
        m = t["mfu"]["value"]
        lines.append(
            f"  {v}: {_f(t['tokens_per_s'], 0, ' tok/s')} (median step, concurrent run), "
            f"MFU {_f(m * 100 if m is not None else None, 1, '%')}, {t['params']:,} params, {t['status']}"
        )
    lines.append("Inference" + (f" (level {next(iter(inf.values()))['headline_level']})" if inf else ""))
    if not inf:
        lines.append("  not measured: stage 2c did not run")
    for m, i in inf.items():
        ttft, itl = i.get("ttft_ms") or {}, i.get("itl_ms") or {}
        lines.append(
            f"  {m}: TTFT p50 {_f(ttft.get('p50'), 1, ' ms')}, ITL p50 {_f(itl.get('p50'), 2, ' ms')}/token, "
            f"{_f(i.get('output_tokens_per_s'), 0, ' tok/s')}, {i['succeeded']}/{i['requests']} ok"
        )
    for m, ratios in (sv.get("vs_baseline") or {}).items():
        t = ratios.get("ttft_ms") or {}
        lines.append(
            f"  {m} ÷ baseline TTFT p50: {_f(t.get('ratio'), 3)} [{_f(t.get('ci_low'), 3)}, {_f(t.get('ci_high'), 3)}]"
            f" — {_ci_cell(t, 'lower')[2]}"
        )
    lines.append("Architecture health")
    failed = [s["name"] for s in r["stages"] if s["status"] not in ("ok", "skipped", "running")]
    lines.append(
        f"  stages: {len(r['stages'])} run, " + (f"FAILED: {', '.join(failed)}" if failed else "all ok")
    )
    if inf:
        first = next(iter(inf.values()))
        lines.append(f"  replica peak RSS {_f(first.get('peak_memory_mb'), 0, ' MB')} (holds every model)")
        lines += [
            f"  {m}: weights + KV cache {_f(i.get('model_memory_mb'), 2, ' MB')}" for m, i in inf.items()
        ]
    rsc = sv.get("replica_scaling")
    if rsc:
        lines.append(
            f"  replicas {rsc['runs'][0]['replicas']} → {rsc['runs'][-1]['replicas']}: {_f(rsc['ratio'], 2, 'x')} tok/s"
        )
    return "## Key Metrics at a Glance\n\n```\n" + "\n".join(_fit(lines)) + "\n```\n"


def _recommendation(r: dict) -> str:
    """The closing verdict: approved with what was shown, or each failed gate, by how much, and what would
    have to change for it to pass."""
    dec = r["decision"]
    gates = dec["gates"]
    if dec["approved"]:
        shown = [
            f"- {g['name']} ({g['variant']}): {_f(g['value'], 3)} {g['op']} {g['threshold']:g} {g['unit']}".rstrip()
            for g in gates
            if g["name"].startswith("training_speedup")
        ]
        return (
            "## Recommendation\n\n**Proceed to Phase 3 — Production Deployment.** "
            f"All {len(gates)} gates passed; the speedup is measured, beyond the trial's noise and above its floor:\n\n"
            + "\n".join(shown)
            + "\n"
        )
    out = [
        "## Recommendation\n",
        "**Do not proceed to Phase 3 yet.**" + (f" The run {r['failure']}." if r.get("failure") else ""),
    ]
    for v, c in r.get("comparison", {}).items():
        sp = c["speedup"]
        if c.get("noop") or (sp.get("ratio") and sp["ci_low"] <= 1 <= sp["ci_high"]):
            out.append(f"\nNo measurable speedup on this machine ({v}): {speed_explanation(r, v)}")
    out.append("\nFailed gates, by how much they missed, and what would have to change:\n")
    for g in gates:
        if g["passed"]:
            continue
        miss = (
            "not measured"
            if g["value"] is None
            else f"{_f(g['value'], 3)} {g['unit']} vs {g['op']} {g['threshold']:g}"
            + (f", missed by {_f(-g['margin'], 3)}" if g["margin"] is not None and g["margin"] < 0 else "")
            + (f" ({g['veto']})" if g.get("veto") else "")
        )
        advice = GATE_ADVICE.get(g["name"], "").format(threshold=g["threshold"])
        out.append(
            f"- **{g['name']}** ({g['variant']}): {miss}." + (f" To pass: {advice}." if advice else "")
        )
    return "\n".join(out) + "\n"


def _comparative_table(r: dict) -> str:
    """Every between-variant ratio with its interval; figures measured once (no samples) are shown, never
    called. Training rows compare variants; serving rows compare each served model with the baseline model."""
    tr, inf, comp = r["training"], r["inference"], r.get("comparison", {})
    if "baseline" not in tr:
        return ""
    rows = []
    for v, c in comp.items():
        sp = c.get("speedup") or {}
        cc = c.get("concurrent") or {}
        rows.append(
            [f"Training speedup, paired trial ({v})", *_ci_cell(sp, "higher"), "baseline ÷ variant time"]
        )
        st = cc.get("step_time_ratio")
        rows.append(
            [
                f"Concurrent-run step-time speedup ({v})",
                *_ci_cell(st, "higher"),
                "descriptive; block bootstrap",
            ]
        )
        rows.append(
            [
                f"Concurrent-run throughput ({v})",
                _f(cc.get("tokens_per_s_ratio"), 3),
                "as above",
                "",
                "median-step basis = step-time ratio",
            ]
        )
        rows.append(
            [
                f"Work time ({v})",
                _f(cc.get("work_time_ratio"), 3),
                "",
                "one measurement: not called",
                "baseline ÷ variant, probe + loop",
            ]
        )
        rows.append(
            [
                f"Final val loss ({v})",
                _f(ratio(tr[v]["val_loss"], tr["baseline"]["val_loss"]), 4),
                "",
                "gated by tolerance",
                f"|Δ| {_f(c.get('val_loss_delta_pct'), 3, '%')}",
            ]
        )
    vs = (r.get("serving") or {}).get("vs_baseline") or {}
    for m, ratios in vs.items():
        for key, x in ratios.items():
            better = "higher" if key == "rate" else "lower"
            rows.append(
                [f"{x['metric']} ({m} ÷ baseline, {x['level']})", *_ci_cell(x, better), "within rounds"]
            )
    for m, i in inf.items():
        if m == "baseline" or "baseline" not in inf:
            continue
        rows.append(
            [
                f"Model memory ({m} ÷ baseline)",
                _f(ratio(i.get("model_memory_mb"), inf["baseline"].get("model_memory_mb")), 3),
                "",
                "exact byte count",
                "weights + KV cache",
            ]
        )
    return (
        "## Comparative Summary Table\n\nEach ratio with its interval; a difference is called only when the "
        "interval excludes 1. Serving ratios are medians of the headline level's requests; their interval is "
        "Student's t over the interleaved rounds, each round one paired ratio.\n\n"
        + tabulate(rows, headers=["ratio", "value", "95% CI", "call", "basis"], tablefmt="github")
        + "\n"
    )


def _run_timeline(r: dict, width: int = 60) -> str:
    stages = [s for s in r["stages"] if s.get("start")]
    if not stages:
        return ""
    t0 = r["started_at"]
    t1 = max((s["end"] or s["start"]) for s in stages)
    span = max(t1 - t0, 1e-6)
    lines = [f"{'stage':<16} {'start':>7} {'end':>7}  0 s{' ' * (width - 8)}{span:.0f} s"]
    for s in stages:
        a = round((s["start"] - t0) / span * width)
        b = max(a + 1, round(((s["end"] or s["start"]) - t0) / span * width))
        label = s["name"] + (f" {s['variant']}" if s.get("variant") else "")
        lines.append(
            f"{label:<16} {s['start'] - t0:6.1f}s {(s['end'] or s['start']) - t0:6.1f}s  "
            f"{' ' * a}{'▓' * (b - a)}"
        )
    tr = [s for s in stages if s["name"] in ("2a", "2b") or s["name"].startswith("train:")]
    note = ""
    if len(tr) >= 2:
        ov = min(x["end"] for x in tr) - max(x["start"] for x in tr)
        note = (
            f"\nTraining actors overlapped for {max(ov, 0):.1f} s (they ran concurrently)."
            if ov > 0
            else "\nTraining actors did NOT overlap."
        )
    return "## Timeline of the Run\n\n```\n" + "\n".join(lines) + note + "\n```\n"


def _checklist(r: dict) -> str:
    tr, inf, comp = r["training"], r["inference"], r.get("comparison", {})
    checks = []

    def add(ok: bool, text: str) -> None:
        checks.append(f"[{'x' if ok else ' '}] {text}")

    for v, t in tr.items():
        add(t["status"] == "ok", f"{v}: trained {t['steps']} steps with finite loss")
        add(
            t["val_loss"] is not None
            and t["initial_val_loss"] is not None
            and t["val_loss"] < t["initial_val_loss"],
            f"{v}: val loss fell ({_f(t['initial_val_loss'], 4)} → {_f(t['val_loss'], 4)})",
        )
    for v, c in comp.items():
        add(c["same_data_order"], f"{v} and baseline saw the same batches in the same order (schedule hash)")
        add(tr[v]["tokens"] == tr["baseline"]["tokens"], f"{v} and baseline trained on the same token budget")
    for v, i in inf.items():
        add(
            bool(i.get("model_bytes")),
            f"{v}: loaded in the Serve replica, sha256 verified "
            f"({_f((i.get('model_bytes') or {}).get('weights'), 0)} weight bytes)",
        )
        add(
            i["succeeded"] == i["requests"],
            f"{v}: {i['succeeded']}/{i['requests']} streamed requests succeeded over HTTP",
        )
    for v in tr:
        if v not in inf:
            add(False, f"{v}: inference validation ran")
    add(r["decision"]["approved"], "every approval gate passed")
    return (
        "## Validation Checklist\n\nChecks this run performed, with their outcome:\n\n```\n"
        + "\n".join(checks)
        + "\n```\n"
    )
