"""The CLI's paths that stop before Ray starts (the pipeline's own tests are in tests/integration/test_pipeline_e2e.py)."""

from phase2_ray import cli


def test_api_key_never_reaches_the_report():
    from phase2_ray.config.redact import redacted_config
    from phase2_ray.configure import load_config

    cfg = load_config(None, ["serve.api_key=s3cret"])
    assert redacted_config(cfg.model_dump(mode="json"))["serve"]["api_key"] == "<redacted>"
    assert cfg.serve.api_key == "s3cret"  # the running config keeps it


def test_phase2_serve_without_checkpoints_exits_2_before_ray(tmp_path, capsys):
    assert cli.main(["serve", "--checkpoints", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_phase2_report_without_a_run_exits_2(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no report.json" in capsys.readouterr().err
