"""Training survives a crash: the whole training state saved every K steps restores bit-identically (core), and a
training actor whose process is SIGKILLed mid-run is restarted by Ray and resumes from the driver-owned store, ending
with exactly the losses of an uninterrupted run."""

import os
import random
import signal
import threading
import time

import pytest
import torch

from phase2_ray.config import load_config
from phase2_ray.core.model import GPTConfig
from phase2_ray.core.optimize import OptimizationSettings
from phase2_ray.core.train import TrainSettings, train
from tests.conftest import ROOT


@pytest.mark.parametrize("optim", [OptimizationSettings(), OptimizationSettings(fused_adamw=True)])
def test_resumed_core_run_is_bit_identical(tiny_corpus, optim):
    _, tok, tr_ids, va = tiny_corpus
    cfg = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=1, n_head=2, d_model=32)
    ts = TrainSettings(
        steps=40, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=10, eval_windows=8
    )
    saved = {}
    full = train(
        cfg, ts, optim, tr_ids, va, checkpoint_every=10, on_checkpoint=lambda s, f: saved.update({s: f})
    )
    assert sorted(saved) == [10, 20, 30]  # not at the last step: the result itself is the final state
    at = random.Random().choice(sorted(saved))
    res = train(cfg, ts, optim, tr_ids, va, resume=saved[at])
    assert res.resumed_from == at and res.steps == 40
    assert res.losses == full.losses and res.val_curve == full.val_curve
    a, b = full.model.state_dict(), res.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


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
            "training.steps=400",
            "training.fault_tolerance.checkpoint_every=40",
            "training.eval_interval=200",
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
    kill_after = random.Random().choice([40, 80, 120, 160, 200])
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
