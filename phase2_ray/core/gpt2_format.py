"""Our GPT under Hugging Face GPT-2's names and layouts, both ways: `phase2 export --format hf` writes it and
`model.init_from` reads it. Pure PyTorch (no transformers import).

How the model maps onto GPT-2 (phase2_ray.core.model; tests/integration/test_export_hf.py compares transformers'
logits and greedy tokens with ours, tests/unit/test_init_from.py the way back):
- token and learned position embeddings, tied LM head: `transformer.wte`, `transformer.wpe` (the head is not
  stored; GPT-2 ties it), `n_positions` = block_size;
- pre-LayerNorm blocks (eps 1e-5, with biases) and a final LayerNorm: `ln_1`, `ln_2`, `ln_f`;
- attention: one qkv projection split q, k, v along its outputs, heads of d_model / n_head, scale 1/sqrt(head_dim),
  causal: `attn.c_attn`, `attn.c_proj`;
- MLP d -> 4d -> d with the tanh GELU: `mlp.c_fc`, `mlp.c_proj`, activation `gelu_new`;
- GPT-2's Conv1D stores (in, out), the transpose of nn.Linear's (out, in); our own models' linear layers have no
  bias and export zeros; a GPT-2 checkpoint's biases are kept (GPTConfig.bias);
- dropout 0 (an exported model is for inference)."""

from __future__ import annotations

import torch

LAYERS = (
    ("attn.qkv", "attn.c_attn"),
    ("attn.proj", "attn.c_proj"),
    ("mlp.fc", "mlp.c_fc"),
    ("mlp.proj", "mlp.c_proj"),
)
NORMS = (("ln1", "ln_1"), ("ln2", "ln_2"))
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")
"""transformers' names for the tanh GELU our MLP uses."""


def to_gpt2(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Our state dict under GPT-2's names and layouts (fp32, contiguous)."""
    out = {
        "transformer.wte.weight": state["wte.weight"],
        "transformer.wpe.weight": state["wpe.weight"],
        "transformer.ln_f.weight": state["ln_f.weight"],
        "transformer.ln_f.bias": state["ln_f.bias"],
    }
    for i in range(n_layer):
        src, dst = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in NORMS:
            out[dst + theirs + ".weight"] = state[src + ours + ".weight"]
            out[dst + theirs + ".bias"] = state[src + ours + ".bias"]
        for ours, theirs in LAYERS:
            w = state[src + ours + ".weight"]
            out[dst + theirs + ".weight"] = w.t()  # Conv1D: (in, out)
            b = state.get(src + ours + ".bias")
            out[dst + theirs + ".bias"] = torch.zeros(w.shape[0], dtype=w.dtype) if b is None else b
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def from_gpt2(tensors: dict[str, torch.Tensor], n_layer: int, bias: bool) -> dict[str, torch.Tensor]:
    """A GPT-2 checkpoint's tensors (with or without the `transformer.` prefix) as our state dict, fp32, the tied
    head included. Raises KeyError naming the first tensor a GPT-2 of `n_layer` blocks must have and lacks."""
    prefix = "transformer." if "transformer.wte.weight" in tensors else ""

    def get(name: str) -> torch.Tensor:
        if prefix + name not in tensors:
            raise KeyError(f"tensor {prefix + name!r} is missing")
        return tensors[prefix + name].float()

    state = {
        "wte.weight": get("wte.weight"),
        "wpe.weight": get("wpe.weight"),
        "ln_f.weight": get("ln_f.weight"),
        "ln_f.bias": get("ln_f.bias"),
    }
    for i in range(n_layer):
        src, dst = f"h.{i}.", f"blocks.{i}."
        for ours, theirs in NORMS:
            state[dst + ours + ".weight"] = get(src + theirs + ".weight")
            state[dst + ours + ".bias"] = get(src + theirs + ".bias")
        for ours, theirs in LAYERS:
            state[dst + ours + ".weight"] = get(src + theirs + ".weight").t()
            if bias:
                state[dst + ours + ".bias"] = get(src + theirs + ".bias")
    state["lm_head.weight"] = state["wte.weight"]
    return {k: v.contiguous() for k, v in state.items()}


def gpt2_config(model: dict, eos_id: int | None) -> dict:
    """config.json of a GPT2LMHeadModel with our model's shape (`model`: GPTConfig's fields)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": model["vocab_size"],
        "n_positions": model["block_size"],
        "n_embd": model["d_model"],
        "n_layer": model["n_layer"],
        "n_head": model["n_head"],
        "n_inner": 4 * model["d_model"],
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }


def shape_from_gpt2_config(c: dict) -> dict:
    """GPTConfig's shape fields (vocab_size, block_size, n_layer, n_head, d_model) from a GPT-2 config.json.
    Raises ValueError naming the first setting our model cannot reproduce, and what it can."""
    arch = c.get("model_type")
    if arch != "gpt2":
        raise ValueError(
            f"model_type is {arch!r}: init_from reads the GPT-2 architecture (model_type 'gpt2') only"
        )
    d = c.get("n_embd", 768)
    checks = [
        ("activation_function", c.get("activation_function", "gelu_new"), GELU_TANH, "the tanh GELU"),
        ("n_inner", c.get("n_inner"), (None, 4 * d), f"4 x n_embd = {4 * d}"),
        ("layer_norm_epsilon", c.get("layer_norm_epsilon", 1e-5), (1e-5,), "1e-5"),
        ("scale_attn_weights", c.get("scale_attn_weights", True), (True,), "true"),
        (
            "scale_attn_by_inverse_layer_idx",
            c.get("scale_attn_by_inverse_layer_idx", False),
            (False,),
            "false",
        ),
        ("reorder_and_upcast_attn", c.get("reorder_and_upcast_attn", False), (False,), "false"),
        ("add_cross_attention", c.get("add_cross_attention", False), (False,), "false"),
        ("tie_word_embeddings", c.get("tie_word_embeddings", True), (True,), "true"),
    ]
    for key, got, allowed, words in checks:
        if got not in allowed:
            raise ValueError(f"config.json {key} is {got!r}; phase2_ray's GPT needs {words}")
    return {
        "vocab_size": int(c.get("vocab_size", 50257)),
        "block_size": int(c.get("n_positions", 1024)),
        "n_layer": int(c.get("n_layer", 12)),
        "n_head": int(c.get("n_head", 12)),
        "d_model": int(d),
    }
