"""One typed config tree (pydantic), loaded from YAML with dotted `--set` overrides.

base.py: the section base class and ConfigError; training.py: `training` (loop + placement, fault_tolerance,
measurement, auto), `speed_trial`, variants; serving.py: `serve` and `validation`; schema.py: the root and the
small sections; loading.py: YAML, overrides and error messages (phase2_ray.configure.load_config adds what needs
the layers above: converters checked, model.init_from resolved); redact.py: what of a config may be written down."""

from phase2_ray.config.base import ConfigError
from phase2_ray.config.loading import apply_override, format_errors, parse_yaml, read_config, yaml_error
from phase2_ray.config.schema import (
    Config,
    DataConfig,
    ModelConfig,
    RayConfig,
    StorageConfig,
    TargetsConfig,
    TrackingConfig,
)
from phase2_ray.config.serving import AutoscalingConfig, ServeConfig, ValidationConfig
from phase2_ray.config.training import (
    AutoConfig,
    ConverterUse,
    FaultToleranceConfig,
    MeasurementConfig,
    PlacementConfig,
    SpeedTrialConfig,
    TrainingConfig,
    VariantConfig,
    stored_skip_steps,
)

__all__ = [
    "AutoConfig",
    "AutoscalingConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "FaultToleranceConfig",
    "MeasurementConfig",
    "ModelConfig",
    "PlacementConfig",
    "RayConfig",
    "ServeConfig",
    "SpeedTrialConfig",
    "StorageConfig",
    "TargetsConfig",
    "TrackingConfig",
    "TrainingConfig",
    "ValidationConfig",
    "ConverterUse",
    "VariantConfig",
    "apply_override",
    "format_errors",
    "read_config",
    "parse_yaml",
    "stored_skip_steps",
    "yaml_error",
]
