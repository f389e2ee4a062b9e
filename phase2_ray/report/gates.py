"""Approval gates: each target becomes a comparison with its value, interval, threshold and margin shown, judged
by the rule in report/verdict.py (pass / fail / inconclusive on the whole interval).

Bound gates hold one model's (or the replica's) figure to a target; relative gates compare a candidate with the
baseline through a ratio's interval and also say better / equivalent / worse / inconclusive against their margin.
A metric that was not measured fails its gate. Every gate names the model it judges: candidates (every variant
and served copy but the baseline) get their own outcome, the run its own gates (failed stages, the replica's
memory budget), and the baseline's serving targets are shown without deciding (the baseline is not on trial)."""

from __future__ import annotations

from phase2_ray.config.schema import TargetsConfig
from phase2_ray.report.capacity import paired_capacity_ratio
from phase2_ray.report.gate import Gate
from phase2_ray.report.schema.common import Percentiles
from phase2_ray.report.schema.inference import ModelInference
from phase2_ray.report.schema.report import Evidence, Stage
from phase2_ray.report.schema.serving import Capacity, RoundRatio, Serving
from phase2_ray.report.schema.training import Comparison
from phase2_ray.report.verdict import (
    FAIL,
    INCONCLUSIVE,
    combine,
    finite,
    run_outcome,
)

MIN_ROUNDS = 3
"""Fewest interleaved rounds a serving ratio gets an interval from: t with 1 degree of freedom says nothing."""

RUN = "all"
"""The variant of gates that judge the run itself (failed stages) rather than one model."""
REPLICA = "replica"
"""The variant of the gate on the Serve replica's own memory (all its models together)."""


def evaluate_gates(report: dict | Evidence, targets: dict | TargetsConfig) -> list[Gate]:
    """All gates of a run, from report.json's `training`, `inference`, `serving` and `comparison` sections, read
    typed (the report as far as it is built: report.schema.Evidence)."""
    ev = report if isinstance(report, Evidence) else Evidence.model_validate(report)
    t = targets if isinstance(targets, TargetsConfig) else TargetsConfig.model_validate(targets)
    training, inference, serving = ev.training, ev.inference, ev.serving
    gates = [
        Gate("training_completed", v, 0.0, "==", 1.0, detail=r.error or "")
        for v, r in training.items()
        if r.status != "ok"
    ]
    # a variant whose training actor raised (a converter that failed) has no result, only its failed stage
    gates += [
        Gate("training_completed", v, 0.0, "==", 1.0, detail=s.detail.splitlines()[-1] if s.detail else "")
        for v, s in _failed_training(ev).items()
    ]
    elsewhere = {m for m, e in serving.endpoints.items() if e.kind == "external"}
    # an endpoint that stopped answering: its candidate failed, whatever it measured before
    gates += [
        Gate("endpoint_available", m, 0.0, "==", 1.0, detail=e.failure)
        for m, e in serving.endpoints.items()
        if e.failure
    ]
    # Every trained variant must have been served (a missing one fails as "not measured"), plus any extra model.
    for variant in list(training) + [m for m in inference if m not in training]:
        gates += _serving_gates(variant, inference.get(variant), t, own=variant not in elsewhere)
    gates += _replica_memory_gate({m: i for m, i in inference.items() if m not in elsewhere}, t)
    gates += _vs_baseline_gates(serving.vs_baseline, t.serving_regression_pct_max)
    comp = serving.compression
    if comp:
        gates.append(
            Gate(
                "int8_val_loss_delta_pct",
                comp.model,
                comp.val_loss_delta_pct,
                "<=",
                t.int8_val_loss_delta_pct_max,
                "%",
                detail=f"val loss of {comp.model} vs {comp.source} on the same windows (+ = worse)",
            )
        )
    for m, cp in serving.copies.items():
        if comp and m == comp.model:
            continue  # the int8 copy has its own gate above
        gates.append(
            Gate(
                "served_val_loss_delta_pct",
                m,
                cp.val_loss_delta_pct,
                "<=",
                t.served_val_loss_delta_pct_max,
                "%",
                detail=f"val loss of {m} ({', '.join(c.name for c in cp.converters)}) vs its source "
                f"{cp.source} on the same windows (+ = worse)",
            )
        )
    for variant, c in ev.comparison.items():
        gates += _training_gates(variant, c, t)
    gates += _capacity_gates(serving.capacity, t)
    return gates


