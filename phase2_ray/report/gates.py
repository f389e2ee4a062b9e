"""Approval gates: each target becomes a comparison with its value, interval, threshold and margin shown, judged
by the rule in report/verdict.py (pass / fail / inconclusive on the whole interval).

Bound gates hold one model's (or the replica's) figure to a target; relative gates compare a candidate with the
baseline through a ratio's interval and also say better / equivalent / worse / inconclusive against their margin.
A metric that was not measured fails its gate. Every gate names the model it judges: candidates (every variant
and served copy but the baseline) get their own outcome, the run its own gates (failed stages, the replica's
memory budget), and the baseline's serving targets are shown without deciding (the baseline is not on trial)."""

from __future__ import annotations

from phase2_ray.report.capacity import paired_capacity_ratio
from phase2_ray.report.gate import Gate
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


def evaluate_gates(report: dict, targets: dict) -> list[Gate]:
    """All gates of a run, from report.json's `training`, `inference`, `serving` and `comparison` sections."""
    training, inference = report["training"], report["inference"]
    gates = [
        Gate("training_completed", v, 0.0, "==", 1.0, detail=t.get("error") or "")
        for v, t in training.items()
        if t.get("status") != "ok"
    ]
    # a variant whose training actor raised (a converter that failed) has no result, only its failed stage
    gates += [
        Gate(
            "training_completed",
            v,
            0.0,
            "==",
            1.0,
            detail=(s.get("detail") or "").splitlines()[-1:][0] if s.get("detail") else "",
        )
        for v, s in _failed_training(report).items()
    ]
    endpoints = (report.get("serving") or {}).get("endpoints") or {}
    elsewhere = {m for m, e in endpoints.items() if e.get("kind") == "external"}
    # an endpoint that stopped answering: its candidate failed, whatever it measured before
    gates += [
        Gate("endpoint_available", m, 0.0, "==", 1.0, detail=e["failure"])
        for m, e in endpoints.items()
        if e.get("failure")
    ]
    # Every trained variant must have been served (a missing one fails as "not measured"), plus any extra model.
    for variant in list(training) + [m for m in inference if m not in training]:
        gates += _serving_gates(variant, inference.get(variant, {}), targets, own=variant not in elsewhere)
    gates += _replica_memory_gate({m: i for m, i in inference.items() if m not in elsewhere}, targets)
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
    for m, cp in (report.get("serving", {}).get("copies") or {}).items():
        if comp and m == comp["model"]:
            continue  # the int8 copy has its own gate above
        gates.append(
            Gate(
                "served_val_loss_delta_pct",
                m,
                cp["val_loss_delta_pct"],
                "<=",
                targets.get("served_val_loss_delta_pct_max", 2.0),
                "%",
                detail=f"val loss of {m} ({', '.join(c['name'] for c in cp['converters'])}) vs its source "
                f"{cp['source']} on the same windows (+ = worse)",
            )
        )
    for variant, c in report.get("comparison", {}).items():
        gates += _training_gates(variant, c, targets)
    gates += _capacity_gates((report.get("serving") or {}).get("capacity"), targets)
    return gates


