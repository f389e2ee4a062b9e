"""docs/configuration.md, generated from the config models themselves: every key with its type, default and the
`Field(description=...)` the validation errors also quote. `python -m phase2_ray.config.reference > FILE` writes it;
tests/unit/test_docs.py fails when the file in the repository is not what this prints. `render_tree` renders any
tree of pydantic models the same way (docs/report-json.md, from report.json's models)."""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from phase2_ray.config.schema import Config

HEADER = """# Configuration reference

Generated from the config models (`phase2_ray/config/`) by `python -m phase2_ray.config.reference`; do not edit by
hand (`tests/unit/test_docs.py` checks it is current). Every key can be set in the YAML file or with
`--set dotted.key=VALUE`; unknown keys, wrong types and out-of-range values exit 2 naming the key and what is allowed.
"""


def _sections(tp: Any) -> list[type[BaseModel]]:
    """The config sections a field's type holds: itself, an optional one, or a dict's values."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    if origin in (typing.Union, types.UnionType) or origin is dict:
        return [s for a in typing.get_args(tp) for s in _sections(a)]
    return []


def _type_name(tp: Any) -> str:
    text = re.sub(r"phase2_ray(\.\w+)+\.(?=[A-Z])", "", str(tp).replace("typing.", ""))
    return text.replace("<class '", "").replace("'>", "")


def _default(field) -> str:
    if field.default is not PydanticUndefined:
        return f"`{field.default!r}`" if not isinstance(field.default, BaseModel) else "(section)"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
            return f"`{', '.join(value)}` (each below)"
        return "(section)" if isinstance(value, BaseModel) else f"`{value!r}`"
    return "required"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    return render_tree(Config, HEADER)


def render_tree(root: type[BaseModel], header: str) -> str:
    """A section per model reachable from `root` (breadth first, each model once), a row per field."""
    out = [header]
    seen: set[type[BaseModel]] = set()
    queue: list[tuple[str, type[BaseModel]]] = [("", root)]
    while queue:
        prefix, model = queue.pop(0)
        if model in seen and prefix:
            continue
        seen.add(model)
        rows = []
        for name, field in model.model_fields.items():
            key = field.alias or name
            subs = _sections(field.annotation)
            is_map = typing.get_origin(field.annotation) is dict
            path = f"{prefix}{key}" + (".NAME" if is_map else "")
            rows.append(
                f"| `{path}` | `{_cell(_type_name(field.annotation))}` | {_cell(_default(field))} | "
                f"{_cell(field.description or '')} |"
            )
            queue += [(f"{path}.", s) for s in subs]
        title = prefix.rstrip(".") or "(top level)"
        doc = " ".join((model.__doc__ or "").split()) if model is not root else ""
        out.append(f"\n## `{title}`\n\n")
        if doc:
            out.append(f"{doc}\n\n")
        out.append("| key | type | default | description |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    return "".join(out)


if __name__ == "__main__":
    print(render(), end="")