def _capacity_gates(cap: Capacity | None, t: TargetsConfig) -> list[Gate]:
    """The optional capacity gates, on the first replica count's searches, for each searched candidate (the
    searched model, each external endpoint): an absolute floor, judged on the capacity's interval (a capacity must
    be shown, not hoped), and the candidate against the baseline (paired over replicated searches)."""
    floor, rel = t.capacity_rps_min, t.capacity_vs_baseline_min
    if not (floor or rel):
        return []
    runs = cap.runs if cap else []
    first = min((r.replicas for r in runs), default=None)
    at_first = {r.model: r for r in runs if r.replicas == first}
    base = at_first.get("baseline")
    mains = [r for m, r in at_first.items() if m != "baseline"] or [base]
    gates = []
    for main in mains:
        model = main.model if main else "n/a"
        if floor:
            lo, hi = (main.ci_low, main.ci_high) if main else (None, None)
            gates.append(
                Gate(
                    "capacity_rps",
                    model,
                    main.capacity_rps if main else None,
                    ">=",
                    floor,
                    "req/s",
                    low=lo,
                    high=hi,
                    detail=f"capacity under the SLO with {first} replica(s), CI [{_num(lo)}, {_num(hi)}]",
                )
            )
        if rel:
            both = bool(main and base and main is not base and main.capacity_rps and base.capacity_rps)
            paired = paired_capacity_ratio(main, base) if both else None
            gates.append(
                Gate(
                    "capacity_vs_baseline",
                    model,
                    paired[0] if paired else (main.capacity_rps / base.capacity_rps if both else None),
                    ">=",
                    rel,
                    "x",
                    low=paired[1] if paired else None,
                    high=paired[2] if paired else None,
                    detail=f"capacity {model} / baseline with {first} replica(s): "
                    f"{_num(main.capacity_rps if main else None)} / {_num(base.capacity_rps if base else None)} "
                    "req/s"
                    + (
                        f", paired over {len(main.searches)} replicated searches"
                        if paired
                        else " (one search each: a point, judged as measured)"
                    ),
                )
            )
    return gates


DECISION_RULE = (
    "A gate passes when its whole interval lies on the passing side of its threshold, fails when the whole "
    "interval lies on the failing side, and is inconclusive otherwise. A candidate is approved when every gate "
    "of it passes, rejected when any fails, inconclusive otherwise. The run: rejected when a run gate fails or a "
    "required candidate is rejected; approved when every run gate passes and every required candidate is "
    "approved; inconclusive otherwise. Informative candidates are reported and do not decide."
)


def _failed_training(ev: Evidence) -> dict[str, Stage]:
    """{variant: its failed training stage} for variants that have no training result at all."""
    return {
        s.variant: s
        for s in ev.stages
        if s.variant
        and s.status == "failed"
        and s.variant not in ev.training
        and (s.name in ("2a", "2b") or s.name.startswith("train"))
    }


def candidate_roles(ev: Evidence, t: TargetsConfig) -> dict[str, str]:
    """required / informative for every candidate (each model but the baseline): trained variants and configured
    endpoints are required and served copies (int8) informative, unless targets.candidates says otherwise."""
    failed = _failed_training(ev)
    names = [v for v in [*ev.training, *failed] if v != "baseline"]
    names += [m for m in [*ev.inference, *ev.serving.endpoints] if m != "baseline" and m not in names]
    # configured endpoints are what the user asked to judge: required, as trained variants are
    judged = {*ev.training, *failed, *(ev.config.get("endpoints") or {})}  # the stored config: open JSON
    return {m: t.candidates.get(m, "required" if m in judged else "informative") for m in names}


