"""Finding a converter class from what a config names, anywhere: the driver (to check it before Ray starts), a
training actor, a Serve replica. No torch and no Ray here: a user's module imports what it needs itself.

A converter is named by `use`:
  - a built-in's name (`compile`, `fused_adamw`, `bf16`, `sdpa`, `int8`);
  - `package.module:Class`, an importable module;
  - `path/to/file.py:Class`, a file (absolute, or relative to the config file; made absolute at load).

`resolve` turns (use, args) into a spec: a plain dict that the report, MLflow and the no-op guard read, and that
`load_class` turns back into the class in any process. A file's spec carries its sha256, so a worker that finds
another file under the same name (a stale copy, a clash) refuses it instead of running different code."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

HOOKS = ("convert", "optimizer", "step_context", "serve")
"""The protocol's hooks (core/converters.py documents their signatures)."""
TRAINING_HOOKS = ("convert", "optimizer", "step_context")


class PluginError(ValueError):
    """A converter that cannot be used; the message starts with the converter's `use` and says what is wrong."""


def builtins() -> dict[str, type]:
    from phase2_ray.core.converters import BUILTINS  # imports torch: only when a built-in is asked for

    return BUILTINS


def split_use(use: str) -> tuple[str, str] | None:
    """(module or file, class) for `x:Class`; None for a built-in's bare name."""
    if ":" not in use:
        return None
    where, _, cls = use.rpartition(":")
    if not where or not cls.isidentifier():
        raise PluginError(f"converter {use!r}: expected 'package.module:Class' or 'path/file.py:Class'")
    return where, cls


def is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _module_from_file(path: Path, sha: str | None) -> ModuleType:
    """The module at `path`, imported under a name unique to its contents (two files called opt.py never meet)."""
    if not path.is_file():
        raise PluginError(
            f"{path} does not exist (a converter file is absolute or relative to the config file)"
        )
    digest = sha256_file(path)
    if sha is not None and digest != sha:
        raise PluginError(f"{path} changed since the run started (sha256 {digest[:12]}, expected {sha[:12]})")
    name = f"phase2_plugin_{digest[:12]}_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{path} is not a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def _shipped_module(stem: str, sha: str) -> ModuleType:
    """A file shipped to this worker by Ray's runtime_env `py_modules` (importable by its stem), if it is the file
    the spec names."""
    mod = importlib.import_module(stem)
    f = getattr(mod, "__file__", None)
    if f is None or sha256_file(f) != sha:
        raise PluginError(f"module {stem!r} on this worker is not the converter file (sha256 {sha[:12]})")
    return mod


def _import(use: str, source: dict | None = None) -> type:
    parts = split_use(use)
    if parts is None:
        found = builtins().get(use)
        if found is None:
            raise PluginError(
                f"converter {use!r} is not a built-in ({', '.join(sorted(builtins()))}); a converter of "
                "your own is 'package.module:Class' or 'path/file.py:Class'"
            )
        return found
    where, cls_name = parts
    try:
        if is_file(where):
            path, sha = Path(where), (source or {}).get("sha256")
            rel = (source or {}).get("relpath")
            if sha is not None and not path.is_file() and rel and (Path.cwd() / rel).is_file():
                path = (
                    Path.cwd() / rel
                )  # another node, in the job's working_dir (ray job submit --working-dir)
            if sha is not None and not path.is_file():
                mod = _shipped_module(
                    path.stem, sha
                )  # another node: shipped by the job's runtime_env py_modules
            else:
                mod = _module_from_file(path, sha)
        else:
            mod = importlib.import_module(where)
    except PluginError as e:
        raise PluginError(f"converter {use!r}: {e}") from e
    except Exception as e:  # the user's module raised while importing: that is the error to report
        raise PluginError(f"converter {use!r} does not import: {type(e).__name__}: {e}") from e
    cls = getattr(mod, cls_name, None)
    if cls is None:
        raise PluginError(f"converter {use!r}: {where} has no attribute {cls_name!r}")
    if not inspect.isclass(cls):
        raise PluginError(f"converter {use!r}: {cls_name} is a {type(cls).__name__}, not a class")
    return cls


