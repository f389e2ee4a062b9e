"""`phase2 export`: a trained variant's checkpoint as a Hugging Face directory (GPT-2 for arch gpt2; Llama, or Qwen2
when q/k/v have biases, for arch llama), which `transformers.AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)` load with no custom code. Written with safetensors and json only: neither the
export nor a run imports transformers.

How the model maps: phase2_ray.core.gpt2_format and phase2_ray.core.llama_format.
The tokenizer is our byte-level BPE's own tokenizer.json, with `<|endoftext|>` as bos/eos when it has one."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save as st_save

from phase2_ray.core import llama_format
from phase2_ray.core.atomic import write_atomic
from phase2_ray.core.checkpoint import read_checkpoint, read_dir
from phase2_ray.core.gpt2_format import gpt2_config, to_gpt2
from phase2_ray.serving.chat import DEFAULT_CHAT_TEMPLATE

EOS = "<|endoftext|>"


def export_hf(run_dir: str | Path, output: str | Path, variant: str = "optimized") -> Path:
    """Writes RUN_DIR/checkpoints/<variant> as a Hugging Face directory at `output`; returns it.
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
    llama = model.get("arch", "gpt2") == "llama"
    tensors = llama_format.to_hf(state, model) if llama else to_gpt2(state, model["n_layer"])
    write_atomic(out / "model.safetensors", st_save(tensors, {"format": "pt"}))
    write_atomic(out / "tokenizer.json", tok.to_str().encode("utf-8"))
    specials = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS} if eos_id is not None else {}
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model["block_size"],
        # the template our server applies to chat requests, so another server (transformers serve) chats alike
        "chat_template": meta.get("chat_template") or DEFAULT_CHAT_TEMPLATE,
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
        (
            "config.json",
            llama_format.hf_config(model, eos_id) if llama else gpt2_config(model, eos_id),
        ),  # last: a present config.json means a complete export
    ):
        write_atomic(out / name, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8"))
    return out