def decide(report: dict | Evidence, targets: dict | TargetsConfig) -> dict:
    """report.json's `decision`: every gate with its verdict, each candidate's outcome, and the run's. A run that
    failed or was cut short is never approved, whatever the gates it reached say."""
    ev = report if isinstance(report, Evidence) else Evidence.model_validate(report)
    t = targets if isinstance(targets, TargetsConfig) else TargetsConfig.model_validate(targets)
    gates = evaluate_gates(ev, t)
    if ev.failure:
        failed = sum(1 for s in ev.stages if s.status in ("failed", "interrupted"))
        gates.insert(0, Gate("failed_stages", RUN, float(failed), "==", 0.0, detail=ev.failure))
    roles = candidate_roles(ev, t)
    for g in gates:  # the baseline is the reference, not on trial: its serving targets are shown only
        if g.variant == "baseline" and g.name != "training_completed":
            g.deciding = False
    candidates = {}
    for m, role in roles.items():
        mine = [g for g in gates if g.variant == m and g.deciding]
        candidates[m] = {
            "role": role,
            "outcome": combine([g.verdict for g in mine]),
            "gates": len(mine),
            "failed": [g.name for g in mine if g.verdict == FAIL],
            "inconclusive": [g.name for g in mine if g.verdict == INCONCLUSIVE],
        }
    own = [g.verdict for g in gates if g.deciding and g.variant not in roles]
    outcome = run_outcome(own, {m: (c["role"], c["outcome"]) for m, c in candidates.items()})
    if ev.failure:
        outcome = "rejected"
    return {
        "outcome": outcome,
        "approved": outcome == "approved",
        "rule": DECISION_RULE,
        "candidates": candidates,
        "gates": [g.to_dict() for g in gates],
    }


def find_gate(gates: list[dict], name: str, variant: str) -> dict | None:
    """Gate `name` of `variant` among report.json's decision.gates, or None when the run has no such gate."""
    return next((g for g in gates if g["name"] == name and g["variant"] == variant), None)


def _p50(x: Percentiles | None) -> float | None:
    return x.p50 if x else None


def _serving_gates(
    variant: str, inf: ModelInference | None, t: TargetsConfig, own: bool = True
) -> list[Gate]:
    """One served model's bound gates (its own figures; the replica's memory is gated once, below). A model served
    elsewhere (`own` False) has no memory figure here: its server's memory is its own business. A model that was
    not served at all (`inf` None) fails each as not measured."""
    gates = [
        Gate("ttft_p50_ms", variant, _p50(inf.ttft_ms) if inf else None, "<=", t.ttft_p50_ms_max, "ms"),
        Gate(
            "output_tokens_per_s",
            variant,
            inf.output_tokens_per_s if inf else None,
            ">=",
            t.output_tokens_per_s_min,
            "tok/s",
        ),
        Gate(
            "success_rate",
            variant,
            inf.success_rate if inf else None,
            ">=",
            t.success_rate_min,
            detail="every request sent to the model: measured, warm-up and replica sweep",
        ),
        Gate(
            "model_memory_mb",
            variant,
            inf.model_memory_mb if inf else None,
            "<=",
            t.model_memory_mb_max,
            "MB",
            detail="the model's own bytes: weights + preallocated KV cache + activation peak",
        ),
    ]
    return gates if own else gates[:-1]


def _replica_memory_gate(inference: dict[str, ModelInference], t: TargetsConfig) -> list[Gate]:
    """The Serve replica's peak RSS against the replica budget, once: one replica holds every model, so the
    figure is the replica's, not any one model's (each model's own bytes have their own gate)."""
    if not inference:
        return []
    measured = [i.peak_memory_mb for i in inference.values() if finite(i.peak_memory_mb)]
    return [
        Gate(
            "replica_peak_memory_mb",
            REPLICA,
            max(measured) if measured else None,
            "<=",
            t.peak_memory_mb_max,
            "MB",
            detail=f"peak RSS of the replica serving {', '.join(inference)} (targets.peak_memory_mb_max)",
        )
    ]


SERVING_RATIOS = {
    "ttft_ms": ("ttft_p50_vs_baseline", False),
    "tpot_ms": ("tpot_p50_vs_baseline", False),
    "e2e_ms": ("e2e_p50_vs_baseline", False),
    "rate": ("decode_rate_p50_vs_baseline", True),
    "ttft_p99_ms": ("ttft_p99_vs_baseline", False),
    "output_tps": ("output_tps_vs_baseline", True),
    "goodput": ("goodput_vs_baseline", True),
}
"""serving.vs_baseline's ratios judged as gates: (gate name, higher is better)."""


