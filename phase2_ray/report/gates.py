"""Approval gates: each target becomes a comparison with its value, threshold and margin shown.

Value gates bound one variant's metric; change gates compare a variant against the baseline (as TFX's
Evaluator blessing and MLflow's MetricThreshold do). A metric that was not measured fails its gate."""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass

MIN_ROUNDS = 3
"""Fewest interleaved rounds a serving change gate is judged on: t with 1 degree of freedom passes anything."""

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}


@dataclass
class Gate:
    name: str
    variant: str
    value: float | None
    op: str
    threshold: float
    unit: str = ""
    passed: bool = False
    margin: float | None = None
    """How far the value is on the passing side of the threshold (negative: by how much it missed)."""
    detail: str = ""
    veto: str = ""
    """Why this gate fails whatever its value (e.g. a variant that runs the baseline's own stack is no
    speedup, even where noise put its measured ratio above the threshold)."""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"gate op {self.op!r} is not one of {sorted(OPS)}")
        measured = self.value is not None and math.isfinite(self.value)
        self.passed = bool(measured and OPS[self.op](self.value, self.threshold)) and not self.veto
        if self.veto:
            self.detail = f"{self.veto}; {self.detail}" if self.detail else self.veto
        if measured:
            self.margin = (
                self.threshold - self.value if self.op in ("<", "<=") else self.value - self.threshold
            )
        elif not self.detail:
            self.detail = "not measured"

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_gates(report: dict, targets: dict) -> list[Gate]:
    """All gates of a run, from report.json's `training`, `inference`, `serving` and `comparison` sections."""
    training, inference = report["training"], report["inference"]
    gates = [
        Gate("training_completed", v, 0.0, "==", 1.0, detail=t.get("error") or "")
        for v, t in training.items()
        if t.get("status") != "ok"
    ]
    # Every trained variant must have been served (a missing one fails as "not measured"), plus any extra model.
    for variant in list(training) + [m for m in inference if m not in training]:
        gates += _serving_gates(variant, inference.get(variant, {}), targets)
    gates += _vs_baseline_gates(report, targets)
    comp = report.get("serving", {}).get("compression")
    if comp:
        gates.append(
            Gate(
                "int8_val_loss_delta_pct",
                comp["model"],
                comp["val_loss_delta_pct"],
                "<=",
                targets["int8_val_loss_delta_pct_max"],
                "%",
                detail=f"val loss of {comp['model']} vs {comp['source']} on the same windows (+ = worse)",
            )
        )
    for variant, c in report.get("comparison", {}).items():
        gates += _training_gates(variant, c, targets)
    gates += _capacity_gates((report.get("serving") or {}).get("capacity"), targets)
    return gates


def _capacity_gates(cap: dict | None, targets: dict) -> list[Gate]:
    """The optional capacity gates, on the first replica count's searches: an absolute floor, judged on the
    capacity's CI low end (a capacity must be shown, not hoped), and the searched model against the baseline."""
    floor, rel = targets.get("capacity_rps_min"), targets.get("capacity_vs_baseline_min")
    if not (floor or rel):
        return []
    runs = (cap or {}).get("runs") or []
    first = min((r["replicas"] for r in runs), default=None)
    at_first = {r["model"]: r for r in runs if r["replicas"] == first}
    main = next((r for m, r in at_first.items() if m != "baseline"), at_first.get("baseline"))
    model = main["model"] if main else "n/a"
    gates = []
    if floor:
        gates.append(
            Gate(
                "capacity_rps_ci_low",
                model,
                main and main.get("ci_low"),
                ">=",
                floor,
                "req/s",
                detail=f"capacity under the SLO with {first} replica(s) = {_num(main and main.get('capacity_rps'))}"
                f" req/s, CI [{_num(main and main.get('ci_low'))}, {_num(main and main.get('ci_high'))}]; "
                "value = the CI's low end",
            )
        )
    if rel:
        base = at_first.get("baseline")
        r = (
            main["capacity_rps"] / base["capacity_rps"]
            if main and base and main is not base and main["capacity_rps"] and base["capacity_rps"]
            else None
        )
        gates.append(
            Gate(
                "capacity_vs_baseline",
                model,
                r,
                ">=",
                rel,
                "x",
                detail=f"capacity {model} / baseline with {first} replica(s): "
                f"{_num(main and main.get('capacity_rps'))} / {_num(base and base.get('capacity_rps'))} req/s",
            )
        )
    return gates


