"""The pipeline as a Ray job: `ray start --head` with token authentication on, `ray job submit --working-dir .`,
the report's path and decision in the job's logs. The head is this test's own (its own ports and temp dir) and is
stopped with everything it started."""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.ray
BIN = Path(sys.executable).parent


@pytest.fixture
def head():
    """A token-authenticated head on free ports, as `ray start --head --block` (so it and all it starts are this
    process's descendants, and stop with it)."""
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        # the job's entrypoint runs with the head's PATH: make `python` this environment's
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    dash = free_port()
    # short: Ray's Unix sockets live under it, and socket paths are limited to ~107 bytes
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}", f"--dashboard-port={dash}",
        "--dashboard-host=127.0.0.1", "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}", f"--temp-dir={temp_dir}",
        # the agents' fixed default ports (52365, ...) are taken when this test session already runs a cluster:
        # the head's job agent would then never come up ("No available agent to submit job")
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        ok = subprocess.run(
            [str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True, timeout=60
        )
        if ok.returncode == 0:
            break
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail("the head did not come up in 120 s")
    try:
        yield address, env
    finally:
        family = [proc, *psutil.Process(proc.pid).children(recursive=True)]
        for p in family:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family, timeout=5)
        for p in alive:
            p.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submitted_job_runs_the_pipeline_and_logs_its_decision(head, tmp_path):
    address, env = head
    out = tmp_path / "run"
    submit = [
        str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
        "python", "-m", "phase2_ray", "run", "-c", "configs/smoke.yaml", "--output", str(out), "--json-logs",
        "--set", f"serve.port={free_port()}", "--set", "validation.replica_sweep=[]",
        "--set", "validation.concurrency=[1]", "--set", "validation.requests=4",
        # the speed trial at its minimum: this test reads the job's decision, not how it was measured
        "--set", "speed_trial.replicates=2", "--set", "speed_trial.pairs=2",
    ]  # fmt: skip
    t0 = time.time()
    for _ in range(10):
        done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
        logs = done.stdout + done.stderr
        # The dashboard answers (the fixture waited for that) a little before the node's job agent does.
        if "No available agent to submit job" not in logs:
            break
        time.sleep(1)
    assert (out / "report.json").is_file(), logs[-3000:]
    report = json.loads((out / "report.json").read_text())
    decision = "APPROVED" if report["decision"]["approved"] else "REJECTED"
    # the job's status carries the gate: `phase2 run` exits 1 on REJECTED, so the job (and `ray job submit`) fails
    assert (done.returncode == 0) == report["decision"]["approved"], logs[-3000:]
    assert f"2d: decision {decision}" in logs and str(out / "report.md") in logs
    # it ran on the submitted head: 2 CPUs, and nothing of .venv / results was uploaded (.rayignore)
    assert report["environment"]["ray_cluster_resources"]["CPU"] == 2.0
    assert time.time() - t0 < 600
    # without the token the same cluster refuses us
    refused = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", address],
        env={**env, "RAY_AUTH_TOKEN": "wrong"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "token" in (refused.stdout + refused.stderr).lower()
