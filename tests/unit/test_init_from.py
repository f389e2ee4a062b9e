"""`model.init_from`: a GPT-2 that transformers built and saved (nothing downloaded), or a phase2_ray checkpoint,
becomes both variants' starting weights with its tokenizer and shape; every bad directory is a one-line exit 2.

The GPT-2 here has non-zero linear biases (a real GPT-2's), which our model then carries (GPTConfig.bias): its
logits, our decode loop's greedy tokens and the int8 copy are checked against transformers' own model."""

import json
import shutil

import pytest
import torch

from phase2_ray.config import ConfigError
from phase2_ray.configure import load_config
from phase2_ray.core.checkpoint import checkpoint_files, read_checkpoint, save_dir
from phase2_ray.core.generate import stream_tokens
from phase2_ray.core.model import GPT, GPTConfig
from phase2_ray.core.train import evaluate, train, val_offsets
from phase2_ray.pretrained import load_init
from tests.conftest import ROOT, exit_2_line


def _loaded(cfg):
    """(weights, shape, our GPT holding them) for a config with model.init_from."""
    init = load_init(cfg)
    gcfg = GPTConfig(**cfg.model.gpt_fields(cfg.data.vocab_size))
    model = GPT(gcfg).eval()
    model.load_state_dict(init.state, strict=True)
    return init, gcfg, model


def test_an_hf_gpt2_gives_its_shape_tokenizer_and_weights(hf_gpt2, smoke_init, tiny_corpus):
    from transformers import AutoModelForCausalLM

    cfg = load_config(smoke_init, [f"model.init_from={hf_gpt2}", "model.n_layer=2", "data.vocab_size=400"])
    m = cfg.model
    assert (m.block_size, m.n_layer, m.n_head, m.d_model, m.bias) == (64, 2, 2, 32, True)
    assert cfg.data.vocab_size == 400
    init, _, ours = _loaded(cfg)
    assert init.info["kind"] == "hf-gpt2" and set(init.info["sha256"]) == {
        "model.safetensors",
        "tokenizer.json",
    }
    assert init.tokenizer.to_str() == tiny_corpus[1].to_str()
    hf = AutoModelForCausalLM.from_pretrained(hf_gpt2).eval()
    ids = init.tokenizer.encode("def main(argv):\n    return argv[0]").ids
    x = torch.tensor([ids])
    with torch.no_grad():
        ref, got = hf(x).logits, ours(x)[0]
    assert (ref - got).abs().max().item() < 1e-4 * ref.abs().max().item()
    # our KV-cache decode loop (biases through addmm) against transformers' greedy search
    n = 16
    hf_greedy = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n)
    assert list(stream_tokens(ours, ids, n, temperature=0)) == hf_greedy[0, len(ids) :].tolist()


@pytest.mark.parametrize("kernel", ["int8pack", "fbgemm"])
def test_int8_layers_add_the_bias(kernel):
    from phase2_ray.core.compress import Int8Linear, quantize_rows

    torch.manual_seed(0)
    q, scale = quantize_rows(torch.randn(96, 32))
    bias = torch.randn(96)
    for x in (torch.randn(5, 32), torch.randn(2, 3, 32)):
        with_bias, without = Int8Linear(q, scale, kernel, bias)(x), Int8Linear(q, scale, kernel)(x)
        assert torch.allclose(with_bias - without, bias.expand_as(without), atol=1e-5)


def test_the_int8_copy_of_a_biased_model_matches_fp32(hf_gpt2, smoke_init):
    """Weight-only int8 (int8pack, no activation quantization) stays close to fp32 with the biases in."""
    from phase2_ray.core.compress import SemanticCompressor

    init, gcfg, fp32 = _loaded(load_config(smoke_init, [f"model.init_from={hf_gpt2}"]))
    x = torch.randint(0, gcfg.vocab_size, (2, 24))
    with torch.no_grad():
        a = fp32(x)[0]
        b = SemanticCompressor("int8pack").compress_state(init.state, gcfg)(x)[0]
    assert (a - b).abs().max().item() < 0.05 * a.abs().max().item()