def _capacity_gates(cap: dict | None, targets: dict) -> list[Gate]:
    """The optional capacity gates, on the first replica count's searches, for each searched candidate (the
    searched model, each external endpoint): an absolute floor, judged on the capacity's interval (a capacity must
    be shown, not hoped), and the candidate against the baseline (paired over replicated searches)."""
    floor, rel = targets.get("capacity_rps_min"), targets.get("capacity_vs_baseline_min")
    if not (floor or rel):
        return []
    runs = (cap or {}).get("runs") or []
    first = min((r["replicas"] for r in runs), default=None)
    at_first = {r["model"]: r for r in runs if r["replicas"] == first}
    base = at_first.get("baseline")
    mains = [r for m, r in at_first.items() if m != "baseline"] or [base]
    gates = []
    for main in mains:
        model = main["model"] if main else "n/a"
        if floor:
            gates.append(
                Gate(
                    "capacity_rps",
                    model,
                    main and main.get("capacity_rps"),
                    ">=",
                    floor,
                    "req/s",
                    low=main and main.get("ci_low"),
                    high=main and main.get("ci_high"),
                    detail=f"capacity under the SLO with {first} replica(s), CI "
                    f"[{_num(main and main.get('ci_low'))}, {_num(main and main.get('ci_high'))}]",
                )
            )
        if rel:
            both = main and base and main is not base and main["capacity_rps"] and base["capacity_rps"]
            paired = paired_capacity_ratio(main, base) if both else None
            gates.append(
                Gate(
                    "capacity_vs_baseline",
                    model,
                    paired[0] if paired else (main["capacity_rps"] / base["capacity_rps"] if both else None),
                    ">=",
                    rel,
                    "x",
                    low=paired[1] if paired else None,
                    high=paired[2] if paired else None,
                    detail=f"capacity {model} / baseline with {first} replica(s): "
                    f"{_num(main and main.get('capacity_rps'))} / {_num(base and base.get('capacity_rps'))} req/s"
                    + (
                        f", paired over {len(main.get('searches') or [])} replicated searches"
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


def _failed_training(report: dict) -> dict[str, dict]:
    """{variant: its failed training stage} for variants that have no training result at all."""
    return {
        s["variant"]: s
        for s in report.get("stages", [])
        if s.get("variant")
        and s["status"] == "failed"
        and s["variant"] not in report["training"]
        and (s["name"] in ("2a", "2b") or s["name"].startswith("train"))
    }


def candidate_roles(report: dict, targets: dict) -> dict[str, str]:
    """required / informative for every candidate (each model but the baseline): trained variants and configured
    endpoints are required and served copies (int8) informative, unless targets.candidates says otherwise."""
    endpoints = (report.get("serving") or {}).get("endpoints") or {}
    names = [v for v in [*report["training"], *_failed_training(report)] if v != "baseline"]
    names += [m for m in [*report["inference"], *endpoints] if m != "baseline" and m not in names]
    chosen = targets.get("candidates") or {}
    # configured endpoints are what the user asked to judge: required, as trained variants are
    judged = {*report["training"], *_failed_training(report), *report.get("config", {}).get("endpoints", {})}
    return {m: chosen.get(m, "required" if m in judged else "informative") for m in names}


def decide(report: dict, targets: dict) -> dict:
    """report.json's `decision`: every gate with its verdict, each candidate's outcome, and the run's. A run that
    failed or was cut short is never approved, whatever the gates it reached say."""
    gates = evaluate_gates(report, targets)
    failure = report["failure"]
    if failure:
        failed = sum(1 for s in report["stages"] if s["status"] in ("failed", "interrupted"))
        gates.insert(0, Gate("failed_stages", RUN, float(failed), "==", 0.0, detail=failure))
    roles = candidate_roles(report, targets)
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
    if failure:
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


def _serving_gates(variant: str, inf: dict, targets: dict, own: bool = True) -> list[Gate]:
    """One served model's bound gates (its own figures; the replica's memory is gated once, below). A model served
    elsewhere (`own` False) has no memory figure here: its server's memory is its own business."""
    gates = [
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
            detail="the model's own bytes: weights + preallocated KV cache + activation peak",
        ),
    ]
    return gates if own else gates[:-1]


def _replica_memory_gate(inference: dict, targets: dict) -> list[Gate]:
    """The Serve replica's peak RSS against the replica budget, once: one replica holds every model, so the
    figure is the replica's, not any one model's (each model's own bytes have their own gate)."""
    if not inference:
        return []
    peaks = [i.get("peak_memory_mb") for i in inference.values()]
    measured = [p for p in peaks if finite(p)]
    return [
        Gate(
            "replica_peak_memory_mb",
            REPLICA,
            max(measured) if measured else None,
            "<=",
            targets["peak_memory_mb_max"],
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


def _vs_baseline_gates(report: dict, targets: dict) -> list[Gate]:
    """Non-inferiority gates between each served candidate and the baseline model: the candidate may be worse
    by at most the tolerance, shown by the ratio's whole interval (over interleaved rounds)."""
    tol = targets.get("serving_regression_pct_max")
    if tol is None:
        return []
    m_ = tol / 100
    gates = []
    for m, ratios in (report.get("serving") or {}).get("vs_baseline", {}).items():
        for key, (name, higher) in SERVING_RATIOS.items():
            r = ratios.get(key)
            if r is None:
                continue
            few = r.get("ratio") is not None and (r.get("rounds") or 0) < MIN_ROUNDS
            gates.append(
                Gate(
                    name,
                    m,
                    r.get("ratio"),
                    ">=" if higher else "<=",
                    1 / (1 + m_) if higher else 1 + m_,
                    "x",
                    low=None if few else r.get("ci_low"),
                    high=None if few else r.get("ci_high"),
                    rule="non-inferiority",
                    relative_margin=m_,
                    higher_is_better=higher,
                    undecided=f"{r.get('rounds') or 0} round(s): fewer than {MIN_ROUNDS} give no interval"
                    if few
                    else "",
                    detail=f"{r.get('metric')} {m} / baseline at {r.get('level')}, {r.get('rounds') or 0} "
                    f"interleaved rounds in {r.get('looks') or 1} look(s)"
                    + (f", resolves ±{(r['mde_ratio'] - 1) * 100:.1f}%" if r.get("mde_ratio") else ""),
                )
            )
    return gates


def undecided_serving(vs_baseline: dict, margin_pct: float) -> list[str]:
    """`gate/candidate` of every serving ratio gate whose interval still straddles its threshold: what more
    rounds of the headline level could decide (loadtest.run extends it while this is not empty)."""
    report = {"serving": {"vs_baseline": vs_baseline}}
    return [
        f"{g.name}/{g.variant}"
        for g in _vs_baseline_gates(report, {"serving_regression_pct_max": margin_pct})
        if g.verdict == INCONCLUSIVE
    ]


def _training_gates(variant: str, c: dict, targets: dict) -> list[Gate]:
    """One variant's speedup (superiority over the target, vetoed when it runs the baseline's own stack) and
    convergence gates."""
    sp = c.get("speedup") or {}
    veto = c.get("noop_reason") or "" if c.get("noop") else ""
    floor = targets["speedup_min"]
    seq = sp.get("sequential") or {}
    looks = f", {seq['looks']} look(s)" if seq.get("looks") else ""
    gates = [
        Gate(
            "training_speedup",
            variant,
            sp.get("ratio"),
            ">=",
            floor,
            "x",
            low=sp.get("ci_low"),
            high=sp.get("ci_high"),
            rule="superiority",
            relative_margin=floor - 1 if floor > 1 else None,
            detail=f"paired speed trial, baseline / {variant} step time ({sp.get('replicates', 0)} "
            f"replicates{looks})",
            veto=veto,
        ),
        _convergence_gate(variant, c, targets),
    ]
    if c.get("changes_numerics_note"):
        gates[-1].detail = f"{c['changes_numerics_note']}: deciding; " + gates[-1].detail
    if c.get("changes_numerics") is False:
        # Its converters declare bit-identical training: the loss change is shown, and not what decides.
        gates[-1].deciding = False
        gates[-1].detail = (
            "informative: the stack's converters declare changes_numerics = False; " + gates[-1].detail
        )
    cap = targets.get("training_memory_ratio_max")
    mem = c.get("training_memory") or {}
    if cap is not None:
        gates.append(
            Gate(
                "training_memory_ratio",
                variant,
                mem.get("ratio"),
                "<=",
                cap,
                "x",
                detail=f"peak training tensor bytes, {variant} / baseline ({mem.get('method') or 'not measured'})",
            )
        )
    return gates


def _convergence_gate(variant: str, c: dict, targets: dict) -> Gate:
    """Convergence. With one seed: the signed val-loss change (+ = the variant's loss is higher) and its
    interval over the paired val windows, non-inferiority against the tolerance (a lower loss never fails).
    With seeds: |Δ| of the seed means against the seed-derived tolerance, as measured."""
    tol = c.get("val_loss_tolerance_pct", targets["val_loss_delta_pct_max"])
    ci = c.get("val_loss_change_ci")
    if ci and c.get("val_loss_change_pct") is not None:
        return Gate(
            "val_loss_delta_pct",
            variant,
            c["val_loss_change_pct"],
            "<=",
            tol,
            "%",
            low=ci[0],
            high=ci[1],
            rule="non-inferiority",
            relative_margin=tol / 100,
            higher_is_better=False,
            percent=True,
            detail=f"{c.get('val_loss_change_basis', '')}; tolerance: {c.get('val_loss_tolerance_basis', '')}",
        )
    return Gate(
        "val_loss_delta_pct",
        variant,
        c.get("val_loss_delta_pct"),
        "<=",
        tol,
        "%",
        detail=c.get("val_loss_tolerance_basis", ""),
    )


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