def hooks_of(cls: type) -> list[str]:
    """The protocol hooks a class implements (a hook inherited unchanged from the Converter base does nothing)."""
    from_base: dict[str, Any] = {}
    try:
        from phase2_ray.core.converters import Converter

        from_base = {h: getattr(Converter, h) for h in HOOKS}
    except ImportError:  # pragma: no cover - torch missing
        pass
    return [h for h in HOOKS if callable(getattr(cls, h, None)) and getattr(cls, h) is not from_base.get(h)]


def source_of(use: str, cls: type) -> dict:
    """Where a converter's code came from, enough to tell two versions apart: a file's sha256, or a module's file
    sha256 and its distribution's name and version."""
    parts = split_use(use)
    if parts is None:
        raise ValueError(f"{use!r} is a built-in: its spec is specs.builtin_spec's")
    where, _ = parts
    if is_file(where):
        out = {"kind": "file", "path": where, "sha256": sha256_file(where)}
        try:  # where the job's working_dir puts it on another node (the driver's cwd is that working_dir)
            out["relpath"] = str(Path(where).resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            pass
        return out
    mod = sys.modules.get(cls.__module__)
    f = getattr(mod, "__file__", None)
    top = where.split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top) or []
    out: dict[str, Any] = {"kind": "module", "module": where, "sha256": sha256_file(f) if f else None}
    if dists:
        out["package"] = dists[0]
        out["version"] = _version(importlib.metadata.version, dists[0])
    return out


def _version(fn, name: str) -> str | None:
    try:
        return fn(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def resolve(use: str, args: dict | None = None) -> dict:
    """A checked converter spec from what a config names: the class imports, implements at least one hook, and
    takes `args` (it is built once here, so a constructor that refuses them fails now, not in an actor).
    Raises PluginError with one line naming the converter."""
    args = dict(args or {})
    cls = _import(use)
    hooks = hooks_of(cls)
    if not hooks:
        raise PluginError(
            f"converter {use!r}: {cls.__name__} implements none of the hooks {', '.join(HOOKS)} "
            "(see docs/models.md, 'Write your own optimization')"
        )
    try:
        inspect.signature(cls).bind(**args)
    except TypeError as e:
        raise PluginError(
            f"converter {use!r}: args {sorted(args)} do not fit {cls.__name__}{inspect.signature(cls)} ({e})"
        ) from e
    try:
        cls(**args)
    except Exception as e:
        raise PluginError(
            f"converter {use!r}: {cls.__name__}(**{args}) raised {type(e).__name__}: {e}"
        ) from e
    if split_use(use) is None:  # a built-in: the one spec specs.builtin_spec makes (also without torch)
        from phase2_ray.core.specs import builtin_spec

        return builtin_spec(use, args)
    return {
        "name": cls.__name__,
        "use": use,
        "args": args,
        "hooks": hooks,
        "changes_numerics": bool(getattr(cls, "changes_numerics", True)),
        "source": source_of(use, cls),
    }


def load_class(spec: dict) -> type:
    """The class a resolved spec names, in this process."""
    return _import(spec["use"], spec.get("source"))


def ship_paths(specs: list[dict]) -> list[str]:
    """What Ray's runtime_env must carry for these converters to import on any node: each file, and each module
    whose top-level package is not installed (a local package beside the config)."""
    out: list[str] = []
    for s in specs:
        src = s.get("source") or {}
        if src.get("kind") == "file":
            out.append(src["path"])
        elif src.get("kind") == "module" and not src.get("package"):
            top = importlib.import_module(src["module"].split(".")[0])
            f = getattr(top, "__file__", None)
            if f is not None:
                p = Path(f)
                out.append(str(p.parent if p.name == "__init__.py" else p))
    return sorted(set(out))
