"""Security properties, checked on the code itself and on a running embedded Ray: no deserialisation that can run
code, only atomic artifact writes, loopback by default with a warning otherwise, Ray's token authentication on, and
names that cannot steer paths."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from phase2_ray.config import ConfigError, load_config
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
    from phase2_ray.preflight import warn_if_exposed as _warn_if_exposed

    _warn_if_exposed("the Serve HTTP proxy (serve.host)", "127.0.0.1")
    assert capsys.readouterr().err == ""
    _warn_if_exposed("the Serve HTTP proxy (serve.host)", "0.0.0.0")
    assert "WARNING" in capsys.readouterr().err


def test_embedded_ray_has_token_auth_and_a_loopback_dashboard():
    """The embedded cluster phase2 starts: token authentication on, dashboard on 127.0.0.1 (its own process)."""
    script = """
import json, ray
from phase2_ray.config import load_config
from phase2_ray.session import connect as _connect
from ray._private.authentication.authentication_utils import is_token_auth_enabled
cfg = load_config("configs/smoke.yaml", ["ray.dashboard=true"])
_connect(cfg, None)
print(json.dumps({"token": is_token_auth_enabled(), "dashboard": ray.worker.get_dashboard_url()}))
ray.shutdown()
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["token"] is True
    assert res["dashboard"].split(":")[0] == "127.0.0.1"
