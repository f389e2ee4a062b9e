"""Stages 2a/2b on the driver: plans the training runs, starts them as actors (concurrent ones together, Ray
queueing what does not fit; isolated ones one at a time), and gathers their results and saved states."""

from __future__ import annotations

import time
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from phase2_ray import resume
from phase2_ray.config import Config
from phase2_ray.config.redact import redacted_config
from phase2_ray.dataprep import PreparedData
from phase2_ray.records import Stage, TrainJob, TrainResult
from phase2_ray.runlog import RunLog, error_text
from phase2_ray.stacks import auto_candidates, variant_stack
from phase2_ray.storage import get_checkpoint, join
from phase2_ray.training.actors import TrainerActor, TrainHandles, TrainSpec
from phase2_ray.training.coordination import CorePool, StartBarrier, TrainStateStore
from phase2_ray.training.placement import TrainingPlacement, node_cores, rotation_plan


def plan_training(cfg: Config) -> tuple[list[TrainJob], list[TrainJob]]:
    """(jobs started together, jobs run one at a time) for the configured isolation and repeats."""
    m = cfg.training.measurement
    seeds = [cfg.training.seed + r for r in range(m.repeats)]
    variants = list(cfg.trained())
    together, alone = [], []
    if m.isolation in ("concurrent", "both"):
        together = [TrainJob(v, s, "concurrent", s == seeds[0]) for s in seeds for v in variants]
    if m.isolation == "sequential":
        alone = [TrainJob(v, s, "isolated", s == seeds[0]) for s in seeds for v in variants]
    elif (
        m.isolation == "both"
    ):  # the isolated re-run exists to compare against; the concurrent run stays primary
        alone = [TrainJob(v, seeds[0], "isolated", False) for v in variants]
    return together, alone


