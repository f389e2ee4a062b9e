"""What the driver tells the person (or CI job) watching a run: named events through `logging`, rendered as
text lines, as one JSON object per line (`--json-logs`), or not at all (`--quiet`).

Each event has a stable name (`train.done`, `load.level`, ...) that a program can match, and a sentence for a
person; the JSON form carries both, plus the event's fields."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

LOGGER = logging.getLogger("phase2_ray.run")
MODES = ("text", "json", "quiet")


class _Format(logging.Formatter):
    def __init__(self, mode: str, t0: float) -> None:
        super().__init__()
        self.mode, self.t0 = mode, t0

    def format(self, record: logging.LogRecord) -> str:
        t = record.created - self.t0
        if self.mode == "json":
            fields = getattr(record, "fields", {})
            return json.dumps(
                {
                    "t_s": round(t, 3),
                    "event": getattr(record, "event", "log"),
                    "message": record.getMessage(),
                    **fields,
                },
                default=str,
            )
        return f"[phase2 {t:7.1f}s] {record.getMessage()}"


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (pytest and contextlib swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


class RunLog:
    """The run's progress channel; `mode` is text, json or quiet."""

    def __init__(self, mode: str = "text", t0: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"log mode {mode!r}: allowed {', '.join(MODES)}")
        self.mode = mode
        self.t0 = time.time() if t0 is None else t0
        self._handler = _Stdout()
        self._handler.setFormatter(_Format(mode, self.t0))
        for h in list(LOGGER.handlers):  # one run's channel at a time
            LOGGER.removeHandler(h)
        if mode != "quiet":
            LOGGER.addHandler(self._handler)
        LOGGER.setLevel(logging.INFO)
        LOGGER.propagate = False

    def event(self, name: str, message: str, **fields) -> None:
        LOGGER.info(message, extra={"event": name, "fields": fields})

    @property
    def text(self) -> bool:
        return self.mode == "text"

    @property
    def progress(self) -> str:
        """How training actors show progress: a live bar for a person at a terminal, a plain line per interval
        where no terminal is attached (CI logs, `ray job logs`), nothing when the stream must stay parseable."""
        if self.mode != "text":
            return "off"
        try:
            return "bar" if sys.stdout.isatty() else "lines"
        except (AttributeError, ValueError):  # no stdout, or a closed one
            return "lines"


def error_text(e: BaseException, limit: int = 600) -> str:
    """The exception's last lines without terminal colour codes (Ray wraps remote tracebacks in them)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(e).__name__}: {e}")
    return text[-limit:]


def warn_if_exposed(what: str, host: str) -> None:
    """One line on stderr when a server binds beyond loopback (the user opted in; they should know)."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"phase2: WARNING: {what} binds {host}: reachable from other machines", file=sys.stderr)
