"""Self-contained checkpoints: safetensors weights + JSON metadata + the tokenizer, each checksummed. No pickle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from tokenizers import Tokenizer

from phase2_ray.core.atomic import write_atomic
from phase2_ray.core.model import CausalLM, GPTConfig, build_model

WEIGHTS = "model.safetensors"
META = "meta.json"
TOKENIZER = "tokenizer.json"
FORMAT_VERSION = 1
_COMPILED_PREFIX = "_orig_mod."


class ChecksumError(ValueError):
    """A checkpoint file does not match the sha256 recorded when it was written."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with torch.compile's `_orig_mod.` prefixes removed, so it loads into an uncompiled GPT."""
    return {
        k.replace(_COMPILED_PREFIX, ""): v.detach().cpu().contiguous() for k, v in model.state_dict().items()
    }


def checkpoint_files(model: torch.nn.Module, meta: dict, tokenizer_json: str) -> dict[str, bytes]:
    """The checkpoint as {file name: bytes}: what travels through the object store and lands on disk."""
    state = plain_state_dict(model)
    # safetensors refuses tensors that share storage; keep the first name of each tied group and record the rest.
    kept: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    by_ptr: dict[int, str] = {}
    for k in sorted(state):
        ptr = state[k].untyped_storage().data_ptr()
        if ptr in by_ptr:
            tied[k] = by_ptr[ptr]
        else:
            by_ptr[ptr] = k
            kept[k] = state[k]
    weights = st_save(kept)
    tok = tokenizer_json.encode("utf-8")
    full_meta = {
        **meta,
        "format_version": FORMAT_VERSION,
        "tied": tied,
        "sha256": {WEIGHTS: _sha256(weights), TOKENIZER: _sha256(tok)},
    }
    return {
        WEIGHTS: weights,
        TOKENIZER: tok,
        META: json.dumps(full_meta, indent=2, sort_keys=True).encode("utf-8"),
    }


def read_checkpoint(files: dict[str, bytes]) -> tuple[dict[str, torch.Tensor], dict, Tokenizer]:
    """Verifies every checksum, then returns the state dict (tied names filled in), metadata and tokenizer."""
    missing = {WEIGHTS, META, TOKENIZER} - set(files)
    if missing:
        raise FileNotFoundError(f"checkpoint lacks {sorted(missing)}")
    try:
        meta = json.loads(files[META])
    except ValueError as e:
        raise ChecksumError(f"{META} is not valid JSON: {e}") from e
    for name in (WEIGHTS, TOKENIZER):
        want = meta.get("sha256", {}).get(name)
        got = _sha256(files[name])
        if want != got:
            raise ChecksumError(f"{name}: sha256 {got[:12]}… does not match recorded {str(want)[:12]}…")
    state = st_load(files[WEIGHTS])
    for alias, source in meta.get("tied", {}).items():
        state[alias] = state[source]
    return state, meta, Tokenizer.from_str(files[TOKENIZER].decode("utf-8"))


def load_checkpoint(files: dict[str, bytes]) -> tuple[CausalLM, dict, Tokenizer]:
    """Verifies every checksum, then rebuilds a plain (uncompiled, fp32) GPT, its metadata and tokenizer."""
    state, meta, tok = read_checkpoint(files)
    model = build_model(GPTConfig(**meta["model"]))
    model.load_state_dict(state, strict=True)
    return model.eval(), meta, tok


def save_dir(files: dict[str, bytes], directory: str | Path) -> Path:
    """Writes each checkpoint file atomically; the metadata goes last, so a present meta.json means complete."""
    directory = Path(directory)
    for name in sorted(files, key=lambda n: n == META):
        write_atomic(directory / name, files[name])
    return directory


def read_dir(directory: str | Path) -> dict[str, bytes]:
    directory = Path(directory)
    return {n: (directory / n).read_bytes() for n in (WEIGHTS, META, TOKENIZER)}
