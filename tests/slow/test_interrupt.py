"""Interruption: SIGTERM on `phase2 run` mid-training stops everything and leaves no Ray process behind, writes a
partial report marked INCOMPLETE and the training states, exits 3; `phase2 run --resume RUN_DIR` then finishes the
same run from those states. Its output is not a terminal, so progress comes as plain lines, never as bars. What
--resume refuses is tests/unit/test_interrupt.py.

Slow: the interrupted run starts its own Ray in a subprocess, in a session of its own (tests/slow/procs.py); the
resume runs on the session's cluster."""

import json
import signal

import pytest

from phase2_ray.cli import main
from tests.conftest import free_port
from tests.slow.procs import BAR_FRAGMENTS, Phase2, assert_nothing_left, assert_ray_was_there, describe

pytestmark = pytest.mark.ray

STEPS = 400  # far more than the test waits for: the signal lands while both actors train
SETS = [
    f"training.steps={STEPS}",
    "training.fault_tolerance.checkpoint_every=20",
    "training.eval_interval=0",
    # a plain progress line and a saved-step line every second, not every 10 s
    "training.progress_interval_s=1",
]
PROGRESS = rf"\[(baseline|optimized) seed 1337\] step \d+/{STEPS} loss \d+\.\d+ [\d,]+ tok/s"
FAST_2C = ["validation.replica_sweep=[]", "validation.concurrency=[1]", "validation.requests=4"]
FAST_2C += ["serve.int8=false", "validation.inprocess_reference=false", "data.max_chars=100000"]
FAST_2C += ["validation.capacity.enabled=false"]  # the smoke run and tests/integration/test_serve_capacity.py
# the speed trial at its minimum (it must still run and end ok after the resume; its design is checked elsewhere)
FAST_TRIAL = ["speed_trial.replicates=2", "speed_trial.max_replicates=2", "speed_trial.pairs=2"]
FAST_TRIAL += ["validation.max_rounds=2"]  # no extra rounds either
# So the evidence is minimal by design: two replicates and two rounds cannot decide, and the outcome to assert
# after the resume is inconclusive (exit 4), never a firm call.


def test_sigterm_mid_training_leaves_nothing_running_and_resume_finishes_the_run(tmp_path, serve_url):
    out = tmp_path / "run"
    sets = [*SETS, *FAST_2C, *FAST_TRIAL, f"serve.port={free_port()}"]
    run = Phase2(
        "run", "-c", "configs/smoke.yaml", "--output", str(out), *(a for s in sets for a in ("--set", s))
    )
    try:
        # The actors' progress, as plain lines (forwarded to the driver's output with a lag: wait for one here,
        # a signal right after the actor printed it could cut it off). Then, once both runs have saved a state
        # (the driver's saved-step line, every progress interval), they are mid-training: the signal lands.
        run.wait_for(PROGRESS, timeout=300)
        run.wait_for(
            r"training states saved at (?=.*baseline\S* step \d+)(?=.*optimized\S* step \d+)", timeout=120
        )
        tree = run.tree()
        assert_ray_was_there(run, tree, dashboard=False)
        assert any(p.name().startswith("ray::TrainerActor") for p in tree), describe(tree)
        rc = run.stop(signal.SIGTERM)
        text = run.output()
        assert rc == 3, text[-3000:]
        assert "interrupted: stopping actors and Serve" in text and "SIGTERM received" not in text
        assert "resume with: phase2 run --resume" in text
        # the actors' progress, as plain lines
        assert run.wait_for(
            rf"\[(baseline|optimized) seed 1337\] step \d+/{STEPS} loss \d+\.\d+ [\d,]+ tok/s", 0
        )
        assert not [f for f in BAR_FRAGMENTS if f in text], text[-3000:]
        assert_nothing_left(run, tree)
    finally:
        run.kill()

    report = json.loads((out / "report.json").read_text())
    assert report["incomplete"] is True and "interrupted" in report["failure"]
    assert report["decision"]["approved"] is False
    assert any(s["status"] == "interrupted" for s in report["stages"])
    assert "(INCOMPLETE)" in (out / "report.md").read_text().splitlines()[0]
    saved = {
        json.loads(p.read_text())["key"]: json.loads(p.read_text())["step"]
        for p in out.glob("resume/*/info.json")
    }
    assert set(saved) == {"baseline:seed1337:concurrent", "optimized:seed1337:concurrent"}
    assert all(0 < s < STEPS for s in saved.values()), saved

    rc = main(["run", "--resume", str(out), "--quiet"])  # into the session's running Serve
    assert rc == 4
    done = json.loads((out / "report.json").read_text())
    assert done["run_id"] == report["run_id"] and done["resumed"] is True and done["incomplete"] is False
    assert done["decision"]["outcome"] == "inconclusive"
    assert [s["status"] for s in done["stages"]] == ["ok"] * 6  # data, 2a, 2b, speed-trial, 2c, 2d
    for v in ("baseline", "optimized"):
        t = done["training"][v]
        assert t["resumed_from_step"] == saved[f"{v}:seed1337:concurrent"] and t["steps"] == STEPS
        assert len(t["loss_curve"]) == STEPS
    assert not (out / "resume").exists()  # a whole run keeps its checkpoints, not its training states
    assert (out / "checkpoints" / "optimized" / "meta.json").exists()
