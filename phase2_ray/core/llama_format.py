"""Our llama (core/llama.py) under transformers' `LlamaForCausalLM` / `Qwen2ForCausalLM` / `MistralForCausalLM`
names, both ways: `model.init_from` reads a local directory of any of the three, `phase2 export --format hf` writes
a Llama (or, with q/k/v biases, a Qwen2) directory that transformers loads with no custom code. Pure PyTorch.

The mapping: `model.embed_tokens` = `wte`; `model.layers.N.input_layernorm` / `post_attention_layernorm` = `ln1` /
`ln2`; `self_attn.{q,k,v}_proj` are the row blocks of our fused `attn.qkv` (q, then k, then v), `o_proj` = `proj`;
`mlp.{gate,up}_proj` the row blocks of `mlp.fc` (gate, then up), `down_proj` = `mlp.proj`; `model.norm` = `ln_f`;
`lm_head` (absent when tied) = `lm_head`.

What a checkpoint may hold and we cannot reproduce is refused naming its config.json field (`shape_from_config`):
sliding-window attention (`sliding_window` / `use_sliding_window`; only where the window is shorter than the context
used, `check_window`), mixture-of-experts, rope_scaling types other than linear and llama3, a head_dim other than
hidden_size / num_attention_heads, biases on o_proj or the MLP (`attention_bias`, `mlp_bias`), an activation other
than SiLU."""

from __future__ import annotations

import torch

from phase2_ray.core.specs import GPTConfig

MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size")
ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
DEFAULT_CONTEXT = 4096
"""block_size taken from a checkpoint whose max_position_embeddings is larger (rotary positions have no table to
outgrow, and the KV cache is sized by it); model.block_size sets any other value up to the checkpoint's."""


