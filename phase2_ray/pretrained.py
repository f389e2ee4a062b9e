"""`model.init_from`: both variants start from weights the user already has, a local Hugging Face directory (GPT-2,
Llama, Qwen2 or Mistral) or a phase2_ray checkpoint, instead of a seeded init.

Two steps, both on the driver before Ray starts, so every mistake is a config error (exit 2) naming the field:
`resolve_config` reads the checkpoint's shape (json headers, and a GPT-2's linear biases) into the config, refusing
an explicit `model.*` or `data.vocab_size` that disagrees; `load_init` reads the weights (safetensors only, never
pickle) and the tokenizer, checks every tensor's shape, and records what the run started from (path + sha256)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import ValidationError

from phase2_ray.config import Config, ConfigError, format_errors
from phase2_ray.config.loading import SHAPE_KEYS

HF_WEIGHTS, HF_INDEX, HF_CONFIG, TOKENIZER = (
    "model.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "tokenizer.json",
)
SHAPE = ("arch", "n_layer", "n_head", "d_model", "bias")
"""model.* keys that must equal the checkpoint's (block_size may be lower; dropout is free)."""
LLAMA_SHAPE = tuple(k for k in SHAPE_KEYS if k != "block_size")
"""The same for a llama: every shape key a checkpoint gives (config.loading.SHAPE_KEYS) but the context."""


def shape_keys(arch: str) -> tuple[str, ...]:
    return LLAMA_SHAPE if arch == "llama" else SHAPE


@dataclass
class InitSource:
    """Where a run's initial weights are and what shape they have (GPTConfig's fields)."""

    path: Path
    kind: str
    """"hf-gpt2", "hf-llama", "hf-qwen2", "hf-mistral" (a Hugging Face directory) or "phase2" (a phase2_ray
    checkpoint)."""
    shape: dict
    weights: list[Path]
    tokenizer: Path
    window: int | None = None
    """A sliding-window checkpoint's window (llama_format.check_window holds it against the context)."""


def _fail(path: str | Path, why: str) -> ConfigError:
    return ConfigError(f"model.init_from {path}: {why}")


