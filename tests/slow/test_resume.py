"""Training survives a crash: a training actor whose process is SIGKILLed mid-run is restarted by Ray and resumes
from the driver-owned store, ending with exactly the losses of an uninterrupted run. The core part (a saved training
state restores bit-identically) is tests/unit/test_resume.py."""

import os
import random
import signal
import threading
import time

import pytest

from phase2_ray.config import load_config
from tests.conftest import ROOT


@pytest.mark.ray
def test_killed_training_actor_restarts_and_ends_bit_identical(ray_cluster):
    import ray

    from phase2_ray.dataprep import prepare_data
    from phase2_ray.runlog import RunLog
    from phase2_ray.training.run import TrainingStage

    def train(run_id: str) -> dict:
        primary, _ = TrainingStage(cfg, run_id, d, RunLog("quiet")).run()
        return {v: r.to_dict() for v, r in primary.items()}

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
    clean = train("resume-clean")
    assert clean["baseline"]["restarts"] == 0 and clean["baseline"]["resumed_from_step"] is None

    run_id, key = "resume-killed", "baseline:seed1337:concurrent"
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(res=train(run_id)))
    worker.start()
    kill_after = random.Random().choice([20, 40, 60, 80])
    killed = None
    deadline = time.time() + 120
    while worker.is_alive() and time.time() < deadline:
        try:
            st = ray.get(ray.get_actor(f"{run_id}:train-state").status.remote()).get(key)
        except ValueError:  # the store does not exist yet
            st = None
        if st and st["step"] is not None and st["step"] >= kill_after:
            time.sleep(random.Random().uniform(0, 0.05))  # somewhere between two saved states
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
    assert base["val_curve"] == clean["baseline"]["val_curve"]
    assert res["optimized"]["restarts"] == 0