def _vs_baseline_gates(vs_baseline: dict[str, dict[str, RoundRatio]], tol_pct: float) -> list[Gate]:
    """Non-inferiority gates between each served candidate and the baseline model: the candidate may be worse
    by at most the tolerance, shown by the ratio's whole interval (over interleaved rounds)."""
    m_ = tol_pct / 100
    gates = []
    for m, ratios in vs_baseline.items():
        for key, (name, higher) in SERVING_RATIOS.items():
            r = ratios.get(key)
            if r is None:
                continue
            few = r.ratio is not None and r.rounds < MIN_ROUNDS
            gates.append(
                Gate(
                    name,
                    m,
                    r.ratio,
                    ">=" if higher else "<=",
                    1 / (1 + m_) if higher else 1 + m_,
                    "x",
                    low=None if few else r.ci_low,
                    high=None if few else r.ci_high,
                    rule="non-inferiority",
                    relative_margin=m_,
                    higher_is_better=higher,
                    undecided=f"{r.rounds} round(s): fewer than {MIN_ROUNDS} give no interval" if few else "",
                    detail=f"{r.metric} {m} / baseline at {r.level}, {r.rounds} interleaved rounds in "
                    f"{r.looks or 1} look(s)"
                    + (f", resolves ±{(r.mde_ratio - 1) * 100:.1f}%" if r.mde_ratio else ""),
                )
            )
    return gates


def undecided_serving(vs_baseline: dict, margin_pct: float) -> list[str]:
    """`gate/candidate` of every serving ratio gate whose interval still straddles its threshold: what more
    rounds of the headline level could decide (loadtest.run extends it while this is not empty)."""
    typed = Serving.model_validate({"vs_baseline": vs_baseline}).vs_baseline
    return [
        f"{g.name}/{g.variant}" for g in _vs_baseline_gates(typed, margin_pct) if g.verdict == INCONCLUSIVE
    ]


def _training_gates(variant: str, c: Comparison, t: TargetsConfig) -> list[Gate]:
    """One variant's speedup (superiority over the target, vetoed when it runs the baseline's own stack) and
    convergence gates."""
    sp, floor = c.speedup, t.speedup_min
    looks = f", {sp.sequential.looks} look(s)" if sp.sequential and sp.sequential.looks else ""
    gates = [
        Gate(
            "training_speedup",
            variant,
            sp.ratio,
            ">=",
            floor,
            "x",
            low=sp.ci_low,
            high=sp.ci_high,
            rule="superiority",
            relative_margin=floor - 1 if floor > 1 else None,
            detail=f"paired speed trial, baseline / {variant} step time ({sp.replicates} replicates{looks})",
            veto=(c.noop_reason or "") if c.noop else "",
        ),
        _convergence_gate(variant, c, t),
    ]
    if c.changes_numerics_note:
        gates[-1].detail = f"{c.changes_numerics_note}: deciding; " + gates[-1].detail
    if c.changes_numerics is False:
        # Its converters declare bit-identical training: the loss change is shown, and not what decides.
        gates[-1].deciding = False
        gates[-1].detail = (
            "informative: the stack's converters declare changes_numerics = False; " + gates[-1].detail
        )
    cap, mem = t.training_memory_ratio_max, c.training_memory
    if cap is not None:
        gates.append(
            Gate(
                "training_memory_ratio",
                variant,
                mem.ratio if mem else None,
                "<=",
                cap,
                "x",
                detail=f"peak training tensor bytes, {variant} / baseline "
                f"({(mem.method if mem else None) or 'not measured'})",
            )
        )
    return gates


def _convergence_gate(variant: str, c: Comparison, t: TargetsConfig) -> Gate:
    """Convergence. With one seed: the signed val-loss change (+ = the variant's loss is higher) and its
    interval over the paired val windows, non-inferiority against the tolerance (a lower loss never fails).
    With seeds: |Δ| of the seed means against the seed-derived tolerance, as measured."""
    tol = c.val_loss_tolerance_pct if c.val_loss_tolerance_pct is not None else t.val_loss_delta_pct_max
    ci = c.val_loss_change_ci
    if ci and c.val_loss_change_pct is not None:
        return Gate(
            "val_loss_delta_pct",
            variant,
            c.val_loss_change_pct,
            "<=",
            tol,
            "%",
            low=ci[0],
            high=ci[1],
            rule="non-inferiority",
            relative_margin=tol / 100,
            higher_is_better=False,
            percent=True,
            detail=f"{c.val_loss_change_basis or ''}; tolerance: {c.val_loss_tolerance_basis or ''}",
        )
    return Gate(
        "val_loss_delta_pct",
        variant,
        c.val_loss_delta_pct,
        "<=",
        tol,
        "%",
        detail=c.val_loss_tolerance_basis or "",
    )


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