def locate(path: str) -> InitSource:
    """The checkpoint at `path` and its shape. Raises ConfigError saying what is missing or cannot map."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise _fail(path, "no such directory")
    if (p / "meta.json").is_file() or (p / "checkpoints" / "optimized" / "meta.json").is_file():
        return _phase2(path, p if (p / "meta.json").is_file() else p / "checkpoints" / "optimized")
    if (p / "checkpoints").is_dir():  # a run directory (its config.json is the run's, not a model's)
        found = sorted(c.name for c in (p / "checkpoints").iterdir() if (c / "meta.json").is_file())
        raise _fail(
            path, f"a run without an optimized checkpoint: name one of {found} (RUN_DIR/checkpoints/NAME)"
        )
    if (p / HF_CONFIG).is_file():
        return _hf(path, p)
    raise _fail(
        path,
        "neither a Hugging Face directory (config.json) nor a phase2_ray checkpoint (meta.json) or run directory",
    )


def _read_json(path: str, f: Path) -> dict:
    try:
        out = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _fail(path, f"{f.name} is not readable JSON ({e})") from e
    if not isinstance(out, dict):
        raise _fail(path, f"{f.name} is not a JSON object")
    return out


def _phase2(path: str, d: Path) -> InitSource:
    meta = _read_json(path, d / "meta.json")
    model = meta.get("model") or {}
    keys = ("vocab_size", "block_size", "n_layer", "n_head", "d_model")
    if not all(k in model for k in keys):
        raise _fail(path, f"meta.json has no model shape ({', '.join(keys)})")
    from phase2_ray.core.specs import GPTConfig

    full = asdict(GPTConfig(**{k: v for k, v in model.items() if k != "dropout"}))  # older metas: defaults
    shape = {k: full[k] for k in ("vocab_size", "block_size", *shape_keys(full["arch"]))}
    return InitSource(d, "phase2", shape, [d / HF_WEIGHTS], d / TOKENIZER)


def _hf(path: str, d: Path) -> InitSource:
    from phase2_ray.core import llama_format
    from phase2_ray.core.gpt2_format import shape_from_gpt2_config

    c = _read_json(path, d / HF_CONFIG)
    try:
        if c.get("model_type") == "gpt2":
            shape = shape_from_gpt2_config(c)
        else:
            shape = llama_format.shape_from_config(c)
    except (ValueError, TypeError, KeyError) as e:  # TypeError: a wrong type, e.g. "n_layer": null
        why = f"has no {e}" if isinstance(e, KeyError) else str(e)
        raise _fail(path, f"config.json: {why}") from e
    if (d / HF_WEIGHTS).is_file():
        weights = [d / HF_WEIGHTS]
    elif (d / HF_INDEX).is_file():
        shards = sorted(set(_read_json(path, d / HF_INDEX).get("weight_map", {}).values()))
        weights = [d / s for s in shards]
        missing = [w.name for w in weights if not w.is_file()]
        if missing or not weights:
            raise _fail(path, f"{HF_INDEX} names shards that are not there: {missing or 'none listed'}")
    elif any(d.glob("*.bin")) or any(d.glob("*.pt")):
        raise _fail(
            path,
            "holds pickle weights only (*.bin / *.pt), which phase2_ray never loads: save them as safetensors "
            "(transformers' save_pretrained does by default)",
        )
    else:
        raise _fail(path, f"has no {HF_WEIGHTS}")
    if not (d / TOKENIZER).is_file():
        raise _fail(
            path,
            f"has no {TOKENIZER} (a fast tokenizer's file; AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR) "
            "writes one)",
        )
    if shape.get("arch", "gpt2") == "gpt2":
        shape |= {"arch": "gpt2", "bias": _any_nonzero_bias(weights), "model_type": "gpt2"}
    window = shape.pop("sliding_window", None)
    return InitSource(d, f"hf-{shape.pop('model_type')}", shape, weights, d / TOKENIZER, window)


def _any_nonzero_bias(weights: list[Path]) -> bool:
    """Whether the checkpoint's linear layers have biases our bias-free model would lose (phase2_ray's own
    exports write zeros: those come back bias-free and keep the faster path)."""
    from safetensors import safe_open

    from phase2_ray.core.gpt2_format import LAYERS

    for w in weights:
        try:
            with safe_open(str(w), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    short = name.removeprefix("transformer.")
                    if short.startswith("h.") and any(short.endswith(f".{t}.bias") for _, t in LAYERS):
                        if f.get_tensor(name).any():
                            return True
        except Exception as e:  # safetensors raises its own error type for a truncated or foreign file
            raise _fail(w.parent, f"{w.name} is not a readable safetensors file ({e})") from e
    return False


def resolve_config(cfg: Config) -> Config:
    """`cfg` with the model's shape (and data.vocab_size) taken from model.init_from; unchanged without it.

    Raises ConfigError naming an explicit key that disagrees with the checkpoint, or any check the config then
    fails (e.g. prompt + output no longer fitting a smaller block_size)."""
    m = cfg.model
    if m.init_from is None:
        return cfg
    src = locate(m.init_from)
    given, wrong = m.model_fields_set, []
    keys = shape_keys(src.shape["arch"])
    mine = m.gpt_fields(0)
    for key in keys:
        if key in given and mine[key] != src.shape[key]:
            wrong.append(f"model.{key}: {mine[key]!r} does not match model.init_from's {src.shape[key]!r}")
    if "block_size" in given and m.block_size > src.shape["block_size"]:
        wrong.append(
            f"model.block_size: {m.block_size} exceeds model.init_from's {src.shape['block_size']} positions"
        )
    if "vocab_size" in cfg.data.model_fields_set and cfg.data.vocab_size != src.shape["vocab_size"]:
        wrong.append(
            f"data.vocab_size: {cfg.data.vocab_size} does not match model.init_from's vocabulary of "
            f"{src.shape['vocab_size']}"
        )
    if wrong:
        keys = ", ".join(w.split(":")[0] for w in wrong)
        raise ConfigError(
            f"{'; '.join(wrong)} ({m.init_from}): leave {keys} out of the config, or --set each to null, to "
            "take the checkpoint's"
        )
    # Only what was set: a default stays a default (the load generator tells a set top_k from the default one).
    raw = cfg.model_dump(mode="json", exclude_unset=True, by_alias=True)
    block = m.block_size if "block_size" in given else src.shape["block_size"]
    if src.shape["arch"] == "llama" and "block_size" not in given:
        from phase2_ray.core.llama_format import DEFAULT_CONTEXT

        block = min(block, DEFAULT_CONTEXT)
    try:
        from phase2_ray.core.llama_format import check_window

        check_window(src.window, block)
    except ValueError as e:
        raise _fail(m.init_from, str(e)) from None
    # The resolved path: a resumed run, started from another directory, finds the same checkpoint.
    raw["model"].update({k: src.shape[k] for k in keys}, block_size=block, init_from=str(src.path.resolve()))
    raw.setdefault("data", {})["vocab_size"] = src.shape["vocab_size"]
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{format_errors(e)} (with model.init_from's model shape)") from None


@dataclass
class InitWeights:
    state: dict
    """Our state dict (fp32, the tied head included), sized to the config's block_size."""
    tokenizer: object
    info: dict
    """What report.json records under `init_from`: path, kind, shape, sha256 of each file read."""
    chat_template: str | None = None
    """The checkpoint's own chat template (tokenizer_config.json, or a phase2 checkpoint's meta), kept with the
    trained checkpoints so that chat requests see the conversation as the model was taught it."""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_init(cfg: Config) -> InitWeights | None:
    """The weights and tokenizer model.init_from names, checked against the config's shape. Raises ConfigError."""
    if cfg.model.init_from is None:
        return None
    import torch
    from safetensors.torch import load_file as st_load_file
    from tokenizers import Tokenizer

    from phase2_ray.core import checkpoint as ckpt
    from phase2_ray.core.gpt2_format import from_gpt2
    from phase2_ray.core.llama_format import from_hf
    from phase2_ray.core.model import GPTConfig, build_model

    m = cfg.model
    src = locate(m.init_from)
    try:
        if src.kind == "phase2":  # its own checksums are verified on read
            files = ckpt.read_dir(src.path)
            sha = {name: hashlib.sha256(b).hexdigest() for name, b in files.items() if name != ckpt.META}
            state, _, tok = ckpt.read_checkpoint(files)
        else:
            # Hashed as a stream and memory-mapped: a 500 MB GPT-2 is not held twice on the driver.
            sha = {str(f.relative_to(src.path)): _sha256_file(f) for f in [*src.weights, src.tokenizer]}
            tensors: dict = {}
            for f in src.weights:
                tensors.update(st_load_file(f))
            if src.shape["arch"] == "llama":
                state = from_hf(tensors, src.shape)
            else:
                state = from_gpt2(tensors, src.shape["n_layer"], src.shape["bias"])
            del tensors
            tok = Tokenizer.from_file(str(src.tokenizer))
    except ConfigError:
        raise
    except Exception as e:  # safetensors' and tokenizers' own error types included: one line, exit 2
        raise _fail(m.init_from, str(e).strip("'\"")) from e
    n_tok, vocab = tok.get_vocab_size(), src.shape["vocab_size"]
    if n_tok > vocab:
        raise _fail(
            m.init_from,
            f"vocabulary mismatch: {src.tokenizer.name} has {n_tok} tokens but the model's embedding has "
            f"{vocab} rows (ids past {vocab - 1} would have no embedding)",
        )
    if "wpe.weight" in state:
        state["wpe.weight"] = state["wpe.weight"][
            : m.block_size
        ].contiguous()  # positions past block_size unused
    gpt = GPTConfig(**m.gpt_fields(vocab))
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in build_model(gpt).state_dict().items()}
    for k, shape in want.items():
        got = tuple(state[k].shape) if k in state else None
        if got != shape:
            raise _fail(
                m.init_from,
                f"tensor {k} has shape {got}, but the checkpoint's own config says {shape} "
                "(its weights and config.json / meta.json disagree)",
            )
    info = {"path": str(src.path.resolve()), "kind": src.kind, "model": asdict(gpt), "sha256": sha}
    if m.block_size < src.shape["block_size"]:
        info["positions_used"] = f"{m.block_size} of {src.shape['block_size']}"
    return InitWeights({k: state[k] for k in want}, tok, info, _chat_template(src))


def _chat_template(src: InitSource) -> str | None:
    """A Hugging Face directory's tokenizer_config.json `chat_template` (a string, or the one named "default" of a
    list), or a phase2 checkpoint's; None when it has none."""
    if src.kind == "phase2":
        meta = json.loads((src.path / "meta.json").read_text())
        return meta.get("chat_template")
    jinja = src.path / "chat_template.jinja"  # where recent transformers save it
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    f = src.path / "tokenizer_config.json"
    if not f.is_file():
        return None
    try:
        t = json.loads(f.read_text(encoding="utf-8")).get("chat_template")
    except (ValueError, AttributeError) as e:
        raise ConfigError(f"model.init_from: {f} is not a JSON object ({e})") from None
    if isinstance(t, list):
        t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
    return t if isinstance(t, str) else None