class TrainingStage:
    """One use: `run()` returns ({variant: primary result}, [every other result, without checkpoint]) and
    leaves the stage rows in `stages` and where things ran in `placement_info`.

    `preload` (saved states of an interrupted run) seeds the state store, so each run resumes where it was;
    whatever happens, the store's latest states end up in `out_dir`/resume/ for a later --resume."""

    def __init__(
        self,
        cfg: Config,
        run_id: str,
        d: PreparedData,
        log: RunLog,
        out_dir: Path | None = None,
        preload: dict[str, dict] | None = None,
    ) -> None:
        self.cfg, self.run_id, self.d, self.log = cfg, run_id, d, log
        self.out_dir, self.preload = out_dir, preload or {}
        self.together, self.alone = plan_training(cfg)
        pc = cfg.training.placement
        # Before any actor exists: a placement the cluster cannot give is a config error (exit 2).
        self.placement = TrainingPlacement(
            pc.policy,
            list(cfg.trained()),
            cfg.training.measurement.repeats if self.together else 0,
            pc.cpus_per_actor,
            pc.gpus_per_actor,
            pc.timeout_s,
        )
        self.placement_info = self.placement.describe()
        # Every checkpoint's metadata carries the run's config, secrets redacted: once for all jobs.
        self.config_json = redacted_config(cfg.model_dump(mode="json"))
        self.stages: list[Stage] = []
        self.primary: dict[str, TrainResult] = {}
        self.others: list[TrainResult] = []
        self.live: list = []

    def run(self) -> tuple[dict[str, TrainResult], list[TrainResult]]:
        cfg, pc = self.cfg, self.cfg.training.placement
        cores = node_cores(pc.pin_cpus)
        pool = CorePool.remote(cores) if cores else None
        rotations = rotation_plan(cores, pc.cpus_per_actor, len(self.together), pc.rotate_cores_s)
        # When every concurrent run fits at once, their timed loops also start together (after any probe).
        fits = bool(cores) and len(self.together) * pc.cpus_per_actor <= len(cores)
        barrier = StartBarrier.remote(len(self.together)) if fits and len(self.together) > 1 else None
        store = self._state_store()
        init = ray.put(self.d.init.state) if self.d.init else None  # model.init_from's weights, put once
        self.data = (ray.put(self.d.train_tokens), ray.put(self.d.val_tokens), init)
        try:
            if self.together:
                handles = [
                    TrainHandles(pool, store, barrier, rotations[i] if rotations else None)
                    for i in range(len(self.together))
                ]
                self._run_together(handles, store)
                self.placement.release()  # the isolated runs below are scheduled freely, one at a time
            for job in self.alone:
                self.log.event("train.alone", f"training {job.variant} (seed {job.seed}) alone")
                actor, ref = self._submit(job, TrainHandles(pool, store))
                self._collect(job, actor, ref)
        finally:
            if store is not None and self.out_dir is not None:
                self._export_states(store)
            # On an interrupt some actors are still training: on a shared cluster nothing else would stop them.
            for helper in (*self.live, pool, barrier, store):
                if helper is not None:
                    ray.kill(helper)
            self.placement.release()
        self.stages.sort(key=lambda s: s.start)
        # Config order (baseline first) for everything downstream, whatever order the actors finished in.
        return {v: self.primary[v] for v in cfg.variants if v in self.primary}, self.others

    def _state_store(self):
        """Created (and so owned) by the driver, on the driver's node: saved training states outlive any training
        actor's process, and the loss of any other node."""
        if not self.cfg.training.fault_tolerance.checkpoint_every:
            return None
        node = ray.get_runtime_context().get_node_id()
        store = TrainStateStore.options(
            name=f"{self.run_id}:train-state",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        ).remote()
        if self.preload:
            ray.get([store.put.remote(k, s["step"], s["state"], s["info"]) for k, s in self.preload.items()])
            steps = ", ".join(f"{k} at step {s['step']}" for k, s in sorted(self.preload.items()))
            self.log.event(
                "train.resume", f"2a/2b: resuming {len(self.preload)} run(s) from saved states: {steps}"
            )
        return store

    def _spec(self, job: TrainJob) -> TrainSpec:
        cfg = self.cfg
        return TrainSpec(
            run_id=self.run_id,
            job=job,
            model=cfg.model,
            vocab_size=self.d.vocab_size,
            training=cfg.training,
            stack=cfg.variants[job.variant],
            optim=variant_stack(cfg.variants[job.variant]),
            auto_candidates=auto_candidates(cfg.variants[job.variant])
            if cfg.variants[job.variant].auto
            else None,
            tokenizer_json=self.d.tokenizer_json,
            config_json=self.config_json,
            progress=self.log.progress,
            storage_uri=join(cfg.storage.uri, self.run_id) if cfg.storage.uri else None,
            chat_template=self.d.init.chat_template if self.d.init else None,
        )

    def _submit(self, job: TrainJob, handles: TrainHandles):
        ft, pc = self.cfg.training.fault_tolerance, self.cfg.training.placement
        restarts = ft.max_restarts if handles.state_store is not None else 0
        suffix = "" if job.primary else f":seed{job.seed}:{job.phase}"
        actor = TrainerActor.options(
            name=f"{self.run_id}:train:{job.variant}{suffix}",
            # A dead process is restarted and its `train` call retried, which resumes from the saved state.
            max_restarts=restarts,
            max_task_retries=restarts,
            num_cpus=pc.cpus_per_actor,
            num_gpus=pc.gpus_per_actor,
            scheduling_strategy=self.placement.strategy(job.variant) if job.phase == "concurrent" else None,
        ).remote()
        self.live.append(actor)
        if job.phase != "concurrent":
            handles.barrier = None
        return actor, actor.train.remote(self._spec(job), handles, *self.data)

    def _run_together(self, handles: list[TrainHandles], store) -> None:
        tc = self.cfg.training
        how = self.placement_info["strategy"] or "Ray's scheduler, queued when the cluster is full"
        self.log.event(
            "train.start",
            f"2a/2b: training {len(self.together)} runs concurrently: {', '.join(self.cfg.trained())} "
            f"(placement {tc.placement.policy}: {how})",
        )
        started = {}
        for job, h in zip(self.together, handles, strict=True):
            actor, ref = self._submit(job, h)
            started[ref] = (job, actor)
        pending, last_saved = list(started), {}
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=tc.progress_interval_s)
            if done:
                job, actor = started[done[0]]
                self._collect(job, actor, done[0])
                continue
            # Progress a CI log (or --json-logs reader) can see: the last saved step of every run.
            status = ray.get(store.status.remote()) if store else {}
            saved = {k: s["step"] for k, s in status.items() if s["step"] is not None}
            if saved and saved != last_saved:
                where = ", ".join(f"{k} step {s}" for k, s in saved.items())
                self.log.event("train.saved", f"2a/2b: training states saved at {where}", steps=saved)
                last_saved = saved

    def _collect(self, job: TrainJob, actor, ref) -> None:
        st = Stage(job.stage_name(), job.variant)
        try:
            res: TrainResult = ray.get(ref)
        except ray.exceptions.RayError as e:
            st.status, st.detail, st.start, st.end = "failed", error_text(e), time.time(), time.time()
            st.traceback = error_text(e, limit=20_000)
            self.stages.append(st)
            self.log.event("train.failed", f"{st.name} {job.variant}: FAILED ({type(e).__name__})")
            return
        finally:
            # Free the CPUs at once: queued actors, and later Serve replicas, need them.
            ray.kill(actor)
        st.start, st.end = res.start, res.end
        st.status, st.detail = ("ok" if res.status == "ok" else "failed"), res.error or ""
        self.stages.append(st)
        if job.primary:
            self.primary[job.variant] = res
        else:
            res.checkpoint = None
            self.others.append(res)
        self.log.event(
            "train.done",
            f"{st.name} {job.variant} (seed {job.seed}, {job.phase}): {res.status} in "
            f"{res.end - res.start:.1f}s, final loss {res.losses[-1]:.4f}",
            variant=job.variant,
            status=res.status,
        )

    def _export_states(self, store) -> None:
        """The store's latest states into RUN_DIR/resume/ (read back from storage.uri where they went there)."""
        from phase2_ray.core.train import STATE_META, STATE_TENSORS

        states = ray.get(store.export.remote())
        for s in states.values():
            if "uri" in s["state"]:
                s["state"] = get_checkpoint(s["state"]["uri"], (STATE_TENSORS, STATE_META))
        resume.save_states(self.out_dir, states)
