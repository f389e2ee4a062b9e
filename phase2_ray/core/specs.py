"""The model's shape and a variant's optimization stack as plain dataclasses, without torch: the report, `phase2
report` and `phase2 compare` read them (MFU from the shape, the no-op check from the stacks) in processes that never
import torch. The modules that build models and optimizers import them from here."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field


def _shape(default, doc: str):
    """A shape field with its meaning attached (config/schema.py's model.* key reads both)."""
    return field(default=default, metadata={"doc": doc})


@dataclass(kw_only=True)
class GPTConfig:
    """The model's shape: the one source of its fields, defaults and meanings. The config's `model.*` keys are built
    from these fields (config/schema.py adds their bounds), so the two cannot drift apart."""

    vocab_size: int
    """Tokenizer vocabulary size; the embedding and tied LM head have this many rows (the config's
    data.vocab_size, or the checkpoint's)."""
    block_size: int = _shape(
        128, "Context length in tokens: the longest sequence (prompt + generated tokens) the model sees."
    )
    n_layer: int = _shape(2, "Transformer blocks.")
    n_head: int = _shape(4, "Attention heads; must divide d_model.")
    d_model: int = _shape(48, "Residual stream width.")
    dropout: float = _shape(
        0.0,
        "Dropout probability in attention and MLP (gpt2 only; 0 keeps both variants' numerics comparable).",
    )
    bias: bool = _shape(
        False,
        "gpt2: biases on the attention and MLP projections (GPT-2 checkpoints have them; off is faster).",
    )
    arch: str = _shape(
        "gpt2",
        "gpt2: learned positions, LayerNorm, GELU MLP, tied head (nanoGPT; core/model.py). llama: rotary "
        "positions, RMSNorm, SwiGLU MLP, grouped-query attention (Llama, Qwen2, Mistral; core/llama.py). With "
        "init_from, the checkpoint's.",
    )
    n_kv_head: int | None = _shape(None, "llama: key/value heads (grouped-query attention); null: n_head.")
    ffn_hidden: int | None = _shape(
        None, "llama: the SwiGLU MLP's inner width; null: Llama's rule (2/3 of 4 d_model, rounded up to 32)."
    )
    norm_eps: float = _shape(1e-5, "llama: RMSNorm's epsilon.")
    rope_theta: float = _shape(10_000.0, "llama: the rotary base.")
    rope_scaling: dict | None = _shape(
        None,
        "llama: rotary scaling; null: none. {rope_type: linear, factor} or {rope_type: llama3, factor, "
        "low_freq_factor, high_freq_factor, original_max_position_embeddings} (transformers' meaning).",
    )
    qkv_bias: bool = _shape(
        False,
        "llama: biases on q, k and v (Qwen2 has them); the output projection and the MLP never have one.",
    )
    tie_embeddings: bool = _shape(
        True,
        "The LM head is the token embedding (gpt2 always ties; a llama either way, as its checkpoint says).",
    )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden(self) -> int:
        """The MLP's inner width."""
        if self.arch != "llama":
            return 4 * self.d_model
        return self.ffn_hidden or 32 * -(-int(2 * 4 * self.d_model / 3) // 32)


def tokens_per_step(batch_size: int, block_size: int) -> int:
    """Tokens one optimizer step trains on (every sequence fills the context): the one definition that the
    training loop, its progress telemetry, the report's throughput, plots and MFU all use."""
    return batch_size * block_size


BUILTIN_HOOKS: dict[str, list[str]] = {
    "compile": ["convert"],
    "fused_adamw": ["optimizer"],
    "bf16": ["step_context"],
    "sdpa": ["step_context"],
    "int8": ["serve"],
}
"""The built-in converters (core/converters.py) and their hooks, readable without torch (a test keeps them equal)."""

LEGACY_KEYS = ("compile", "compile_mode", "fused_adamw", "bf16", "sdpa_backend")
"""The switches a variant had before converters; they remain shorthands for the built-in converters."""


def builtin_spec(name: str, args: dict | None = None) -> dict:
    """A resolved spec of a built-in converter (plugins.resolve gives the same, without importing torch)."""
    if name not in BUILTIN_HOOKS:
        raise ValueError(f"{name!r} is not a built-in converter ({', '.join(BUILTIN_HOOKS)})")
    return {
        "name": name,
        "use": name,
        "args": dict(args or {}),
        "hooks": list(BUILTIN_HOOKS[name]),
        "changes_numerics": True,
        "source": {"kind": "builtin", "package": "phase2_ray", "version": _own_version()},
    }


@functools.lru_cache(maxsize=1)
def _own_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("phase2_ray")
    except PackageNotFoundError:
        return None


def shorthand_specs(
    *,
    compile: bool = False,
    compile_mode: str = "default",
    fused_adamw: bool = False,
    bf16: bool = False,
    sdpa_backend: str = "default",
) -> tuple[list[dict], list[dict]]:
    """(converters before a user's, after them) for the legacy switches: torch.compile last, so that it compiles
    the model every other converter has made."""
    before = [builtin_spec("fused_adamw")] if fused_adamw else []
    if bf16:
        before.append(builtin_spec("bf16"))
    if sdpa_backend != "default":
        before.append(builtin_spec("sdpa", {"backend": sdpa_backend}))
    after = (
        [builtin_spec("compile", {} if compile_mode == "default" else {"mode": compile_mode})]
        if compile
        else []
    )
    return before, after


@dataclass(kw_only=True)
class OptimizationSettings:
    """A variant's optimization stack: its converters in order (resolved specs, core/plugins.resolve), plus the
    calibration delay. Equal stacks run the same code."""

    converters: list[dict] = field(default_factory=list)
    """Resolved converter specs: name, use, args, hooks, changes_numerics, source."""
    delay_pct: float = 0.0
    """A calibration instrument, not an optimization: after each training step, busy-wait this percentage of the
    step's own compute time, so a known slowdown of this stack (true ratio 1 + delay_pct/100) can be placed
    anywhere to check the verdict (A/A runs, a known effect, an effect at the threshold)."""

    @classmethod
    def of(
        cls, *, converters: list[dict] | None = None, delay_pct: float = 0.0, **shorthands
    ) -> OptimizationSettings:
        """A stack from the legacy switches (compile, compile_mode, fused_adamw, bf16, sdpa_backend) and/or specs."""
        before, after = shorthand_specs(**shorthands)
        return cls(converters=[*before, *(converters or []), *after], delay_pct=delay_pct)

    @classmethod
    def from_dict(cls, d: dict) -> OptimizationSettings:
        """A stored stack: today's form, or a report.json from before converters (the legacy switches)."""
        legacy = {k: d[k] for k in LEGACY_KEYS if k in d}
        return cls.of(
            converters=list(d.get("converters") or []), delay_pct=float(d.get("delay_pct", 0.0)), **legacy
        )

    def names(self) -> list[str]:
        return [c["name"] for c in self.converters]

    def has(self, name: str) -> bool:
        return name in self.names()

    def changes_numerics(self) -> bool:
        """Whether any converter that touches training says it changes numerics (then the convergence gate
        decides); a serve-only converter's numerics are judged where it serves."""
        return any(
            c.get("changes_numerics", True) and set(c.get("hooks", [])) - {"serve"} for c in self.converters
        )

    def training_converters(self) -> list[dict]:
        return [c for c in self.converters if set(c.get("hooks", [])) - {"serve"}]

    def serve_converters(self) -> list[dict]:
        return [c for c in self.converters if "serve" in c.get("hooks", [])]

    def label(self) -> str:
        """One line for logs and tables: `fused_adamw, sdpa(backend=math)`; `eager fp32` when empty."""
        parts = [
            c["name"]
            + (
                "(" + ", ".join(f"{k}={v}" for k, v in c.get("args", {}).items()) + ")"
                if c.get("args")
                else ""
            )
            for c in self.converters
        ]
        if self.delay_pct:
            parts.append(f"delay {self.delay_pct:g}%")
        return ", ".join(parts) or "eager fp32"


def converter_key(c: dict) -> tuple:
    """What makes two converters the same code: the name, where its code came from (sha256 / version; not a path,
    which differs between machines) and its args."""
    src = c.get("source") or {}
    origin = (
        src.get("sha256") or (src.get("package"), src.get("version"))
        if src.get("kind") != "builtin"
        else "builtin"
    )
    return (c["name"], str(origin), json.dumps(c.get("args", {}), sort_keys=True, default=str))


def same_stack(a: OptimizationSettings | dict, b: OptimizationSettings | dict) -> bool:
    """Whether two stacks run the same code: the no-op check (a variant equal to its baseline is no speedup)."""

    def key(x: OptimizationSettings | dict) -> tuple:
        s = x if isinstance(x, OptimizationSettings) else OptimizationSettings.from_dict(x)
        return (tuple(converter_key(c) for c in s.training_converters()), s.delay_pct)

    return key(a) == key(b)
