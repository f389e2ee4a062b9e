"""Security properties of a running embedded Ray (its own process): Ray's token authentication on and a loopback
dashboard. The code scans are in tests/unit/test_security.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.ray


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
