"""What an interrupted run leaves for `phase2 run --resume RUN_DIR`: its config, run id and the last saved training
state of every training run, under RUN_DIR. No Ray here: the driver fetches the states from the store actor and
hands them over as plain dicts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from phase2_ray.config import Config, ConfigError
from phase2_ray.configure import load_config
from phase2_ray.core.atomic import write_atomic
from phase2_ray.core.train import STATE_META, STATE_TENSORS

RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
STATES_DIR = "resume"
INFO_FILE = "info.json"
# Sections that decide what training computes: a resumed run must not change them, or its states would not fit.
FIXED_SECTIONS = ("data", "model", "training", "variants", "ablation", "run_name", "storage")


def write_run_files(out_dir: Path, run_id: str, config_json: dict, init_sha256: dict | None = None) -> None:
    """At the start of a run: what --resume needs to start again as the same run (the config without secrets, and
    the sha256 of model.init_from's files, so a resumed run cannot start from other weights)."""
    run = {"run_id": run_id, **({"init_sha256": init_sha256} if init_sha256 else {})}
    write_atomic(out_dir / RUN_FILE, json.dumps(run))
    write_atomic(out_dir / CONFIG_FILE, json.dumps(config_json, indent=2, sort_keys=True))


def check_init(out_dir: Path, init_sha256: dict | None) -> None:
    """--resume: model.init_from's files must be the ones the run started from (or the run took none)."""
    was = json.loads((out_dir / RUN_FILE).read_text()).get("init_sha256") or {}
    now = init_sha256 or {}
    changed = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
    if changed:
        raise ConfigError(
            f"--resume {out_dir}: model.init_from's files changed since the run started ({', '.join(changed)}): "
            "the variants still to train would start from other weights; start a new run instead"
        )


def _dir_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


def save_states(out_dir: Path, states: dict[str, dict]) -> list[str]:
    """Writes {run key: {"step", "state": {file: bytes}, "info"}} under RUN_DIR/resume/; returns the keys."""
    for key, s in states.items():
        d = out_dir / STATES_DIR / _dir_name(key)
        write_atomic(d / STATE_TENSORS, s["state"][STATE_TENSORS])
        write_atomic(d / STATE_META, s["state"][STATE_META])
        # info.json last: its presence means the state beside it is whole
        write_atomic(d / INFO_FILE, json.dumps({"key": key, "step": s["step"], "info": s["info"]}))
    return sorted(states)


def load_states(out_dir: Path) -> dict[str, dict]:
    """The states save_states wrote (complete ones only), keyed as the store keys them."""
    out = {}
    root = out_dir / STATES_DIR
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if not (d / INFO_FILE).is_file():
            continue
        meta = json.loads((d / INFO_FILE).read_text())
        state = {n: (d / n).read_bytes() for n in (STATE_TENSORS, STATE_META)}
        out[meta["key"]] = {"step": meta["step"], "state": state, "info": meta["info"]}
    return out


def load_resume(run_dir: str | Path, overrides: list[str]) -> tuple[Config, str]:
    """(config, run id) of the run in RUN_DIR, with `overrides` applied to anything but the training sections.
    Raises ConfigError (exit 2) when RUN_DIR is not a resumable run or an override would change training."""
    run_dir = Path(run_dir)
    for name in (RUN_FILE, CONFIG_FILE):
        if not (run_dir / name).is_file():
            raise ConfigError(
                f"--resume {run_dir}: no {name} (pass the directory of a run this version started)"
            )
    saved = load_config(run_dir / CONFIG_FILE)
    if saved.serve.api_key == "<redacted>":  # never written down: take it from PHASE2_API_KEY again
        overrides = ["serve.api_key=null", *overrides]
    cfg = load_config(run_dir / CONFIG_FILE, overrides)
    a, b = saved.model_dump(mode="json"), cfg.model_dump(mode="json")
    changed = [s for s in FIXED_SECTIONS if a.get(s) != b.get(s)]
    if changed:
        raise ConfigError(
            f"--resume: --set may not change {', '.join(changed)} (the saved training states depend on them); "
            "start a new run instead"
        )
    run_id = json.loads((run_dir / RUN_FILE).read_text())["run_id"]
    return cfg, run_id
