import json

import pytest
import torch

from phase2_ray.core import checkpoint as ckpt
from phase2_ray.core.model import GPT, GPTConfig

CFG = {"vocab_size": 400, "block_size": 32, "n_layer": 1, "n_head": 2, "d_model": 16, "dropout": 0.0}


def make_files(tok, model=None):
    torch.manual_seed(1)
    if model is None:
        model = GPT(GPTConfig(**CFG))
    return model, ckpt.checkpoint_files(model, {"model": CFG, "variant": "t"}, tok.to_str())


def test_compiled_model_checkpoint_loads_into_plain_model(tiny_corpus, tmp_path):
    _, tok, *_ = tiny_corpus
    torch.manual_seed(1)
    plain = GPT(GPTConfig(**CFG))
    # backend="eager" wraps the module exactly as inductor does (the `_orig_mod.` prefix) without compiling kernels.
    compiled = torch.compile(plain, backend="eager")
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    _, files = make_files(tok, compiled)
    ckpt.save_dir(files, tmp_path / "c")
    model, meta, tok2 = ckpt.load_checkpoint(ckpt.read_dir(tmp_path / "c"))
    x = torch.randint(0, 400, (2, 10))
    assert torch.equal(model(x)[0], plain.eval()(x)[0])
    assert model.lm_head.weight is model.wte.weight  # tying survives the round trip
    assert meta["tied"] == {"wte.weight": "lm_head.weight"}  # one copy stored, the alias recorded
    assert tok2.encode("def f(x):").ids == tok.encode("def f(x):").ids


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_weights_are_refused(tiny_corpus, damage):
    _, tok, *_ = tiny_corpus
    _, files = make_files(tok)
    w = bytearray(files[ckpt.WEIGHTS])
    if damage == "flip":
        w[-3] ^= 0xFF
    else:
        w = w[: len(w) // 2]
    files[ckpt.WEIGHTS] = bytes(w)
    with pytest.raises(ckpt.ChecksumError, match="model.safetensors"):
        ckpt.load_checkpoint(files)


def test_tampered_metadata_is_refused(tiny_corpus):
    _, tok, *_ = tiny_corpus
    _, files = make_files(tok)
    meta = json.loads(files[ckpt.META])
    meta["sha256"][ckpt.TOKENIZER] = "0" * 64
    files[ckpt.META] = json.dumps(meta).encode()
    with pytest.raises(ckpt.ChecksumError, match="tokenizer.json"):
        ckpt.load_checkpoint(files)


def test_save_dir_leaves_no_temp_files(tiny_corpus, tmp_path):
    _, tok, *_ = tiny_corpus
    _, files = make_files(tok)
    ckpt.save_dir(files, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)


def test_atomic_writes_get_a_normal_file_mode(tmp_path):
    import os
    import stat

    from phase2_ray.core.atomic import write_atomic

    p = write_atomic(tmp_path / "report.md", "x")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
    assert not list(tmp_path.glob(".*.tmp"))
