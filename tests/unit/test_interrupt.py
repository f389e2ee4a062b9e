"""`phase2 run --resume` refuses what cannot be resumed, before Ray starts (the interrupt and the resume itself are
tests/slow/test_interrupt.py)."""

import json

from phase2_ray.cli import main
from tests.conftest import ROOT


def test_resume_refuses_what_cannot_be_resumed(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "no run.json" in capsys.readouterr().err
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "x"}))
    (tmp_path / "config.json").write_text((ROOT / "configs" / "smoke.yaml").read_text())
    assert main(["run", "--resume", str(tmp_path), "--set", "training.steps=10"]) == 2
    assert "may not change training" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path), "-c", "configs/smoke.yaml"]) == 2
    assert "drop -c/--output" in capsys.readouterr().err
