"""`phase2 serve` serves a run directory's checkpoints behind the API key from PHASE2_API_KEY (and `serve run`'s
builder takes the same directory); stopping it with SIGTERM leaves no process behind; the embedded Ray it started had
token authentication on and its dashboard on 127.0.0.1 (the code scans are tests/unit/test_security.py). `phase2 run`
stopped mid-training is tests/slow/test_interrupt.py.

Slow: the command starts its own Ray (dashboard on) in a subprocess, in a session of its own (tests/slow/procs.py)."""

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port
from tests.slow.procs import Phase2, assert_nothing_left, assert_ray_was_there

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_corpus):
    """A run directory holding what `phase2 serve` reads: a checkpoint per variant (tiny models, written directly;
    how they were trained does not matter here)."""
    import torch

    from phase2_ray.core.checkpoint import checkpoint_files, save_dir
    from phase2_ray.core.model import GPT, GPTConfig

    _, tok, *_ = tiny_corpus
    cfg = dict(vocab_size=tok.get_vocab_size(), block_size=128, n_layer=1, n_head=2, d_model=16, dropout=0.0)
    out = tmp_path_factory.mktemp("hygiene") / "run"
    for i, variant in enumerate(("baseline", "optimized")):
        torch.manual_seed(i)
        files = checkpoint_files(GPT(GPTConfig(**cfg)), {"variant": variant, "model": cfg}, tok.to_str())
        save_dir(files, out / "checkpoints" / variant)
    return out


def test_serve_run_builder_takes_a_run_directory(run_dir):
    """`serve run phase2_ray.serving.build:app config=... checkpoints=RUN_DIR` builds the same application."""
    from phase2_ray.serving.build import app

    assert app({"config": str(ROOT / "configs" / "smoke.yaml"), "checkpoints": str(run_dir)}) is not None


def test_phase2_serve_serves_and_sigterm_stops_every_ray_process(run_dir):
    """With the dashboard on: Ray's SIGTERM handler used to abort the driver 3 s in, mid-shutdown. The environment
    is bare (no RAY_AUTH_MODE, no RAY_ADDRESS): token authentication is what the embedded cluster turns on."""
    # The API key comes from the environment, as a secret would (never the config file).
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PHASE2_API_KEY": "s3cret"}
    serve = Phase2(
        "serve",
        "-c",
        "configs/smoke.yaml",
        "--checkpoints",
        str(run_dir),
        "--port",
        str(free_port()),
        "--set",
        "ray.dashboard=true",
        env=env,
    )
    try:
        url = serve.wait_for(r"^serving .* at (http://127\.0\.0\.1:\d+)/v1", timeout=300).group(1)
        body = {"model": "baseline", "prompt": "def", "max_tokens": 3}
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=30)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            assert httpx.get(f"{url}/v1/models", headers=headers, timeout=30).status_code == 401
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200  # probes need no key
        key = {"Authorization": "Bearer s3cret"}
        models = [m["id"] for m in httpx.get(f"{url}/v1/models", headers=key, timeout=30).json()["data"]]
        assert models == ["baseline", "optimized", "optimized-int8"]
        r = httpx.post(f"{url}/v1/completions", json=body, headers=key, timeout=30)
        assert r.json()["usage"]["completion_tokens"] == 3
        tree = serve.tree()
        assert_ray_was_there(serve, tree, dashboard=True)
        (dash,) = [p for p in tree if "dashboard/dashboard.py" in " ".join(p.cmdline())]
        args = dict(a.split("=", 1) for a in dash.cmdline() if a.startswith("--") and "=" in a)
        assert args["--host"] == "127.0.0.1"
        url = f"http://127.0.0.1:{args['--port']}/api/version"
        # what the README says to paste into the dashboard's token prompt
        token = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "get-auth-token"],
            capture_output=True,
            text=True,
            env=env,
        ).stdout.strip()
        assert httpx.get(url, timeout=10).status_code == 401
        assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
        rc = serve.stop(signal.SIGTERM)
        text = serve.output()
        assert rc == 0, text[-3000:]
        assert "phase2: stopping Serve" in text and "SIGTERM received" not in text, text[-3000:]
        assert_nothing_left(serve, tree)
    finally:
        serve.kill()
