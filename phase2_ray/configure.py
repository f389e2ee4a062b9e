"""A config as a run uses it: `config.loading.read_config` reads and validates the YAML (the config layer alone,
importing nothing above it); here, above the layers they need, a user's converters are imported and checked
(`stacks`) and model.init_from's shape is taken from its checkpoint (`pretrained`). Every error is a ConfigError
(exit 2), raised on the driver before Ray starts."""

from __future__ import annotations

from pathlib import Path

from phase2_ray.config import Config
from phase2_ray.config.loading import read_config
from phase2_ray.pretrained import resolve_config
from phase2_ray.stacks import absolute_uses, check_variants


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Reads YAML at `path` (or the defaults when None), applies overrides, validates the whole tree, checks every
    converter, and resolves model.init_from's shape."""
    cfg = read_config(path, overrides)
    if any(v.converters for v in cfg.variants.values()):
        # A user's converters are imported and checked now, in the driver: a bad one exits 2 before Ray starts.
        base = Path(path).resolve().parent if path is not None else Path.cwd()
        for v in cfg.variants.values():
            absolute_uses(v, base)  # relative to the config file
        check_variants(cfg.variants)
    return resolve_config(cfg)  # model.init_from: the shape comes from the checkpoint