def decide(report: dict, targets: dict) -> dict:
    """report.json's `decision`: every gate, and whether all passed. A run that failed or was cut short is
    never approved, whatever the gates it reached say."""
    gates = evaluate_gates(report, targets)
    failure = report["failure"]
    if failure:
        failed = sum(1 for s in report["stages"] if s["status"] in ("failed", "interrupted"))
        gates.insert(0, Gate("failed_stages", "all", float(failed), "==", 0.0, detail=failure))
    return {
        "approved": bool(gates) and all(g.passed for g in gates) and not failure,
        "gates": [g.to_dict() for g in gates],
    }


def find_gate(gates: list[dict], name: str, variant: str) -> dict | None:
    """Gate `name` of `variant` among report.json's decision.gates, or None when the run has no such gate."""
    return next((g for g in gates if g["name"] == name and g["variant"] == variant), None)


def _serving_gates(variant: str, inf: dict, targets: dict) -> list[Gate]:
    """One served model's value gates."""
    return [
        Gate(
            "ttft_p50_ms",
            variant,
            (inf.get("ttft_ms") or {}).get("p50"),
            "<=",
            targets["ttft_p50_ms_max"],
            "ms",
        ),
        Gate(
            "output_tokens_per_s",
            variant,
            inf.get("output_tokens_per_s"),
            ">=",
            targets["output_tokens_per_s_min"],
            "tok/s",
        ),
        Gate("peak_memory_mb", variant, inf.get("peak_memory_mb"), "<=", targets["peak_memory_mb_max"], "MB"),
        Gate(
            "success_rate",
            variant,
            inf.get("success_rate"),
            ">=",
            targets["success_rate_min"],
            detail="every request sent to the model: measured, warm-up and replica sweep",
        ),
        Gate(
            "model_memory_mb",
            variant,
            inf.get("model_memory_mb"),
            "<=",
            targets.get("model_memory_mb_max", float("inf")),
            "MB",
            detail="the model's own weights + preallocated KV cache",
        ),
    ]


def _vs_baseline_gates(report: dict, targets: dict) -> list[Gate]:
    """Change gates between served models: a model may not be slower than the baseline model beyond the
    tolerance. Judged on the ratio's interval: the gate's value is its most favourable end, so it fails only
    when a regression beyond the tolerance is shown, not when noise alone points that way. Trained variants
    only: an int8 copy has its own quality gate, and its speed is shown with its interval."""
    tol = targets.get("serving_regression_pct_max")
    if tol is None:
        return []
    gates = []
    for m, ratios in (report.get("serving") or {}).get("vs_baseline", {}).items():
        if m not in report["training"]:
            continue
        for key in ("ttft_ms", "tpot_ms"):
            r = ratios.get(key) or {}
            if r.get("ratio") is not None and (r.get("rounds") or 0) < MIN_ROUNDS:
                continue  # too few rounds to judge either way (the report shows the ratio, not called)
            gates.append(
                Gate(
                    f"{key.split('_')[0]}_p50_vs_baseline",
                    m,
                    r.get("ci_low"),
                    "<=",
                    1 + tol / 100,
                    "x",
                    detail=f"{r.get('metric')} {m} / baseline at {r.get('level')} = {_num(r.get('ratio'))}, "
                    f"CI [{_num(r.get('ci_low'))}, {_num(r.get('ci_high'))}]; value = the CI's low end",
                )
            )
    return gates


def _training_gates(variant: str, c: dict, targets: dict) -> list[Gate]:
    """One variant's speedup (vetoed when it runs the baseline's own stack) and convergence gates."""
    sp = c.get("speedup") or {}
    veto = c.get("noop_reason") or "" if c.get("noop") else ""
    conf = f"{sp.get('confidence', 0.95) * 100:g}%"
    gates = [
        Gate(
            "training_speedup",
            variant,
            sp.get("ratio"),
            ">=",
            targets["speedup_min"],
            "x",
            detail=f"paired speed trial, baseline / {variant} step time ({sp.get('replicates', 0)} "
            f"replicates); {conf} CI [{_num(sp.get('ci_low'))}, {_num(sp.get('ci_high'))}]",
            veto=veto,
        )
    ]
    if targets.get("speedup_significant"):
        gates.append(
            Gate(
                "training_speedup_ci_low",
                variant,
                sp.get("ci_low"),
                ">",
                1.0,
                "x",
                detail=f"lower end of the speedup's {conf} CI (t over replicates): faster beyond the "
                "trial's noise",
                veto=veto,
            )
        )
    gates.append(
        Gate(
            "val_loss_delta_pct",
            variant,
            c.get("val_loss_delta_pct"),
            "<=",
            c.get("val_loss_tolerance_pct", targets["val_loss_delta_pct_max"]),
            "%",
            detail=c.get("val_loss_tolerance_basis", ""),
        )
    )
    return gates


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
