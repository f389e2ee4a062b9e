"""A `phase2` command in a subprocess of its own session, and checks on the processes it leaves behind: what the
interrupt and process-hygiene tests share. Ray starts no sessions of its own here, so every process the command
starts can be found again, orphans included."""

import os
import re
import subprocess
import sys
import threading
import time

import psutil
import pytest

from tests.conftest import ROOT

BAR_FRAGMENTS = ("\r", "%|")  # tqdm redraws its bar after a carriage return; "%|" opens the bar itself


class Phase2:
    """A `phase2` subprocess in its own session, stdout and stderr piped together (so not a terminal)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        # Bytes, split on "\n" only: text mode would turn the "\r" of a progress bar into a line break.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "phase2_ray", *args],
            cwd=ROOT,
            env=env,
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


def describe(procs) -> list[str]:
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
    assert not left, "left behind:\n" + "\n".join(describe(left.values()))


def assert_ray_was_there(run: Phase2, tree: list[psutil.Process], dashboard: bool) -> None:
    """What the tree holds before the signal, so that an empty tree afterwards means something."""
    names = {p.name() for p in tree if _alive(p)}
    cmdlines = " ".join(" ".join(p.cmdline()) for p in tree if _alive(p))
    expected = {"raylet", "gcs_server", "ray::DashboardAgent", "ray::RuntimeEnvAgent"}
    assert expected <= names, f"{names} (exit code {run.proc.poll()}); output ends:\n{run.output()[-3000:]}"
    if dashboard:
        assert "dashboard/dashboard.py" in cmdlines
