"""Experiment tracking (optional): the finished run, logged to MLflow where a team looks for runs.

With `tracking.mlflow_uri` (or MLFLOW_TRACKING_URI) set, the driver logs, after the run directory is written:
the config as params (dotted keys), the headline metrics and every gate's value / pass / margin, per-step training
loss and the val curve as metric histories, the decision as the tag `phase2.decision` (approved | rejected | inconclusive), the
report and plots as artifacts, and with `export.hf` an approved run's candidate models as MLflow models.

Tracking never costs a run: a server that cannot be reached, or a call that fails, is a warning and a line in
the report (report.json `tracking`), and the exit code stays the decision's. Only the driver imports mlflow, and
only when tracking is on."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from phase2_ray.config import Config, ConfigError
from phase2_ray.config.redact import public_uri
from phase2_ray.report.schema import Report
from phase2_ray.runlog import RunLog, error_text

ENV_URI = "MLFLOW_TRACKING_URI"
INSTALL = "pip install -e '.[mlflow]'"
ARTIFACT_SUFFIXES = (".md", ".json", ".html", ".csv")
"""The run directory's report files logged as artifacts (plots/ too); checkpoints and exports are not."""
_BATCH = 900  # MLflow takes at most 1000 metrics (100 params) per log_batch call


def tracking_uri(cfg: Config) -> str | None:
    return cfg.tracking.mlflow_uri or os.environ.get(ENV_URI) or None


def check_tracking(cfg: Config) -> None:
    """An explicit tracking.mlflow_uri without mlflow installed is a config error (exit 2, nothing started).
    MLFLOW_TRACKING_URI alone may be set for other tools: that case is a warning when the run ends."""
    uri = cfg.tracking.mlflow_uri
    if not uri:
        return
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(f"tracking.mlflow_uri is set but mlflow is not installed: {INSTALL}")
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (parsing the port is the check)
    except ValueError as e:
        raise ConfigError(f"tracking.mlflow_uri: not a valid URI ({e})") from None
    if parts.scheme in ("http", "https") and not parts.hostname:
        raise ConfigError(f"tracking.mlflow_uri: {parts.scheme}:// needs a host, e.g. http://127.0.0.1:5000")


def log_run(cfg: Config, report: dict, out_dir: Path, exports: dict[str, Path], log: RunLog) -> dict | None:
    """Logs the finished run; returns what report.json records under `tracking` (None when tracking is off)."""
    uri = tracking_uri(cfg)
    if not uri:
        return None
    info: dict = {
        "backend": "mlflow",
        "uri": public_uri(uri),
        "uri_from": "tracking.mlflow_uri" if cfg.tracking.mlflow_uri else ENV_URI,
        "experiment": cfg.tracking.experiment,
    }
    t0 = time.time()
    if importlib.util.find_spec("mlflow") is None:
        return _warn(log, info, "not installed", f"mlflow is not installed ({INSTALL})")
    try:  # whatever goes wrong (a malformed URI from the environment too), the run's result stands
        down = _unreachable(uri, cfg.tracking.timeout_s)
        if down:
            return _warn(log, info, "unreachable", down)
        with _bounded_requests(cfg.tracking.timeout_s):
            info.update(_log(uri, cfg, report, out_dir, exports))
    except KeyboardInterrupt:
        return _warn(log, info, "interrupted", "Ctrl-C while logging")
    except Exception as e:  # a tracking failure must not cost the run: report it and go on
        return _warn(log, info, "failed", public_uri(error_text(e, 300)))
    info.update(status="logged", seconds=round(time.time() - t0, 2))
    log.event(
        "tracking.logged",
        f"MLflow: run {info['run_id']} in experiment {cfg.tracking.experiment!r} at {info['uri']}",
        run_id=info["run_id"],
    )
    return info


def _warn(log: RunLog, info: dict, status: str, detail: str) -> dict:
    info.update(status=status, detail=detail)
    text = f"MLflow tracking {status}: {detail}; the run is complete and not logged there"
    log.event("tracking.warning", text, status=status)
    print(f"phase2: warning: {text}", file=sys.stderr, flush=True)
    return info


def _unreachable(uri: str, timeout_s: float) -> str | None:
    """Why an HTTP tracking server cannot be reached (None when it answers, or the store is not HTTP): one quick
    request, so a server that is down costs seconds, not MLflow's retries with back-off."""
    if urlsplit(uri).scheme not in ("http", "https"):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=min(timeout_s, 5.0)):  # noqa: S310
            return None
    except urllib.error.HTTPError:
        return None  # it answered; MLflow's own calls say whether it is a tracking server
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        return f"{public_uri(uri)} does not answer ({reason})"