def test_training_starts_from_the_given_weights(hf_gpt2, smoke_init, tiny_corpus):
    """The first val loss is the loaded model's own, and two stacks start from the same weights."""
    from phase2_ray.core.specs import OptimizationSettings
    from phase2_ray.training.actors import loop_settings

    cfg = load_config(
        smoke_init, [f"model.init_from={hf_gpt2}", "training.steps=12", "training.eval_interval=0"]
    )
    init, gcfg, loaded = _loaded(cfg)
    _, _, train_ids, val_ids = tiny_corpus
    s = loop_settings(cfg.training, cfg.training.seed)
    offsets = val_offsets(len(val_ids), gcfg.block_size, s.eval_windows)
    want = evaluate(loaded, val_ids, offsets, s.batch_size)
    seeded, _ = train(gcfg, s, OptimizationSettings(), train_ids, val_ids)
    runs = [
        train(gcfg, s, st, train_ids, val_ids, init_state=init.state)[0]
        for st in (OptimizationSettings(), OptimizationSettings.of(fused_adamw=True))
    ]
    assert runs[0].val_curve[0][1] == pytest.approx(want, rel=1e-6)
    assert seeded.val_curve[0][1] != pytest.approx(want, rel=1e-3)
    assert runs[0].losses[0] == runs[1].losses[0]
    assert runs[0].val_curve[-1][1] < runs[0].val_curve[0][1]  # and it still trains


