"""Security properties, checked on the code itself: no deserialisation that can run code, only atomic artifact
writes, loopback by default with a warning otherwise, and names that cannot steer paths. Ray's token authentication
on a running embedded Ray is tests/integration/test_security.py."""

import ast

import pytest

from phase2_ray.config import ConfigError
from phase2_ray.configure import load_config
from tests.conftest import ROOT

PACKAGE = ROOT / "phase2_ray"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            yield node, owner, name


def test_no_code_running_deserialisation_in_the_package():
    bad = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                bad += [
                    f"{path.name}: imports {m}"
                    for m in mods
                    if m.split(".")[0] in ("pickle", "dill", "marshal", "shelve")
                ]
        for node, owner, name in _calls(tree):
            if owner == "torch" and name == "load":
                kw = {k.arg: k.value for k in node.keywords}
                if not (
                    isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                ):
                    bad.append(f"{path.name}:{node.lineno}: torch.load without weights_only=True")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all"):
                bad.append(f"{path.name}:{node.lineno}: yaml.{name}")
            if isinstance(node.func, ast.Name) and name in ("eval", "exec"):
                bad.append(f"{path.name}:{node.lineno}: {name}()")
    assert not bad, bad


def test_every_file_write_goes_through_write_atomic():
    """Artifacts appear whole or not at all: no plain open(..., "w"), write_text or write_bytes in the package."""
    bad = []
    for path in SOURCES:
        if path.name == "atomic.py":
            continue
        for node, _, name in _calls(ast.parse(path.read_text())):
            if name in ("write_text", "write_bytes"):
                bad.append(f"{path.name}:{node.lineno}: {name}")
            if name == "open" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                if set(str(node.args[1].value)) & set("wax+"):
                    bad.append(f"{path.name}:{node.lineno}: open(..., {node.args[1].value!r})")
    assert not bad, bad


@pytest.mark.parametrize("override", ["run_name=../../etc", "run_name=a/b", "variants.x/y.bf16=true"])
def test_names_that_end_up_in_paths_cannot_escape(override):
    with pytest.raises(ConfigError):
        load_config(ROOT / "configs" / "smoke.yaml", [override])


def test_exposed_bind_addresses_warn(capsys):
    from phase2_ray.runlog import warn_if_exposed as _warn_if_exposed

    _warn_if_exposed("the Serve HTTP proxy (serve.host)", "127.0.0.1")
    assert capsys.readouterr().err == ""
    _warn_if_exposed("the Serve HTTP proxy (serve.host)", "0.0.0.0")
    assert "WARNING" in capsys.readouterr().err
