"""The README's first quick-start command, `./dev run`, end to end: the default config (configs/phase2.yaml) on an
embedded local Ray, in a process of its own, as a user runs it. About four minutes on a 2-core machine, so it is not
part of the suite's 15-minute default run: `.ci/run` runs it after the suite (`PHASE2_CI_E2E=1 ./dev test
tests/ci`), on every clean-clone CI.

The outcome is the machine's business (a CPU where no stack is faster beyond noise rejects the run as a no-op; one
where bf16 or compile pays can approve it), so the test asserts the outcome the run's own evidence calls for."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema

from phase2_ray.report.schema import Report
from phase2_ray.report.schema.reference import SHIPPED
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
EXIT = {"approved": 0, "rejected": 1, "inconclusive": 4}


def test_the_default_config_runs_end_to_end_and_decides_what_its_evidence_says(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "phase2_ray", "run", "--quiet", "--output", str(out)]
    cmd += ["--set", f"serve.port={free_port()}"]  # the default's 8000 may be taken on a CI machine
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode in EXIT.values(), done.stderr[-3000:]
    assert done.stdout.strip().endswith("report.md")
    raw = json.loads((out / "report.json").read_text())
    jsonschema.validate(raw, json.loads(SHIPPED.read_text()))  # the published contract, not pydantic
    rep = Report.model_validate(raw)
    assert EXIT[rep.decision.outcome] == done.returncode
    assert all(s.status == "ok" for s in rep.stages), [(s.name, s.status, s.detail) for s in rep.stages]
    assert set(rep.training) == {"baseline", "optimized"}
    assert {"baseline", "optimized", "optimized-int8"} <= set(rep.inference)
    assert all(i.succeeded == i.requests > 0 for i in rep.inference.values())
    assert rep.serving.capacity and {r.replicas for r in rep.serving.capacity.runs} == {1, 2}
    opt = rep.comparison["optimized"]
    speed = next(g for g in rep.decision.gates if g.name == "training_speedup" and g.variant == "optimized")
    if opt.noop:  # `auto` kept eager fp32: nothing to claim, whatever the trial measured
        assert rep.training["optimized"].auto.chosen == "eager-fp32"
        assert speed.verdict == "fail" and rep.decision.outcome == "rejected"
    else:  # a faster stack was chosen: the gate follows its interval against the target
        target = raw["config"]["targets"]["speedup_min"]
        want = "pass" if speed.low >= target else "fail" if speed.high < target else "inconclusive"
        assert speed.verdict == want
    # the int8 copy is informative by default: its outcome is its own, never the run's
    assert rep.decision.candidates["optimized-int8"].role == "informative"
    for f in ("report.md", "report.html", "steps.csv", "requests.csv", "gates.csv", "plots/capacity.png"):
        assert (out / f).stat().st_size > 0, f
    assert (out / "checkpoints/optimized").is_dir()
    same = subprocess.run(
        [sys.executable, "-m", "phase2_ray", "compare", str(out), str(out), "--output", str(tmp_path / "c")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert same.returncode in (0, 4), same.stdout[-2000:]  # a run against itself: never a regression
