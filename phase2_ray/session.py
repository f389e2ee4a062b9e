"""One command's hold on Ray: join RAY_ADDRESS / --address or start an embedded local Ray, and make SIGTERM
(ray job stop, a CI timeout, kill) interrupt the driver as Ctrl-C does, so that it cleans up and reports."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

import ray

from phase2_ray.config import Config
from phase2_ray.runlog import warn_if_exposed

NAMESPACE = "phase2"


def connect(cfg: Config, address: str | None, text_log: bool = True) -> str | None:
    """Joins RAY_ADDRESS / --address ("joined"), or starts an embedded local Ray ("embedded"); None when this
    process was connected already. Whoever connects disconnects; only an embedded cluster may be torn down."""
    if ray.is_initialized():
        return None
    target = address or os.environ.get("RAY_ADDRESS")
    # Actor output (progress bars, per-step lines) reaches the terminal only in text mode.
    kwargs: dict = {"namespace": NAMESPACE, "log_to_driver": text_log}
    if not text_log:
        kwargs["logging_level"] = logging.WARNING  # Ray's own INFO lines would break a parseable stream
    if target:
        kwargs["address"] = target
    else:
        if cfg.ray.dashboard:
            warn_if_exposed("the Ray dashboard (ray.dashboard_host)", cfg.ray.dashboard_host)
        kwargs.update(
            # Not None: ray.init() would join a `ray start` cluster running on this machine (anyone's), and this
            # run would take it for its own embedded one.
            address="local",
            include_dashboard=cfg.ray.dashboard,
            dashboard_host=cfg.ray.dashboard_host,
            num_cpus=cfg.ray.num_cpus,
        )
    from phase2_ray.stacks import converters_env

    # A user's converter files and local packages reach every actor and replica, on any node, with the job
    # (Ray takes local py_modules at the job level only); a process connected already loads them by path.
    env = converters_env(cfg)
    if env:
        kwargs["runtime_env"] = env
    try:
        ray.init(**kwargs)
    except ValueError as e:
        # Inside `ray job submit` with py_modules of its own, Ray refuses a second set: the job's working_dir then
        # carries the converter files (workers find them at their path relative to it).
        if not env or "py_modules" not in str(e):
            raise
        print(
            f"phase2: the job's runtime_env already sets py_modules ({e}); converter files travel in its "
            "working_dir instead",
            file=sys.stderr,
            flush=True,
        )
        kwargs.pop("runtime_env")
        ray.init(**kwargs)
    return "joined" if target else "embedded"


def raise_on_sigterm():
    """SIGTERM (ray job stop, a CI timeout, kill) interrupts the driver like Ctrl-C does, so that it cleans up and
    reports; returns the previous handler. Only the main thread can set handlers.

    Call it after ray.init(): the driver's core worker puts abseil's failure handler on SIGTERM at the C level,
    which arms a 3 s alarm that abort()s the process ("Aborted"). Stopping Serve and Ray takes longer than
    that, so the driver died before ray.shutdown(); the kernel then SIGKILLed the raylet and GCS it started
    (PR_SET_PDEATHSIG), and the raylet's DashboardAgent and RuntimeEnvAgent, finding no "SIGTERM" in the
    raylet's log, blocked for a minute or more reporting its death to the dead GCS, orphaned. Setting a
    Python handler replaces the C-level one, alarm included."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


def restore_sigterm(previous) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_held(doing: str):
    """Ctrl-C and SIGTERM are noted, not raised, inside: one that cut ray.shutdown() short would leave the Ray
    processes this driver started without a parent. (SIGKILL still works for whoever must stop it now.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum, frame):
        print(f"phase2: {doing}; signal {signum} ignored until that is done", file=sys.stderr, flush=True)

    held = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in held.items():
            # None: a handler set outside Python, which cannot be put back; the default still stops the process.
            signal.signal(s, signal.SIG_DFL if h is None else h)
