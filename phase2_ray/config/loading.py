"""Loading the config tree from YAML (safe_load only) with dotted `--set` overrides; every mistake reported
with its dotted path and what is allowed, before anything starts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from phase2_ray.config.base import ConfigError
from phase2_ray.config.schema import Config, VariantConfig, _default_variants


class _Loader(yaml.SafeLoader):
    """safe_load that also reads `3e-4` as a float (YAML 1.1 wants `3.0e-4`; people write the former)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """yaml.safe_load semantics (no object construction), with exponent floats."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def yaml_error(e: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what is wrong and where (its own message spans several, with a caret)."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def apply_override(raw: dict, expr: str) -> None:
    """Applies one `dotted.key=value` override in place; the value is parsed as YAML."""
    if "=" not in expr:
        raise ConfigError(f"--set {expr!r}: expected KEY=VALUE, e.g. training.steps=50")
    key, _, text = expr.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {expr!r}: empty component in key {key!r}")
    try:
        value = parse_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML ({yaml_error(e)})") from e
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {key}: {where} is a value, not a section")
        node = child
    node[parts[-1]] = value


def read_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Reads YAML at `path` (or the defaults when None), applies overrides, validates the whole tree. This is the
    config layer alone: phase2_ray.configure.load_config also imports a user's converters and takes
    model.init_from's shape from its checkpoint, which need the layers above."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"config file {p}: cannot read ({e.strerror})") from e
        try:
            loaded = parse_yaml(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p}: not valid YAML ({yaml_error(e)})") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: top level must be a mapping, got {type(loaded).__name__}")
        raw = loaded
    if overrides and "variants" not in raw:
        # `--set variants.x.…` adds to the default variants instead of replacing them.
        raw["variants"] = {k: v.model_dump() for k, v in _default_variants().items()}
    for expr in overrides:
        apply_override(raw, expr)
    drop_nulls(raw)  # model.init_from: null = the checkpoint's value
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e)) from None
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    for e in cfg.endpoints.values():  # a tokenizer path is relative to the config file, as converters are
        if e.tokenizer is not None:
            e.tokenizer = str(base / Path(e.tokenizer).expanduser())  # an absolute path stays as it is
    return cfg


SHAPE_KEYS = (
    "arch",
    "n_layer",
    "n_head",
    "d_model",
    "bias",
    "n_kv_head",
    "ffn_hidden",
    "norm_eps",
    "rope_theta",
    "rope_scaling",
    "qkv_bias",
    "tie_embeddings",
    "block_size",
)
"""model.* keys a checkpoint gives (model.init_from): `null` for one means "the checkpoint's"."""


def drop_nulls(raw: dict) -> None:
    """With model.init_from, `null` for a shape key or data.vocab_size means "take the checkpoint's": the key is
    removed before validation (from the command line, `--set model.n_layer=null` overrides a config file's)."""
    model, data = raw.get("model"), raw.get("data")
    if not isinstance(model, dict) or not model.get("init_from"):
        return
    for key in SHAPE_KEYS:
        if key in model and model[key] is None:
            del model[key]
    if isinstance(data, dict) and "vocab_size" in data and data["vocab_size"] is None:
        del data["vocab_size"]


def format_errors(err: ValidationError) -> str:
    """One line per problem: dotted path, what is wrong, what was given, and the allowed keys for typos."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(e["loc"][:-1])
            lines.append(f"{loc}: unknown key (allowed here: {', '.join(allowed)})")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        given = e.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"{loc}: {msg}{shown}")
    if len(lines) == 1:
        return f"invalid config: {lines[0]}"
    return "invalid config:\n  " + "\n  ".join(lines)


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    keyed = False  # the previous part was a dict field: this part is a free-form key (a variant's name, ...)
    for part in loc:
        if keyed:
            keyed = False
            continue
        field = model.model_fields.get(str(part))
        if field is None:  # a free-form key such as a variant name: its value is a VariantConfig
            model = VariantConfig
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif getattr(ann, "__origin__", None) is dict:
            model, keyed = ann.__args__[1], True
    return sorted(f.alias or n for n, f in model.model_fields.items())
