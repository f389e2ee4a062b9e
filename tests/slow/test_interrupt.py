"""Interruption: SIGTERM on the driver mid-training stops everything, writes a partial report marked INCOMPLETE and
the training states, exits 3; `phase2 run --resume RUN_DIR` then finishes the same run from those states. What --resume refuses is
tests/unit/test_interrupt.py."""

import json
import signal
import subprocess
import sys

import pytest

from phase2_ray.cli import main
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.ray

SETS = ["training.steps=1200", "training.fault_tolerance.checkpoint_every=100", "training.eval_interval=1000"]
FAST_2C = ["validation.replica_sweep=[]", "validation.concurrency=[1]", "validation.requests=4"]
# the speed trial at its minimum (it must still run and end ok after the resume; its design is checked elsewhere)
FAST_TRIAL = ["speed_trial.replicates=2", "speed_trial.pairs=2"]


def test_sigterm_leaves_an_incomplete_report_and_resume_finishes_the_run(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "phase2_ray",
        "run",
        "-c",
        "configs/smoke.yaml",
        "--output",
        str(out),
        "--json-logs",
    ]
    for s in [*SETS, *FAST_2C, *FAST_TRIAL, f"serve.port={free_port()}"]:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The driver logs the saved steps every 5 s while training (a named event a program can match):
        # interrupt once both runs have saved one.
        for line in proc.stdout:
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "train.saved" and {k.split(":")[0] for k in event["steps"]} == {
                "baseline",
                "optimized",
            }:
                break
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 3, err[-3000:]
    assert "resume with: phase2 run --resume" in rest

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
    assert all(0 < s < 1200 for s in saved.values()), saved

    rc = main(["run", "--resume", str(out), "--quiet", "--set", f"serve.port={free_port()}"])
    assert rc in (0, 1)
    done = json.loads((out / "report.json").read_text())
    assert done["run_id"] == report["run_id"] and done["resumed"] is True and done["incomplete"] is False
    assert [s["status"] for s in done["stages"]] == ["ok"] * 6  # data, 2a, 2b, speed-trial, 2c, 2d
    for v in ("baseline", "optimized"):
        t = done["training"][v]
        assert t["resumed_from_step"] == saved[f"{v}:seed1337:concurrent"] and t["steps"] == 1200
        assert len(t["loss_curve"]) == 1200
    assert not (out / "resume").exists()  # a whole run keeps its checkpoints, not its training states
    assert (out / "checkpoints" / "optimized" / "meta.json").exists()
