import subprocess
import sys

import pytest

from phase2_ray.config import ConfigError
from phase2_ray.configure import load_config
from tests.conftest import ROOT


def test_shipped_configs_are_valid():
    names = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert {"phase2.yaml", "smoke.yaml", "gpu.yaml"} <= set(names)
    for name in names:
        cfg = load_config(ROOT / "configs" / name)
        assert list(cfg.variants)[0] == "baseline" and len(cfg.variants) >= 2
    gpu = load_config(ROOT / "configs" / "gpu.yaml")
    assert (
        gpu.training.placement.gpus_per_actor > 0
        and gpu.serve.gpus_per_replica > 0
        and gpu.variants["optimized"].bf16
    )


def test_contract_override_keys_exist_and_parse_as_yaml():
    cfg = load_config(
        None,
        [
            "training.steps=50",
            "training.seed=7",
            "training.lr=1e-3",
            "data.paths=[docs/, notes.txt]",
            "serve.port=8123",
        ],
    )
    assert (cfg.training.steps, cfg.training.seed, cfg.training.lr) == (50, 7, 1e-3)
    assert cfg.data.paths == ["docs/", "notes.txt"] and cfg.serve.port == 8123


def test_one_concurrency_level_may_be_a_number():
    assert load_config(None, ["validation.concurrency=8"]).validation.concurrency == [8]


def test_api_key_comes_from_the_config_or_the_environment(monkeypatch):
    monkeypatch.delenv("PHASE2_API_KEY", raising=False)
    assert load_config(None).serve.resolved_api_key() is None
    monkeypatch.setenv("PHASE2_API_KEY", "from-env")
    assert load_config(None).serve.resolved_api_key() == "from-env"
    assert load_config(None, ["serve.api_key=from-config"]).serve.resolved_api_key() == "from-config"


def test_override_can_add_a_variant():
    cfg = load_config(None, ["variants.fused.fused_adamw=true"])
    assert list(cfg.variants) == ["baseline", "optimized", "fused"]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("training.steps=-1", "training.steps: Input should be greater than or equal to 1"),
        ("training.steps=ten", "training.steps: Input should be a valid integer"),
        ("training.stepz=5", "training.stepz: unknown key (allowed here: auto, batch_size"),
        ("model.n_head=5", "d_model=48 must be divisible by n_head=5"),
        ("variants.optimized.compiled=true", "variants.optimized.compiled: unknown key"),
        ("variants={}", "variants must hold 'baseline'"),
        ("serve.port=70000", "serve.port: Input should be less than or equal to 65535"),
        ("validation.max_tokens=200", "must fit model.block_size"),
        ("training.min_lr=1", "min_lr=1.0 must not exceed lr"),
        ("data.val_fraction=0.9", "data.val_fraction"),
        ("training", "expected KEY=VALUE"),
        ("training.steps.x=1", "training.steps is a value, not a section"),
        ("validation.concurrency=[1, 0]", "every value must be >= 1"),
        ("validation.concurrency=[]", "validation.concurrency"),
        ("validation.replica_sweep=[2, -1]", "every value must be >= 1"),
        ("serve.autoscaling={min_replicas: 3, max_replicas: 1}", "max_replicas (1) < min_replicas (3)"),
        ("serve.max_batch_size=0", "serve.max_batch_size"),
        ("serve.stream_batch_tokens=0", "serve.stream_batch_tokens"),
        ("validation.top_p=0", "validation.top_p"),
        ("targets.int8_val_loss_delta_pct_max=-1", "targets.int8_val_loss_delta_pct_max"),
    ],
)
def test_bad_values_name_the_field_and_what_is_allowed(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs" / "phase2.yaml", [override])
    assert fragment in str(e.value)


def test_unreadable_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)


def test_yaml_objects_are_not_constructed(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("run_name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)


def test_cli_exits_2_before_ray_starts(tmp_path):
    # RAY_ADDRESS points nowhere: had the CLI tried to reach Ray, it would fail differently (and slowly).
    env = {"RAY_ADDRESS": "127.0.0.1:1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "phase2_ray",
            "run",
            "--set",
            "training.batch_size=0",
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "training.batch_size: Input should be greater than or equal to 1" in out.stderr
    assert "ray" not in out.stdout.lower() and not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "override, new",
    [
        ("training.cpus_per_actor=2", "training.placement.cpus_per_actor"),
        ("training.placement_timeout_s=3", "training.placement.timeout_s"),
        ("training.placement=spread", "training.placement.policy: spread"),
        ("training.checkpoint_every=10", "training.fault_tolerance.checkpoint_every"),
        ("training.repeats=2", "training.measurement.repeats"),
        ("training.auto_probe_steps=4", "training.auto.probe_steps"),
    ],
)
def test_keys_moved_into_training_sub_sections_are_refused_naming_the_new_key(override, new):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert new in str(e.value)


def test_a_stored_config_of_either_layout_gives_its_skip_steps():
    from phase2_ray.config import stored_skip_steps

    new = load_config(None, ["training.measurement.skip_steps=7"]).model_dump(mode="json")
    assert stored_skip_steps(new) == 7
    assert stored_skip_steps({"training": {"skip_steps": 9}}) == 9


def test_the_model_shape_has_one_source():
    """Every field of core.specs.GPTConfig (but the vocabulary, data.vocab_size) is a model.* key with its default
    and meaning, and model.* adds no shape key of its own: a field added to the shape is a config key at once."""
    from dataclasses import fields

    from phase2_ray.config.schema import ModelConfig
    from phase2_ray.core.specs import GPTConfig

    shape = {f.name: f for f in fields(GPTConfig) if f.name != "vocab_size"}
    assert set(ModelConfig.model_fields) - {"init_from"} == set(shape)
    for name, f in shape.items():
        assert ModelConfig.model_fields[name].default == f.default
        assert ModelConfig.model_fields[name].description == f.metadata["doc"]
    assert GPTConfig(**ModelConfig().gpt_fields(300)) == GPTConfig(vocab_size=300)
