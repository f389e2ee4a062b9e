"""MetricsOrchestrator: the driver aggregates metrics from the object store. Every training actor's, speed
trial's, load client's and Serve replica's raw results, as the driver fetched them, become report.json (the
contract every renderer reads), with the approval decision."""

from __future__ import annotations

from dataclasses import dataclass

from phase2_ray.config import Config
from phase2_ray.config.redact import redacted_config
from phase2_ray.core.specs import tokens_per_step
from phase2_ray.report.gates import decide
from phase2_ray.report.schema.report import SCHEMA_VERSION
from phase2_ray.report.serving import summarize_inference
from phase2_ray.report.training import compare_variant, mfu_peak, summarize_run


@dataclass(kw_only=True)
class MetricsOrchestrator:
    """One run's raw stage results; `build()` returns report.json's content.

    `training` and `validation` are the raw stage results gathered by the driver; `extra_runs` are further
    seeds and isolated re-runs (no checkpoints); `placement` the policy and nodes; `trials` the speed trial's
    replicates per variant (the basis of the speedup)."""

    cfg: Config
    run_id: str
    started_at: float
    environment: dict
    data_info: dict
    stages: list[dict]
    training: dict[str, dict]
    validation: dict[str, dict]
    failure: str | None
    trials: dict[str, list[dict]] | None = None
    extra_runs: list[dict] | tuple = ()
    placement: dict | None = None
    init_from: dict | None = None
    """model.init_from's path, kind, shape and sha256 of each file read; None: a seeded init."""

    def build(self) -> dict:
        training = self.training_summary()
        inference, serving = summarize_inference(self.validation, self.cfg.targets)
        report = {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": None,
            "wall_s": None,
            "environment": self.environment,
            "config": redacted_config(self.cfg.model_dump(mode="json")),
            "data": self.data_info,
            "init_from": self.init_from,
            "stages": self.stages,
            "training": training,
            "inference": inference,
            "serving": serving,
            "comparison": self.comparison(training),
            "placement": self.placement_summary(training, serving),
            "failure": self.failure,
        }
        report["decision"] = decide(report, self.cfg.targets)
        return report

    def training_summary(self) -> dict[str, dict]:
        """report.json's `training`: one summary per variant, every MFU over the same peak."""
        tc, peak = self.cfg.training, mfu_peak(self.training)
        return {
            v: summarize_run(
                v,
                r,
                self.extra_runs,
                skip=tc.measurement.skip_steps,
                tokens_per_step=tokens_per_step(tc.batch_size, self.cfg.model.block_size),
                peak=peak,
            )
            for v, r in self.training.items()
        }

    def comparison(self, training: dict[str, dict]) -> dict[str, dict]:
        """report.json's `comparison`: every variant against the baseline (none when the baseline did not train)."""
        if "baseline" not in training:
            return {}
        return {
            v: compare_variant(
                v,
                training,
                self.training,
                self.extra_runs,
                (self.trials or {}).get(v),
                skip=self.cfg.training.measurement.skip_steps,
                seed=self.cfg.training.seed,
                confidence=self.cfg.speed_trial.confidence,
                val_loss_tol_pct=self.cfg.targets.val_loss_delta_pct_max,
                max_replicates=self.cfg.speed_trial.max_replicates,
                speedup_min=self.cfg.targets.speedup_min,
            )
            for v in training
            if v != "baseline"
        }

    def placement_summary(self, training: dict, serving: dict) -> dict:
        """Where every actor ran: the policy, the cluster's nodes, and the node id of each training run, Serve
        replica (main deployment and each replica-sweep step) and load client, each recorded by the actor itself."""
        info = self.placement or {}
        tr_nodes = {v: t["placement"]["node_id"] for v, t in training.items()}
        sweep = (self.validation.get("scaling") or {}).get("runs", [])
        return {
            **info,
            "nodes": info.get("nodes", []),
            "training": tr_nodes,
            "training_distinct_nodes": len(set(tr_nodes.values())),
            "replicas": [r["node_id"] for r in serving.get("replicas", [])],
            "sweep_replicas": {str(s["replicas"]): [x["node_id"] for x in s["stats"]] for s in sweep},
            "load_clients": [c["node_id"] for c in self.validation.get("clients", [])],
        }
