"""A user's own converters, written in a temporary directory outside the package and loaded by path, judged end to
end on the session's Ray cluster: each candidate gets the outcome its converter earns, and one that raises fails its
stage (exit 3) with its name and traceback in the report while the baseline's checkpoint is kept.

One run holds every case as its own candidate (each candidate is judged alone), so the suite pays for one pipeline.
The baseline busy-waits half of each step's own time (the calibration instrument): every candidate that leaves the
step alone is then truly ~1.5x faster on any machine, a known effect to approve."""

import contextlib
import io
import json
import textwrap

import pytest

from phase2_ray import cli
from phase2_ray.core import checkpoint as ckpt
from tests.conftest import LEAN_2C, ROOT

pytestmark = pytest.mark.ray

CONVERTERS = '''
import contextlib
import time

import torch


class FusedStep:
    """A known speedup over the (delayed) baseline: AdamW's fused kernel, built by the user's own optimizer hook."""

    def optimizer(self, param_groups, *, lr, betas, weight_decay):
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)


class SleepyStep:
    """Slower whatever the machine: sleeps in every forward pass."""

    def __init__(self, ms: float = 20.0):
        self.s = ms / 1000

    @contextlib.contextmanager
    def step_context(self):
        time.sleep(self.s)
        yield


class Perturb:
    """Diverges from the baseline's learning: large noise on every weight before training."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    @torch.no_grad()
    def convert(self, model):
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * self.scale)
        return model


class Boom:
    """Raises on the training node (a missing kernel, say): only its own stage may fail."""

    def convert(self, model):
        raise RuntimeError("custom kernel libfoo.so not found on this node")
'''

LEAN = [*LEAN_2C, "variants.baseline.delay_pct=50"]


@pytest.fixture(scope="module")
def run(serve_url, tmp_path_factory):
    plugins = tmp_path_factory.mktemp("user-plugins")  # outside the package, as a user's would be
    (plugins / "my_opts.py").write_text(textwrap.dedent(CONVERTERS))
    cfg = plugins / "converters.yaml"
    smoke = (ROOT / "configs/smoke.yaml").read_text()
    variants = """variants:
  baseline: {}
  fast:
    converters: ["my_opts.py:FusedStep"]  # relative to this config file
  sleepy:
    converters: [{use: "my_opts.py:SleepyStep", args: {ms: 30}}]
  perturbed:
    converters: [{use: "my_opts.py:Perturb", args: {scale: 0.5}}]
  boom:
    converters: ["my_opts.py:Boom"]
"""
    cfg.write_text(
        smoke.replace("variants:\n  baseline: {}\n  optimized:\n    fused_adamw: true\n", variants)
    )
    assert "my_opts.py:Boom" in cfg.read_text()
    sets = LEAN
    out = tmp_path_factory.mktemp("converters-run")
    with contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(["run", "-c", str(cfg), "--output", str(out)] + [a for s in sets for a in ("--set", s)])
    return rc, out, json.loads((out / "report.json").read_text()), plugins


def _candidate(r: dict, v: str) -> dict:
    return r["decision"]["candidates"][v]


def test_each_users_converter_earns_its_own_outcome(run):
    rc, out, r, plugins = run
    assert set(r["training"]) == {"baseline", "fast", "sleepy", "perturbed"}  # boom never finished: no result
    assert set(r["decision"]["candidates"]) == {"fast", "sleepy", "perturbed", "boom"}
    # the known speedup is approved: faster beyond the target, learning like the baseline
    assert _candidate(r, "fast")["outcome"] == "approved", _candidate(r, "fast")
    # the step that sleeps is rejected by the speedup gate, firmly slower
    slow = _candidate(r, "sleepy")
    assert slow["outcome"] == "rejected" and "training_speedup" in slow["failed"]
    sp = next(
        g for g in r["decision"]["gates"] if g["name"] == "training_speedup" and g["variant"] == "sleepy"
    )
    assert sp["high"] < 1.0 and sp["outcome"] == "worse"
    # the perturbed weights are rejected by the convergence gate
    pert = _candidate(r, "perturbed")
    assert pert["outcome"] == "rejected" and "val_loss_delta_pct" in pert["failed"]
    md = (out / "report.md").read_text()
    assert "sleepy" in md and "perturbed" in md and "training_speedup" in md and "val_loss_delta_pct" in md


def test_a_converter_that_raises_fails_its_stage_and_keeps_the_baseline(run):
    rc, out, r, plugins = run
    assert rc == 3 and r["decision"]["outcome"] == "rejected"  # a stage failed: exit 3, never approved
    stage = next(s for s in r["stages"] if s.get("variant") == "boom")
    assert stage["status"] == "failed"
    assert "converter 'Boom'" in stage["detail"] and "raised in convert" in stage["detail"]
    assert "libfoo.so" in stage["detail"]
    tb = stage["traceback"]  # the whole remote traceback, the user's own frame included
    assert 'my_opts.py", line' in tb and 'raise RuntimeError("custom kernel' in tb and "in convert" in tb
    assert (
        "## Failed Stages" in (out / "report.md").read_text()
        and "my_opts.py" in (out / "report.md").read_text()
    )
    assert _candidate(r, "boom")["outcome"] == "rejected"
    # every other variant's artifacts are kept: checkpoints, served and judged
    for v in ("baseline", "fast", "sleepy", "perturbed"):
        assert (out / "checkpoints" / v / ckpt.META).is_file(), v
    assert not (out / "checkpoints" / "boom").exists()


def test_report_json_records_each_converter_source_and_args(run):
    rc, out, r, plugins = run
    import hashlib

    sha = hashlib.sha256((plugins / "my_opts.py").read_bytes()).hexdigest()
    conv = r["training"]["sleepy"]["settings"]["converters"]
    assert [c["name"] for c in conv] == ["SleepyStep"] and conv[0]["args"] == {"ms": 30}
    assert conv[0]["source"] == {"kind": "file", "path": str(plugins / "my_opts.py"), "sha256": sha}
    assert conv[0]["hooks"] == ["step_context"] and conv[0]["changes_numerics"] is True
    assert r["training"]["baseline"]["settings"] == {"converters": [], "delay_pct": 50.0}
    # peak training memory is a figure of every trained variant, and a ratio beside each speedup
    for v in ("baseline", "fast", "sleepy", "perturbed"):
        assert r["training"][v]["peak_memory"]["bytes"] > 0
    assert r["comparison"]["fast"]["training_memory"]["ratio"] > 0