def _rope(c: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from transformers >= 5's `rope_parameters` or an older top-level `rope_theta` and
    `rope_scaling`. Raises ValueError naming a rope type we do not reproduce."""
    params = c.get("rope_parameters") or {}
    theta = params.get("rope_theta") or c.get("rope_theta") or 10_000.0
    scaling = c.get("rope_scaling") or {}
    where = "rope_parameters" if params.get("rope_type") not in (None, "default") else "rope_scaling"
    src = params if where == "rope_parameters" else scaling
    kind = src.get("rope_type") or src.get("type") or "default"
    if kind == "default":
        return float(theta), None
    if kind not in ("linear", "llama3"):
        raise ValueError(
            f"config.json {where}.rope_type is {kind!r}; phase2_ray's llama reproduces default, linear and llama3"
        )
    return float(theta), {"rope_type": kind, **{k: src[k] for k in ROPE_KEYS if src.get(k) is not None}}


def shape_from_config(c: dict) -> dict:
    """GPTConfig's fields (arch llama) from a Llama / Qwen2 / Mistral config.json, plus `sliding_window` (None, or
    a window `check_window` holds against the context). Raises ValueError naming the first field we cannot honour."""
    kind = c.get("model_type")
    if kind not in MODEL_TYPES:
        raise ValueError(f"model_type is {kind!r}: init_from reads gpt2, {', '.join(MODEL_TYPES)}")
    for key in MOE_KEYS:
        if c.get(key):
            raise ValueError(f"config.json {key} is {c[key]!r}: mixture-of-experts models are not supported")
    d, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    checks = [
        ("hidden_act", c.get("hidden_act", "silu"), ("silu",), "silu (SwiGLU)"),
        (
            "head_dim",
            c.get("head_dim"),
            (None, d // heads),
            f"hidden_size / num_attention_heads = {d // heads}",
        ),
        (
            "attention_bias",
            c.get("attention_bias", False),
            (False,),
            "false (a bias on o_proj is not supported)",
        ),
        ("mlp_bias", c.get("mlp_bias", False), (False,), "false"),
        ("pretraining_tp", c.get("pretraining_tp", 1), (1,), "1"),
    ]
    for key, got, allowed, words in checks:
        if got not in allowed:
            raise ValueError(f"config.json {key} is {got!r}; phase2_ray's llama needs {words}")
    theta, scaling = _rope(c)
    window = None
    if kind == "mistral" or c.get("use_sliding_window"):
        window = c.get("sliding_window")
    return {
        "arch": "llama",
        "vocab_size": int(c["vocab_size"]),
        "block_size": int(c.get("max_position_embeddings", 2048)),
        "n_layer": int(c["num_hidden_layers"]),
        "n_head": heads,
        "n_kv_head": int(c.get("num_key_value_heads") or heads),
        "d_model": d,
        "ffn_hidden": int(c["intermediate_size"]),
        "norm_eps": float(c.get("rms_norm_eps", 1e-6)),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "qkv_bias": kind == "qwen2",
        "tie_embeddings": bool(c.get("tie_word_embeddings", False)),
        "bias": False,
        "sliding_window": None if window is None else int(window),
        "model_type": kind,
    }


def check_window(window: int | None, block_size: int) -> None:
    """Sliding-window attention changes nothing while every sequence fits in the window; beyond, it is refused."""
    if window is not None and window < block_size:
        raise ValueError(
            f"config.json sliding_window is {window}, shorter than the context of {block_size} tokens: "
            f"sliding-window attention is not supported (set model.block_size <= {window} to use the model "
            "within its window)"
        )


def from_hf(tensors: dict[str, torch.Tensor], shape: dict) -> dict[str, torch.Tensor]:
    """A Llama-family checkpoint's tensors as our state dict, fp32, the tied head included. Raises KeyError naming
    the first tensor the checkpoint should have and lacks."""

    def get(name: str) -> torch.Tensor:
        if name not in tensors:
            raise KeyError(f"tensor {name!r} is missing")
        return tensors[name].float()

    state = {"wte.weight": get("model.embed_tokens.weight"), "ln_f.weight": get("model.norm.weight")}
    for i in range(shape["n_layer"]):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        state[dst + "ln1.weight"] = get(src + "input_layernorm.weight")
        state[dst + "ln2.weight"] = get(src + "post_attention_layernorm.weight")
        att = src + "self_attn."
        state[dst + "attn.qkv.weight"] = torch.cat([get(f"{att}{x}_proj.weight") for x in "qkv"])
        if shape["qkv_bias"]:
            state[dst + "attn.qkv.bias"] = torch.cat([get(f"{att}{x}_proj.bias") for x in "qkv"])
        state[dst + "attn.proj.weight"] = get(att + "o_proj.weight")
        mlp = src + "mlp."
        state[dst + "mlp.fc.weight"] = torch.cat([get(mlp + "gate_proj.weight"), get(mlp + "up_proj.weight")])
        state[dst + "mlp.proj.weight"] = get(mlp + "down_proj.weight")
    if shape["tie_embeddings"]:
        state["lm_head.weight"] = state["wte.weight"]
    else:
        state["lm_head.weight"] = get("lm_head.weight")
    return {k: v.contiguous() for k, v in state.items()}


def to_hf(state: dict[str, torch.Tensor], model: dict) -> dict[str, torch.Tensor]:
    """Our llama's state dict under transformers' names (fp32, contiguous; a tied head is not stored)."""
    shape = GPTConfig(**model)
    h, kv, hd = shape.n_head, shape.kv_heads, shape.head_dim
    out = {"model.embed_tokens.weight": state["wte.weight"], "model.norm.weight": state["ln_f.weight"]}
    for i in range(model["n_layer"]):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = state[src + "ln1.weight"]
        out[dst + "post_attention_layernorm.weight"] = state[src + "ln2.weight"]
        sizes = (h * hd, kv * hd, kv * hd)
        for x, w in zip("qkv", state[src + "attn.qkv.weight"].split(sizes), strict=True):
            out[f"{dst}self_attn.{x}_proj.weight"] = w
        if src + "attn.qkv.bias" in state:
            for x, b in zip("qkv", state[src + "attn.qkv.bias"].split(sizes), strict=True):
                out[f"{dst}self_attn.{x}_proj.bias"] = b
        out[dst + "self_attn.o_proj.weight"] = state[src + "attn.proj.weight"]
        gate, up = state[src + "mlp.fc.weight"].chunk(2)
        out[dst + "mlp.gate_proj.weight"], out[dst + "mlp.up_proj.weight"] = gate, up
        out[dst + "mlp.down_proj.weight"] = state[src + "mlp.proj.weight"]
    if not model.get("tie_embeddings", True):
        out["lm_head.weight"] = state["lm_head.weight"]
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def hf_config(model: dict, eos_id: int | None) -> dict:
    """config.json of a LlamaForCausalLM (a Qwen2ForCausalLM when q/k/v have biases, which Llama cannot express
    without also biasing o_proj) with our model's shape (`model`: GPTConfig's fields)."""
    kind = "qwen2" if model.get("qkv_bias") else "llama"
    rope = {"rope_type": "default", "rope_theta": model.get("rope_theta", 10_000.0)}
    if model.get("rope_scaling"):
        rope.update(model["rope_scaling"])
    shape = GPTConfig(**model)
    out = {
        "architectures": [MODEL_TYPES[kind]],
        "model_type": kind,
        "vocab_size": model["vocab_size"],
        "max_position_embeddings": model["block_size"],
        "hidden_size": model["d_model"],
        "intermediate_size": shape.hidden,
        "num_hidden_layers": model["n_layer"],
        "num_attention_heads": shape.n_head,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": model.get("norm_eps", 1e-5),
        "rope_parameters": rope,
        "rope_theta": rope["rope_theta"],  # for readers older than transformers 5
        "tie_word_embeddings": bool(model.get("tie_embeddings", True)),
        "attention_dropout": 0.0,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }
    if kind == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    else:
        out.update(
            use_sliding_window=False, sliding_window=None, layer_types=["full_attention"] * model["n_layer"]
        )
    return out
