"""The verdict end to end through the CLI, on effects placed where the test wants them: a calibrated delay
(`delay_pct`: busy-wait that share of each step's own time) makes a stack truly slower by a known ratio on any
machine. The smoke run in test_pipeline_e2e is the clearly faster case (approved); here, the clearly slower one
(rejected, exit 1) and one a little above the threshold (never called a firm opposite: not rejected).

2c is kept lean (one level, no sweep, no capacity search, no int8 copy): these runs are about the decision."""

import contextlib
import io
import json

import pytest

from phase2_ray import cli
from tests.conftest import LEAN_2C, ROOT

pytestmark = pytest.mark.ray

LEAN = LEAN_2C


def _run(tmp_path, sets: list[str]) -> tuple[int, dict]:
    with contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(
            ["run", "-c", str(ROOT / "configs/smoke.yaml"), "--output", str(tmp_path)]
            + [a for s in LEAN + sets for a in ("--set", s)]
        )
    return rc, json.loads((tmp_path / "report.json").read_text())


def test_a_clearly_slower_variant_is_rejected(serve_url, tmp_path):
    # 2c drives the chat endpoint here (each prompt as a user message through the default template)
    rc, r = _run(
        tmp_path, ["variants.optimized.delay_pct=60", "validation.api=chat"]
    )  # fused AdamW + 1.6x slower
    assert r["config"]["validation"]["api"] == "chat"
    assert all(i["success_rate"] == 1.0 and i["succeeded"] > 0 for i in r["inference"].values())
    sp = next(g for g in r["decision"]["gates"] if g["name"] == "training_speedup")
    assert sp["verdict"] == "fail" and sp["high"] < 1.05 and sp["outcome"] in ("worse", "inconclusive")
    assert r["decision"]["candidates"]["optimized"]["outcome"] == "rejected"
    assert rc == 1 and r["decision"]["outcome"] == "rejected"
    assert (
        "falls short" in (tmp_path / "report.md").read_text()
        or "SLOWER" in (tmp_path / "report.md").read_text()
    )


def test_an_effect_just_above_the_threshold_is_never_called_a_firm_opposite(serve_url, tmp_path):
    """True ratio 1.10 against a 1.05 target (the baseline busy-waits 10% of its step; the optimized stack is the
    same eager fp32 code without the wait). Approved, or inconclusive when the trial's noise keeps the interval
    over 1.05 within its budget; never rejected. At 99% confidence a firm wrong call is at most 0.5%."""
    rc, r = _run(
        tmp_path,
        [
            "variants.baseline.delay_pct=10",
            "variants.optimized.fused_adamw=false",
            "speed_trial.confidence=0.99",
            "speed_trial.max_replicates=12",
        ],
    )
    sp = r["comparison"]["optimized"]["speedup"]
    assert not r["comparison"]["optimized"]["noop"]  # the stacks differ by the delay
    assert r["decision"]["outcome"] in ("approved", "inconclusive") and rc in (0, 4)
    assert {"approved": 0, "inconclusive": 4}[r["decision"]["outcome"]] == rc
    assert sp["sequential"]["max_replicates"] == 12 and sp["replicates"] <= 12
    if r["decision"]["outcome"] == "inconclusive":
        md = (tmp_path / "report.md").read_text()
        assert "Inconclusive: the evidence could not decide" in md and "lies inside the interval" in md
