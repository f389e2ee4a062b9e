"""Training survives a crash: a training actor whose process is SIGKILLed mid-run is restarted by Ray and resumes
from the driver-owned store, ending with exactly the losses of an uninterrupted run. The core part (a saved training
state restores bit-identically) is tests/unit/test_resume.py."""

import os
import signal
import threading
import time

import pytest

from phase2_ray.configure import load_config
from tests.conftest import ROOT


@pytest.mark.ray
def test_killed_training_actor_restarts_and_ends_bit_identical(ray_cluster, kill_rng):
    import ray

    from phase2_ray.dataprep import prepare_data
    from phase2_ray.runlog import RunLog
    from phase2_ray.training.run import TrainingStage

    def train(run_id: str) -> dict:
        primary, _ = TrainingStage(cfg, run_id, d, RunLog("quiet")).run()
        return {v: r.to_dict() for v, r in primary.items()}

    def train_here() -> dict:
        """The uninterrupted baseline, trained by the core in this process on one thread as the actor does
        (an actor pair of its own would cost two more process start-ups)."""
        import torch

        from phase2_ray.core.model import GPTConfig
        from phase2_ray.core.specs import OptimizationSettings
        from phase2_ray.core.train import train as core_train
        from phase2_ray.training.actors import loop_settings

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            gpt = GPTConfig(**cfg.model.gpt_fields(d.vocab_size))
            res, _ = core_train(
                gpt,
                loop_settings(cfg.training, cfg.training.seed),
                OptimizationSettings(),
                d.train_tokens,
                d.val_tokens,
            )
        finally:
            torch.set_num_threads(threads)
        return {"losses": res.losses, "val_curve": [list(x) for x in res.val_curve]}

    cfg = load_config(
        ROOT / "configs" / "smoke.yaml",
        [
            "training.steps=160",
            "training.fault_tolerance.checkpoint_every=20",
            "training.eval_interval=80",
            "training.log_every=0",
        ],
    )
    d = prepare_data(cfg)
    clean = {"baseline": train_here()}

    run_id, key = "resume-killed", "baseline:seed1337:concurrent"
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(res=train(run_id)))
    worker.start()
    kill_after = kill_rng.choice([20, 40, 60, 80])
    killed = None
    deadline = time.time() + 120
    while worker.is_alive() and time.time() < deadline:
        try:
            st = ray.get(ray.get_actor(f"{run_id}:train-state").status.remote()).get(key)
        except ValueError:  # the store does not exist yet
            st = None
        if st and st["step"] is not None and st["step"] >= kill_after:
            time.sleep(kill_rng.uniform(0, 0.05))  # somewhere between two saved states
            killed = (st["pid"], st["step"])
            os.kill(st["pid"], signal.SIGKILL)
            break
        time.sleep(0.01)
    worker.join(timeout=180)
    assert killed is not None, "training finished before the kill: make it longer"
    res = out["res"]
    base = res["baseline"]
    assert base["restarts"] == 1 and base["status"] == "ok"
    assert (
        base["resumed_from_step"] >= killed[1]
    )  # resumed from the state seen before the kill, or a later one
    assert base["placement"]["pid"] != killed[0]  # a new process
    # Same model, optimizer, RNG and data position: every loss equals the uninterrupted run's, bit for bit.
    assert base["losses"] == clean["baseline"]["losses"]
    assert [list(x) for x in base["val_curve"]] == clean["baseline"]["val_curve"]
    assert res["optimized"]["restarts"] == 0
