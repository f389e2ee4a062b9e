"""MLflow tracking's guards, without a server: a malformed URI is a config error when the config gives it and a
warning when the environment does; credentials never reach an artifact; --resume refuses other starting weights."""

import pytest

from phase2_ray.config import ConfigError
from phase2_ray.config.redact import public_uri, redacted_config
from phase2_ray.configure import load_config
from phase2_ray.runlog import RunLog
from phase2_ray.tracking import check_tracking, log_run

REPORT = {"run_id": "r", "started_at": 0.0, "decision": {"approved": True, "gates": []}, "config": {}}


@pytest.mark.parametrize("uri", ["http://localhost:abc", "http://[::1", "http://"])
def test_a_malformed_uri_in_the_config_exits_2(uri):
    with pytest.raises(ConfigError, match="tracking.mlflow_uri"):
        check_tracking(load_config(None, [f"tracking.mlflow_uri={uri}"]))


@pytest.mark.parametrize("uri", ["http://localhost:abc", "http://u:p@[::1"])
def test_a_malformed_uri_from_the_environment_is_a_warning_not_a_crash(uri, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    info = log_run(load_config(None), REPORT, tmp_path, {}, RunLog("quiet"))
    assert info["status"] in ("unreachable", "failed") and info["uri_from"] == "MLFLOW_TRACKING_URI"
    assert "warning: MLflow tracking" in capsys.readouterr().err
    assert "u:p" not in str(info)


def test_credentials_in_the_uri_never_reach_the_report_or_config_json():
    cfg = load_config(None, ["tracking.mlflow_uri=https://alice:s3cret@mlflow.example.com:5000/"])
    assert "s3cret" not in str(redacted_config(cfg.model_dump(mode="json")))
    assert public_uri("see https://alice:s3cret@h:1/x and http://h2/y") == "see https://h:1/x and http://h2/y"


def test_resume_refuses_other_starting_weights(tmp_path):
    from phase2_ray import resume

    resume.write_run_files(tmp_path, "r", {}, {"model.safetensors": "aaa"})
    resume.check_init(tmp_path, {"model.safetensors": "aaa"})
    with pytest.raises(ConfigError, match="model.safetensors"):
        resume.check_init(tmp_path, {"model.safetensors": "bbb"})
    with pytest.raises(ConfigError):
        resume.check_init(tmp_path, None)