@contextlib.contextmanager
def _bounded_requests(timeout_s: float):
    """MLflow's HTTP client retries with back-off for minutes by default: bound it, unless the user set these."""
    keys = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, round(timeout_s))),
    }
    added = [k for k in keys if k not in os.environ]
    os.environ.update({k: keys[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _log(uri: str, cfg: Config, raw: dict, out_dir: Path, exports: dict[str, Path]) -> dict:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    report = Report.model_validate(raw)  # typed: what is logged is what the schema says the report holds

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise RuntimeError(
            f"experiment {cfg.tracking.experiment!r} is deleted in this store: restore it, or set "
            "tracking.experiment to another name"
        )
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.tracking.experiment, _artifacts(uri))
    approved = report.decision.approved
    tags = {
        "phase2.decision": report.decision.outcome,
        "phase2.run_id": report.run_id,
        "phase2.run_dir": str(Path(out_dir).resolve()),
        "phase2.config_fingerprint": cfg.fingerprint(),
    }
    if report.failure:
        tags["phase2.failure"] = report.failure[:5000]
    if report.init_from:
        tags["phase2.init_from"] = report.init_from.path
    run = client.create_run(exp_id, start_time=int(report.started_at * 1000), run_name=report.run_id)
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        params = [
            Param(k[:250], v[:6000]) for k, v in {**flatten(report.config), **stack_params(report)}.items()
        ]
        metrics = [Metric(k, v, now, 0) for k, v in headline_metrics(report).items()]
        metrics += [Metric(k, v, now, step) for k, step, v in curves(report)]
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i : i + 100])
        for i in range(0, len(metrics), _BATCH):
            client.log_batch(run_id, metrics=metrics[i : i + _BATCH])
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        out_dir = Path(out_dir)
        for f in sorted(out_dir.iterdir()):
            if f.is_file() and f.suffix in ARTIFACT_SUFFIXES:
                client.log_artifact(run_id, str(f))
        if (out_dir / "plots").is_dir():
            client.log_artifacts(run_id, str(out_dir / "plots"), "plots")
        models = _log_models(client, exp_id, run_id, exports) if approved else []
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED" if not report.failure else "FAILED")
    return {"run_id": run_id, "experiment_id": exp_id, "models": models}


def _artifacts(uri: str) -> str | None:
    """A local SQLite store keeps its artifacts beside the database (as `mlflow server` does), not in whatever
    directory the run was started from; other stores keep their own default."""
    parts = urlsplit(uri)
    db = parts.path[1:]  # SQLAlchemy: sqlite:///relative.db, sqlite:////absolute.db
    if parts.scheme != "sqlite" or db in ("", ":memory:"):
        return None
    return (Path(db).resolve().parent / "mlartifacts").as_uri()


def _log_models(client, exp_id: str, run_id: str, exports: dict[str, Path]) -> list[dict]:
    """An approved run's candidates (every exported variant but the baseline) as MLflow models: the Hugging Face
    directory as the model's files, tagged with the run's decision (MLflow's "blessed")."""
    out = []
    for variant, path in exports.items():
        if variant == "baseline":
            continue
        model = client.create_logged_model(
            exp_id,
            name=f"phase2-{variant}",
            source_run_id=run_id,
            tags={"phase2.decision": "approved", "phase2.variant": variant, "format": "huggingface-gpt2"},
            model_type="huggingface-gpt2",
        )
        client.log_model_artifacts(model.model_id, str(path))
        client.finalize_logged_model(model.model_id, "READY")
        out.append({"variant": variant, "model_id": model.model_id, "name": model.name})
    return out


def stack_params(report: Report) -> dict[str, str]:
    """Each trained variant's optimization stack as it ran (`auto`'s choice included): one line, then each
    converter's name, args and source (a file's sha256, a package's version), so two runs' stacks compare."""
    out: dict[str, str] = {}
    for v, t in report.training.items():
        out[f"stack.{v}"] = t.stack or ""
        for i, c in enumerate(t.settings.converters if t.settings else []):
            src = c.source
            out[f"stack.{v}.{i}.name"] = c.name
            out[f"stack.{v}.{i}.args"] = json.dumps(c.args, sort_keys=True)
            out[f"stack.{v}.{i}.source"] = str(src.sha256 or f"{src.package}=={src.version}" if src else None)
    return out


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """The config as MLflow params: one dotted key per leaf, lists and None as text."""
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def _name(*parts: str) -> str:
    """A metric name MLflow accepts (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", ".".join(parts))


def _finite(x) -> float | None:
    if isinstance(x, bool):
        return float(x)
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def headline_metrics(report: Report) -> dict[str, float]:
    """What a dashboard compares across runs: per variant training throughput and losses, the speedup and its
    interval, per served model the latency and throughput figures, and every gate's value, pass and margin."""
    m: dict[str, float | None] = {}
    for v, t in report.training.items():
        for k in ("tokens_per_s", "val_loss", "final_loss", "initial_val_loss", "params", "train_s"):
            m[_name("train", v, k)] = _finite(getattr(t, k))
        m[_name("train", v, "peak_memory_bytes")] = _finite(t.peak_memory.bytes if t.peak_memory else None)
    for v, c in report.comparison.items():
        for k in ("ratio", "ci_low", "ci_high"):
            m[_name("speedup", v, k)] = _finite(getattr(c.speedup, k))
        m[_name("val_loss_delta_pct", v)] = _finite(c.val_loss_delta_pct)
        m[_name("training_memory_ratio", v)] = _finite(c.training_memory.ratio if c.training_memory else None)
    for model, i in report.inference.items():
        for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            summary = getattr(i, k)
            for q in ("p50", "p99"):
                m[_name("serve", model, f"{k}_{q}")] = _finite(getattr(summary, q) if summary else None)
        for k in ("output_tokens_per_s", "success_rate", "peak_memory_mb", "model_memory_mb", "val_loss"):
            m[_name("serve", model, k)] = _finite(getattr(i, k))
    for g in report.decision.gates:
        base = ("gate", g.name, g.variant)
        m[_name(*base, "value")] = _finite(g.value)
        m[_name(*base, "passed")] = float(g.passed)
        m[_name(*base, "margin")] = _finite(g.margin)
    m["approved"] = float(report.decision.approved)
    return {k: v for k, v in m.items() if v is not None}


def curves(report: Report):
    """(metric, step, value): each variant's per-step training loss and its val-loss curve, as histories."""
    for v, t in report.training.items():
        for step, loss in t.loss_curve:
            if _finite(loss) is not None:
                yield _name("train_loss", v), int(step), float(loss)
        for step, loss in t.val_curve:
            if _finite(loss) is not None:
                yield _name("val_loss", v), int(step), float(loss)