def test_a_phase2_run_or_checkpoint_and_a_lower_block_size(smoke_init, tmp_path, tiny_corpus):
    _, tok, *_ = tiny_corpus
    shape = {"vocab_size": 400, "block_size": 64, "n_layer": 1, "n_head": 2, "d_model": 32, "dropout": 0.0}
    torch.manual_seed(1)
    files = checkpoint_files(GPT(GPTConfig(**shape)), {"model": shape}, tok.to_str())
    save_dir(files, tmp_path / "run" / "checkpoints" / "optimized")
    state, meta, _ = read_checkpoint(files)
    for where in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "optimized"):
        cfg = load_config(
            smoke_init, [f"model.init_from={where}", "model.block_size=32", "validation.max_tokens=8"]
        )
        assert (cfg.model.block_size, cfg.model.n_layer, cfg.model.bias) == (32, 1, False)
        init = load_init(cfg)
        assert init.info["kind"] == "phase2" and init.info["positions_used"] == "32 of 64"
        assert init.info["sha256"]["model.safetensors"] == meta["sha256"]["model.safetensors"]
        assert torch.equal(init.state["wpe.weight"], state["wpe.weight"][:32])
        assert torch.equal(init.state["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])


def _bad_dirs(hf_gpt2, tmp_path):
    """(directory, extra --set, what the one-line error must name)."""
    moe = tmp_path / "mixtral"
    shutil.copytree(hf_gpt2, moe)
    c = json.loads((moe / "config.json").read_text())
    (moe / "config.json").write_text(json.dumps({**c, "model_type": "mixtral"}))
    small = tmp_path / "small-vocab"
    shutil.copytree(hf_gpt2, small)
    (small / "config.json").write_text(json.dumps({**c, "vocab_size": 300}))
    pickle = tmp_path / "pickle"
    pickle.mkdir()
    (pickle / "config.json").write_text(json.dumps(c))
    (pickle / "pytorch_model.bin").write_bytes(b"not loaded")
    run = tmp_path / "run-without-optimized"
    shutil.copytree(hf_gpt2, run / "checkpoints" / "baseline")
    (run / "checkpoints" / "baseline" / "meta.json").write_text("{}")
    (run / "config.json").write_text("{}")  # a run's own config, not a model's
    truncated = tmp_path / "truncated"
    shutil.copytree(hf_gpt2, truncated)
    w = truncated / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    slow_tok = tmp_path / "slow-tokenizer"
    shutil.copytree(hf_gpt2, slow_tok)
    (slow_tok / "tokenizer.json").write_text("{}")
    return [
        (tmp_path / "nowhere", [], "no such directory"),
        (truncated, [], "not a readable safetensors file"),
        (slow_tok, [], "model.init_from"),
        (run, [], "name one of ['baseline']"),
        (moe, [], "model_type is 'mixtral'"),
        (small, [], "vocabulary mismatch"),
        (pickle, [], "pickle"),
        (hf_gpt2, ["model.n_layer=3"], "model.n_layer: 3 does not match model.init_from's 2"),
        (hf_gpt2, ["model.block_size=128"], "model.block_size: 128 exceeds"),
        (hf_gpt2, ["data.vocab_size=512"], "data.vocab_size: 512 does not match"),
    ]


def test_bad_init_from_exits_2_with_one_line_before_ray(hf_gpt2, smoke_init, tmp_path, capsys):
    import ray

    for path, sets, words in _bad_dirs(hf_gpt2, tmp_path):
        err = exit_2_line(smoke_init, tmp_path / "out", [f"model.init_from={path}", *sets], capsys)
        assert words in err and "model.init_from" in err, err
    assert not ray.is_initialized()


def test_config_errors_name_the_field(hf_gpt2, smoke_init):
    with pytest.raises(ConfigError, match="model.d_model: 48 does not match"):
        load_config(smoke_init, [f"model.init_from={hf_gpt2}", "model.d_model=48"])
    # a prompt + output that no longer fit the checkpoint's context
    with pytest.raises(ConfigError, match="with model.init_from's model shape"):
        # 8 + 60 tokens fit the default block_size of 128, not the checkpoint's 64
        load_config(smoke_init, [f"model.init_from={hf_gpt2}", "validation.max_tokens=60"])
    # the smoke config's own model section names keys this checkpoint does not have
    with pytest.raises(ConfigError, match="model.n_layer: 1 does not match"):
        load_config(ROOT / "configs/smoke.yaml", [f"model.init_from={hf_gpt2}"])


@pytest.mark.parametrize("bias", [False, True])
def test_export_then_init_from_gives_back_the_same_model(smoke_init, tmp_path, tiny_corpus, bias):
    """`phase2 export` and init_from are inverses: biases survive, and zero biases come back as none."""
    from phase2_ray.export import export_hf

    _, tok, *_ = tiny_corpus
    shape = {"vocab_size": 400, "block_size": 64, "n_layer": 2, "n_head": 2, "d_model": 32, "bias": bias}
    torch.manual_seed(2)
    model = GPT(GPTConfig(**shape))
    if bias:
        with torch.no_grad():
            model.blocks[1].mlp.fc.bias.normal_()
    save_dir(checkpoint_files(model, {"model": shape}, tok.to_str()), tmp_path / "run/checkpoints/optimized")
    export_hf(tmp_path / "run", tmp_path / "hf")
    cfg = load_config(smoke_init, [f"model.init_from={tmp_path / 'hf'}"])
    assert cfg.model.bias is bias
    init = load_init(cfg)
    want = model.state_dict()
    assert set(init.state) == set(want)
    assert all(torch.equal(init.state[k], want[k]) for k in want)
    # the export carries the chat template our server applies, and init_from takes it back
    from phase2_ray.serving.chat import DEFAULT_CHAT_TEMPLATE

    assert (
        json.loads((tmp_path / "hf/tokenizer_config.json").read_text())["chat_template"]
        == DEFAULT_CHAT_TEMPLATE
    )
    assert init.chat_template == DEFAULT_CHAT_TEMPLATE


def test_null_takes_the_checkpoints_value_and_every_mismatch_is_named_at_once(hf_gpt2):
    smoke = (
        ROOT / "configs/smoke.yaml"
    )  # it states model.n_layer 1, n_head 2, d_model 32, block_size 64, vocab 512
    with pytest.raises(ConfigError) as e:
        load_config(smoke, [f"model.init_from={hf_gpt2}"])
    assert "model.n_layer: 1" in str(e.value) and "data.vocab_size: 512" in str(e.value)
    nulls = ["model.n_layer=null", "data.vocab_size=null"]
    cfg = load_config(smoke, [f"model.init_from={hf_gpt2}", *nulls])
    assert (cfg.model.n_layer, cfg.data.vocab_size, cfg.model.bias) == (2, 400, True)
    assert cfg.model.init_from == str(hf_gpt2.resolve())  # resolved: --resume from elsewhere finds it


def test_sharded_fp16_and_unprefixed_gpt2_checkpoints_load_alike(hf_gpt2, smoke_init, tmp_path):
    """Shapes of GPT-2 directories in the wild: sharded safetensors with an index, fp16 weights, and the original
    OpenAI layout without the `transformer.` prefix. Each loads to the same model (fp16 within its rounding)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    want = load_init(load_config(smoke_init, [f"model.init_from={hf_gpt2}"])).state
    hf = AutoModelForCausalLM.from_pretrained(hf_gpt2)
    sharded, half, bare = tmp_path / "sharded", tmp_path / "fp16", tmp_path / "bare"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    hf.half().save_pretrained(half)
    shutil.copytree(hf_gpt2, bare)
    tensors = load_file(hf_gpt2 / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, bare / "model.safetensors")
    assert (sharded / "model.safetensors.index.json").is_file()
    for d, tol in ((sharded, 0.0), (half, 1e-2), (bare, 0.0)):
        if d is not bare:
            shutil.copy(hf_gpt2 / "tokenizer.json", d / "tokenizer.json")
        got = load_init(load_config(smoke_init, [f"model.init_from={d}"])).state
        assert set(got) == set(want), d
        for k in want:
            assert got[k].dtype == torch.float32
            assert torch.allclose(got[k], want[k], rtol=tol, atol=tol * want[k].abs().max().item()), (d, k)
