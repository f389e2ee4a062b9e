"""`phase2 export`: a trained variant's checkpoint as a Hugging Face GPT-2 directory, which
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load with no
custom code. Written with safetensors and json only: neither the export nor a run imports transformers.

How the model maps onto GPT-2 (phase2_ray.core.model, checked by tests/integration/test_export_hf.py, which
compares transformers' logits and greedy tokens with ours):
- token and learned position embeddings, tied LM head: `transformer.wte`, `transformer.wpe` (the head is not
  stored; GPT-2 ties it), `n_positions` = block_size;
- pre-LayerNorm blocks (eps 1e-5, with biases) and a final LayerNorm: `ln_1`, `ln_2`, `ln_f`;
- attention: one qkv projection split q, k, v along its outputs, heads of d_model / n_head, scale 1/sqrt(head_dim),
  causal: `attn.c_attn`, `attn.c_proj`;
- MLP d -> 4d -> d with the tanh GELU: `mlp.c_fc`, `mlp.c_proj`, activation `gelu_new`;
- our linear layers have no bias: GPT-2's biases are written as zeros; GPT-2's Conv1D stores (in, out), the
  transpose of nn.Linear's (out, in);
- dropout 0 (an exported model is for inference).
The tokenizer is our byte-level BPE's own tokenizer.json, with `<|endoftext|>` as bos/eos when it has one."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save as st_save

from phase2_ray.core.atomic import write_atomic
from phase2_ray.core.checkpoint import read_checkpoint, read_dir

EOS = "<|endoftext|>"


def gpt2_state(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Our state dict under GPT-2's names and layouts (fp32, contiguous)."""
    out = {
        "transformer.wte.weight": state["wte.weight"],
        "transformer.wpe.weight": state["wpe.weight"],
        "transformer.ln_f.weight": state["ln_f.weight"],
        "transformer.ln_f.bias": state["ln_f.bias"],
    }
    for i in range(n_layer):
        src, dst = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[dst + theirs + ".weight"] = state[src + ours + ".weight"]
            out[dst + theirs + ".bias"] = state[src + ours + ".bias"]
        for ours, theirs in (
            ("attn.qkv", "attn.c_attn"),
            ("attn.proj", "attn.c_proj"),
            ("mlp.fc", "mlp.c_fc"),
            ("mlp.proj", "mlp.c_proj"),
        ):
            w = state[src + ours + ".weight"]
            if src + ours + ".bias" in state:
                raise ValueError(f"{src + ours} has a bias: this exporter maps bias-free layers")
            out[dst + theirs + ".weight"] = w.t()  # Conv1D: (in, out)
            out[dst + theirs + ".bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def gpt2_config(model: dict, eos_id: int | None) -> dict:
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


def export_hf(run_dir: str | Path, output: str | Path, variant: str = "optimized") -> Path:
    """Writes RUN_DIR/checkpoints/<variant> as a Hugging Face GPT-2 directory at `output`; returns it.
    Raises FileNotFoundError (no such run or variant) or ValueError (a checkpoint that does not map)."""
    if variant.endswith("-int8"):
        raise ValueError(
            f"{variant} is made at serving time from {variant.removesuffix('-int8')}'s fp32 weights and is not "
            f"exported: export {variant.removesuffix('-int8')} (transformers would load int8 as fp32 anyway)"
        )
    ckpt = Path(run_dir) / "checkpoints" / variant
    if not (ckpt / "meta.json").is_file():
        found = sorted(
            p.name for p in (Path(run_dir) / "checkpoints").glob("*") if (p / "meta.json").is_file()
        )
        raise FileNotFoundError(
            f"no checkpoint of variant {variant!r} in {run_dir} (found: {found or 'none'})"
        )
    state, meta, tok = read_checkpoint(read_dir(ckpt))
    model = meta["model"]
    eos_id = tok.token_to_id(EOS)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "model.safetensors", st_save(gpt2_state(state, model["n_layer"]), {"format": "pt"}))
    write_atomic(out / "tokenizer.json", tok.to_str().encode("utf-8"))
    specials = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS} if eos_id is not None else {}
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model["block_size"],
        **specials,
    }
    gen_cfg = {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}
    provenance = {
        "exported_by": "phase2_ray",
        "variant": variant,
        "source_sha256": meta.get("sha256", {}),
        "note": "int8 copies are not exported: export the fp32 variant they are made from",
    }
    for name, obj in (
        ("tokenizer_config.json", tok_cfg),
        ("generation_config.json", gen_cfg),
        ("phase2_export.json", provenance),
        ("config.json", gpt2_config(model, eos_id)),  # last: a present config.json means a complete export
    ):
        write_atomic(out / name, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8"))
    return out
