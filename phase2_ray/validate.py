"""`phase2 validate`: stages 2c and 2d alone, on the config's endpoints, with no training.

The endpoints are `baseline` and one or more candidates, each an OpenAI-compatible server (its URL and model
name) or `self: VARIANT`, this run's own Serve deployment of model.init_from's weights. They are measured exactly
as `phase2 run` measures its trained models (same prompts, seeds and arrivals, in interleaved rounds), and the
report, decision, exit codes, MLflow and `phase2 compare` are the same."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from phase2_ray import preflight
from phase2_ray.config import Config, ConfigError
from phase2_ray.config.redact import redacted_config
from phase2_ray.core import checkpoint as ckpt
from phase2_ray.dataprep import PreparedData, prepare_data
from phase2_ray.loadtest.endpoints import load_tokenizer
from phase2_ray.pipeline import RunState, _report, measure, release_ray
from phase2_ray.resume import write_run_files
from phase2_ray.runlog import RunLog
from phase2_ray.session import connect, raise_on_sigterm


def run_validate(
    cfg: Config, *, output: str | Path | None = None, address: str | None = None, log_mode: str = "text"
) -> tuple[int, Path]:
    """2c + 2d on `cfg.endpoints`; returns (exit code, path of report.md). Raises ConfigError (exit 2) before Ray
    starts for a config, or an endpoint, that cannot be validated."""
    log = RunLog(log_mode)
    run_id = f"{cfg.run_name}-validate-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    out_dir = Path(output) if output else Path("results") / run_id
    preflight.check_writable(out_dir)
    own = sorted(n for n, e in cfg.endpoints.items() if not e.external)
    if own and cfg.model.init_from is None:
        raise ConfigError(
            f"endpoints {own}: `self` in phase2 validate serves model.init_from's weights (nothing is trained): "
            "set model.init_from to a Hugging Face directory, an export or a run's checkpoint"
        )
    # an int8 copy of `optimized` is phase2 run's; validate serves exactly the endpoints it is given
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"int8": False})})
    preflight.check_before_start(cfg, address, trains=False)
    probes = preflight.check_endpoints(cfg, "validate")
    data = prepare_data(cfg, prompt_tokenizer=_prompt_tokenizer(cfg))
    run = RunState(cfg, run_id, out_dir, log, data)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--output {out_dir}: cannot create it ({e.strerror})") from e
    write_run_files(out_dir, run_id, redacted_config(cfg.model_dump(mode="json")))
    log.event("run.start", f"validate {run_id} -> {out_dir}", run_id=run_id)
    for name, p in probes.items():
        e = cfg.endpoints[name]
        log.event(
            "endpoint.ready",
            f"endpoint {name}: {e.url} serves {e.model!r} ({e.api}; stream ends with "
            f"{'[DONE]' if p['done'] else 'a finish_reason, no [DONE]'}; usage {'sent' if p['usage'] else 'not sent'})",
            endpoint=name,
        )
    log.event("data.ready", f"data: {data.stage.detail}")
    run.stages.append(data.stage)
    servable = {n: _init_checkpoint(cfg, data) for n in own}
    for name, files in servable.items():
        ckpt.save_dir(files, out_dir / "checkpoints" / name)
    started = connect(cfg, address, log.text)
    previous = raise_on_sigterm()
    try:
        measure(run, servable, {}, own_cluster=started == "embedded")
    except KeyboardInterrupt:
        run.interrupted = time.time()
        run.failure = "interrupted (SIGINT/SIGTERM): INCOMPLETE"
        for s in run.stages:
            if s.status == "running":
                s.status, s.end, s.detail = "interrupted", run.interrupted, "interrupted"
    finally:
        release_ray(run, started, previous)
    return _report(run, resumed=False)


def _prompt_tokenizer(cfg: Config):
    """Prompts are sized in the baseline's tokens: its tokenizer when given (else the first candidate's that is),
    else model.init_from's or one trained on the corpus (prepare_data's own)."""
    base = cfg.endpoints["baseline"]
    order = [base, *(e for n, e in cfg.endpoints.items() if n != "baseline")]
    if not base.external:
        return None  # the served weights' own tokenizer
    path = next((e.tokenizer for e in order if e.external and e.tokenizer), None)
    return load_tokenizer(path) if path else None


def _init_checkpoint(cfg: Config, d: PreparedData) -> dict[str, bytes]:
    """model.init_from's weights as a checkpoint the Serve engine loads (unchanged: nothing is trained)."""
    from phase2_ray.core.model import GPTConfig, build_model

    model = build_model(GPTConfig(**cfg.model.gpt_fields(d.vocab_size)))
    model.load_state_dict(d.init.state, strict=True)
    meta = {
        "run_id": None,
        "config": redacted_config(cfg.model_dump(mode="json")),
        "variant": "init_from",
        "step": 0,
        "model": cfg.model.gpt_fields(d.vocab_size),
        "optimizations": [],
    }
    if d.init.chat_template:
        meta["chat_template"] = d.init.chat_template
    return ckpt.checkpoint_files(model, meta, d.tokenizer_json)
