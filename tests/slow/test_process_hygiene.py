"""Stopping `phase2 serve` and `phase2 run` with SIGTERM leaves no process behind, and a run whose output is not a
terminal shows plain progress lines instead of bars.

Slow: each test starts its own Ray in a `phase2` subprocess, in a session of its own, so that every process it
starts can be found again, orphans included (Ray starts no sessions of its own here)."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.ray

BAR_FRAGMENTS = ("\r", "%|")  # tqdm redraws its bar after a carriage return; "%|" opens the bar itself


class Phase2:
    """A `phase2` subprocess in its own session, stdout and stderr piped together (so not a terminal)."""

    def __init__(self, *args: str):
        # Bytes, split on "\n" only: text mode would turn the "\r" of a progress bar into a line break.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "phase2_ray", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            with self._cv:
                self.lines.append(raw.decode("utf-8", "replace"))
                self._cv.notify_all()
        with self._cv:
            self.lines.append("")  # end of output
            self._cv.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline, seen = time.time() + timeout, 0
        with self._cv:
            while True:
                for line in self.lines[seen:]:
                    if m := re.search(pattern, line):
                        return m
                seen = len(self.lines)
                if (self.lines and self.lines[-1] == "") or time.time() > deadline:
                    pytest.fail(f"no line matching {pattern!r}; output ends:\n{self.output()[-3000:]}")
                self._cv.wait(timeout=1.0)

    def wait_closed(self, timeout: float) -> None:
        """Until the reader has the whole output (the process has exited)."""
        with self._cv:
            self._cv.wait_for(lambda: self.lines and self.lines[-1] == "", timeout=timeout)

    def output(self) -> str:
        return "".join(self.lines)

    def tree(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def stop(self, sig: int, timeout: float = 120) -> int:
        """Sends `sig` and waits for the exit code; what the driver leaves behind is left for the test to see."""
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        self.wait_closed(timeout=10)
        return rc

    def kill(self) -> None:
        """Whatever is left of its session (only after a failure: the tests want nothing left)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for p in _session(self.proc.pid):
            try:
                p.kill()
            except psutil.Error:
                pass


def _session(sid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                found.append(p)
        except OSError:  # gone meanwhile
            pass
    return found


def _alive(p: psutil.Process) -> bool:
    try:
        # A zombie has exited already; whoever reaps it (init, here) may be late.
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _describe(procs) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} (ppid {p.ppid()}) {' '.join(p.cmdline())[:100]}")
        except psutil.Error:
            pass
    return out


def assert_nothing_left(run: Phase2, tree: list[psutil.Process], within_s: float = 15.0) -> None:
    """Every process the driver had started (recorded before the signal), and any other process of its session,
    exits within `within_s` of the driver: orphaned Ray agents stayed a minute or more."""
    deadline = time.time() + within_s
    while True:
        left = {p.pid: p for p in tree if _alive(p)}
        left.update({p.pid: p for p in _session(run.proc.pid) if _alive(p)})
        if not left or time.time() > deadline:
            break
        time.sleep(0.5)
    assert not left, "left behind:\n" + "\n".join(_describe(left.values()))


def assert_ray_was_there(run: Phase2, tree: list[psutil.Process], dashboard: bool) -> None:
    """What the tree holds before the signal, so that an empty tree afterwards means something."""
    names = {p.name() for p in tree if _alive(p)}
    cmdlines = " ".join(" ".join(p.cmdline()) for p in tree if _alive(p))
    expected = {"raylet", "gcs_server", "ray::DashboardAgent", "ray::RuntimeEnvAgent"}
    assert expected <= names, f"{names} (exit code {run.proc.poll()}); output ends:\n{run.output()[-3000:]}"
    if dashboard:
        assert "dashboard/dashboard.py" in cmdlines


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


def test_sigterm_stops_phase2_serve_and_every_ray_process(run_dir):
    """With the dashboard on: Ray's SIGTERM handler used to abort the driver 3 s in, mid-shutdown."""
    out = run_dir
    serve = Phase2(
        "serve",
        "-c",
        "configs/smoke.yaml",
        "--checkpoints",
        str(out),
        "--port",
        str(free_port()),
        "--set",
        "ray.dashboard=true",
    )
    try:
        serve.wait_for(r"^serving .* at http://127\.0\.0\.1:\d+/v1", timeout=300)
        tree = serve.tree()
        assert_ray_was_there(serve, tree, dashboard=True)
        rc = serve.stop(signal.SIGTERM)
        text = serve.output()
        assert rc == 0, text[-3000:]
        assert "phase2: stopping Serve" in text and "SIGTERM received" not in text, text[-3000:]
        assert_nothing_left(serve, tree)
    finally:
        serve.kill()


def test_sigterm_mid_training_stops_phase2_run_and_every_ray_process(tmp_path):
    steps = 3000  # far more than the test waits for: the signal lands while both actors train
    sets = [f"training.steps={steps}", "training.eval_interval=1000", f"serve.port={free_port()}"]
    run = Phase2(
        "run",
        "-c",
        "configs/smoke.yaml",
        "--output",
        str(tmp_path / "run"),
        *(a for s in sets for a in ("--set", s)),
    )
    try:
        # The first periodic progress line (10 s into training): the actors are mid-run.
        line = rf"\[(baseline|optimized) seed 1337\] step (\d+)/{steps} loss \d+\.\d+ [\d,]+ tok/s"
        m = run.wait_for(line, timeout=300)
        assert int(m.group(2)) < steps
        tree = run.tree()
        assert_ray_was_there(run, tree, dashboard=False)
        assert any(p.name().startswith("ray::TrainerActor") for p in tree), _describe(tree)
        rc = run.stop(signal.SIGTERM)
        text = run.output()
        assert rc == 3, text[-3000:]
        assert "interrupted: stopping actors and Serve" in text and "SIGTERM received" not in text
        assert not [f for f in BAR_FRAGMENTS if f in text], text[-3000:]
        assert_nothing_left(run, tree)
    finally:
        run.kill()
