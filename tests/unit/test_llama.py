"""The llama architecture against transformers, on small models transformers built from its own config classes and
saved (`hf_llamas`: Llama with llama3 rope scaling and an untied head, Qwen2 tied with q/k/v biases and sharded,
Mistral with a window longer than the context), loaded the way a user's are, through `model.init_from`:
- logits within fp32 tolerance of transformers' own model;
- our decode loop's greedy tokens (continuous batching, a GQA cache) equal transformers' greedy `generate`;
- the int8 copy's logits within the tolerance stated in test_compress (relative RMS 2% for int8pack, 20% for FBGEMM's
  per-tensor activations) and its loss within 1%;
- `phase2 export` writes a directory transformers loads, and init_from reads it back bit for bit;
- what we cannot reproduce exits 2 naming the config.json field.
(The Serve engine's temperature-0 completion against transformers' generate: tests/integration/test_llama_e2e.py.)"""

import json
import shutil

import pytest
import torch

from phase2_ray.config import ConfigError
from phase2_ray.configure import load_config
from phase2_ray.core.checkpoint import checkpoint_files, save_dir
from phase2_ray.core.compress import KERNELS, SemanticCompressor, fbgemm_available
from phase2_ray.core.flops import non_embedding_params
from phase2_ray.core.generate import BatchDecoder, SamplingParams
from phase2_ray.core.model import GPTConfig, build_model
from phase2_ray.pretrained import load_init
from tests.conftest import LLAMA_FAMILY, LLAMA_SHAPE, exit_2_line

FAMILIES = list(LLAMA_FAMILY)
PROMPTS = ["def main(argv):\n    return argv[0]", "import os\nprint(", "class A:\n    def"]


def _ours(smoke_init, path, *sets):
    cfg = load_config(smoke_init, [f"model.init_from={path}", *sets])
    init = load_init(cfg)
    model = build_model(GPTConfig(**cfg.model.gpt_fields(cfg.data.vocab_size))).eval()
    model.load_state_dict(init.state, strict=True)
    return cfg, init, model


def _theirs(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("kind", FAMILIES)
def test_the_checkpoint_gives_its_shape_and_our_logits_match_transformers(hf_llamas, smoke_init, kind):
    cfg, init, ours = _ours(smoke_init, hf_llamas[kind])
    m = cfg.model
    assert (m.arch, m.n_layer, m.n_head, m.n_kv_head, m.d_model, m.ffn_hidden) == ("llama", 2, 4, 2, 64, 96)
    assert m.qkv_bias is (kind == "qwen2") and m.tie_embeddings is (kind == "qwen2")
    assert init.info["kind"] == f"hf-{kind}" and m.block_size == LLAMA_SHAPE["max_position_embeddings"]
    if kind == "qwen2":  # sharded: every shard hashed
        assert len([f for f in init.info["sha256"] if f.endswith(".safetensors")]) > 1
    if kind == "llama":
        assert m.rope_scaling.rope_type == "llama3"
    if kind == "mistral":
        assert m.rope_theta == 1e6
    hf = _theirs(hf_llamas[kind])
    x = torch.tensor([init.tokenizer.encode(p).ids[:6] for p in PROMPTS])
    with torch.no_grad():
        ref, got = hf(x).logits, ours(x)[0]
    assert (ref - got).abs().max().item() < 1e-4 * ref.abs().max().item()


@pytest.mark.parametrize("kind", FAMILIES)
def test_our_decode_loop_is_transformers_greedy_generate(hf_llamas, smoke_init, kind):
    """Three prompts of different lengths decoded together (rows at different positions, a GQA cache)."""
    _, init, ours = _ours(smoke_init, hf_llamas[kind])
    hf = _theirs(hf_llamas[kind])
    n = 16
    dec = BatchDecoder(ours, max_batch=4)
    ids = [init.tokenizer.encode(p).ids for p in PROMPTS]
    seqs = [dec.add(i, SamplingParams(n, temperature=0.0)) for i in ids]
    while dec.active:
        dec.step()
    for i, s in zip(ids, seqs, strict=True):
        x = torch.tensor([i])
        want = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n)
        assert s.tokens == want[0, len(i) :].tolist()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", ["llama", "qwen2"])  # an untied head quantized on its own; a tied one shared
def test_the_int8_copy_stays_within_tolerance(hf_llamas, smoke_init, tiny_corpus, kind, kernel):
    if kernel == "fbgemm" and not fbgemm_available():
        pytest.skip("FBGEMM needs an x86 CPU with AVX2")
    cfg, init, ours = _ours(smoke_init, hf_llamas[kind])
    q = SemanticCompressor(kernel).compress_state(init.state, ours.cfg)
    _, _, train_ids, _ = tiny_corpus
    x = train_ids[:256].view(4, 64).long()
    y = train_ids[1:257].view(4, 64).long()
    with torch.no_grad():
        ref, ref_loss = ours(x, y)
        got, loss = q(x, y)
    rel_rms = ((got - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()
    assert rel_rms < (0.02 if kernel == "int8pack" else 0.2)
    assert abs(loss.item() - ref_loss.item()) / ref_loss.item() < 0.01
    # and it decodes through the engine's loop: the first greedy token of a prompt agrees with fp32's
    p = init.tokenizer.encode(PROMPTS[0]).ids
    first = [BatchDecoder(m, 1).add(p, SamplingParams(1, temperature=0.0)).tokens[0] for m in (ours, q)]
    assert first[0] == first[1]


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_export_loads_in_transformers_and_init_from_reads_it_back(
    smoke_init, tmp_path, tiny_corpus, tie, qkv_bias
):
    from phase2_ray.export import export_hf

    _, tok, *_ = tiny_corpus
    shape = {
        "arch": "llama",
        "vocab_size": 400,
        "block_size": 64,
        "n_layer": 2,
        "n_head": 4,
        "n_kv_head": 1,
        "d_model": 32,
        "rope_theta": 5e5,
        "qkv_bias": qkv_bias,
        "tie_embeddings": tie,
    }
    torch.manual_seed(3)
    model = build_model(GPTConfig(**shape)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    save_dir(checkpoint_files(model, {"model": shape}, tok.to_str()), tmp_path / "run/checkpoints/optimized")
    export_hf(tmp_path / "run", tmp_path / "hf")
    hf = _theirs(tmp_path / "hf")
    assert type(hf).__name__ == ("Qwen2ForCausalLM" if qkv_bias else "LlamaForCausalLM")
    x = torch.tensor([tok.encode(PROMPTS[0]).ids])
    with torch.no_grad():
        ref, theirs = model(x)[0], hf(x).logits
    assert (ref - theirs).abs().max().item() < 1e-4 * ref.abs().max().item()
    cfg, init, back = _ours(smoke_init, tmp_path / "hf")
    assert (cfg.model.tie_embeddings, cfg.model.qkv_bias, cfg.model.n_kv_head) == (tie, qkv_bias, 1)
    want = model.state_dict()
    assert set(init.state) == set(want) and all(torch.equal(init.state[k], want[k]) for k in want)


def _edited(src, tmp_path, name, **changes):
    d = tmp_path / name
    shutil.copytree(src, d)
    c = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    (d / "config.json").write_text(json.dumps(c))
    return d


def test_what_we_cannot_reproduce_exits_2_naming_the_field(hf_llamas, smoke_init, tmp_path, capsys):
    import ray

    llama, qwen, mistral = (hf_llamas[k] for k in FAMILIES)
    cases = [
        (
            _edited(qwen, tmp_path, "window", use_sliding_window=True, sliding_window=16),
            [],
            "sliding_window is 16",
        ),
        (_edited(mistral, tmp_path, "mwindow", sliding_window=32), [], "sliding_window is 32"),
        (_edited(llama, tmp_path, "moe", num_local_experts=8), [], "num_local_experts"),
        (
            _edited(llama, tmp_path, "yarn", rope_parameters={"rope_type": "yarn", "factor": 4.0}),
            [],
            "rope_parameters.rope_type is 'yarn'",
        ),
        (
            _edited(
                llama,
                tmp_path,
                "old-rope",
                rope_parameters=None,
                rope_scaling={"type": "dynamic", "factor": 2},
            ),
            [],
            "rope_scaling.rope_type is 'dynamic'",
        ),
        (_edited(llama, tmp_path, "obias", attention_bias=True), [], "attention_bias is True"),
        (_edited(llama, tmp_path, "hd", head_dim=32), [], "head_dim is 32"),
        (_edited(llama, tmp_path, "gelu", hidden_act="gelu"), [], "hidden_act is 'gelu'"),
        (_edited(llama, tmp_path, "nokv", num_hidden_layers=None), [], "has no 'num_hidden_layers'"),
        (llama, ["model.n_kv_head=4"], "model.n_kv_head: 4 does not match model.init_from's 2"),
        (llama, ["model.arch=gpt2"], "model.arch: 'gpt2' does not match model.init_from's 'llama'"),
        (llama, ["model.tie_embeddings=true"], "model.tie_embeddings: True does not match"),
        (llama, ["model.block_size=128"], "model.block_size: 128 exceeds"),
    ]
    for path, sets, words in cases:
        err = exit_2_line(smoke_init, tmp_path / "out", [f"model.init_from={path}", *sets], capsys)
        assert words in err, (words, err)
    assert not ray.is_initialized()


def test_agreements_are_not_conflicts(hf_llamas, smoke_init, tmp_path):
    """`--set model.arch=llama` with a Qwen2 directory agrees with it; a shorter context is a choice; a sliding
    window is judged against the context actually used."""
    cfg = load_config(
        smoke_init, [f"model.init_from={hf_llamas['qwen2']}", "model.arch=llama", "model.n_kv_head=2"]
    )
    assert cfg.model.arch == "llama" and cfg.model.qkv_bias
    short = load_config(smoke_init, [f"model.init_from={hf_llamas['llama']}", "model.block_size=32"])
    assert short.model.block_size == 32
    windowed = _edited(hf_llamas["mistral"], tmp_path, "w32", sliding_window=32)
    assert (
        load_config(smoke_init, [f"model.init_from={windowed}", "model.block_size=32"]).model.block_size == 32
    )
    with pytest.raises(ConfigError, match="sliding_window is 32, shorter than the context of 64"):
        load_config(smoke_init, [f"model.init_from={windowed}"])


def test_the_llama_config_checks_its_own_shape():
    base = ["model.arch=llama", "model.d_model=64", "model.n_head=4"]
    for sets, words in [
        (["model.n_kv_head=3"], "must be a multiple of n_kv_head=3"),
        (["model.bias=true"], "for llama use qkv_bias"),
        (["model.d_model=12", "model.n_head=4"], "must be even"),
        (["model.rope_scaling.rope_type=llama3", "model.rope_scaling.factor=8"], "llama3 needs"),
    ]:
        with pytest.raises(ConfigError, match=words):
            load_config(None, base + sets)
    with pytest.raises(ConfigError, match="arch llama only"):
        load_config(None, ["model.n_kv_head=2"])


@pytest.mark.parametrize("tie", [True, False])
def test_the_flops_count_is_the_models_own_parameters(tie):
    """MFU's N: every parameter that multiplies, GQA's narrower k/v and SwiGLU's three matrices as built."""
    cfg = GPTConfig(arch="llama", vocab_size=300, n_layer=3, n_head=4, n_kv_head=2, d_model=64, qkv_bias=True)
    cfg.tie_embeddings = tie
    m = build_model(cfg)
    lookup = 0 if tie else m.wte.weight.numel()  # an untied embedding is a lookup, not a matmul
    assert non_embedding_params(cfg) == m.num_params() - lookup


def test_the_speed_trial_and_auto_run_on_a_llama(tiny_corpus):
    """The paired trial (an A/A computes identical losses) and `auto`'s probe (bf16 checked against fp32 loss)
    on the llama, as on the GPT; its KV cache holds n_kv_head heads, not n_head."""
    from phase2_ray.core.autotune import probe
    from phase2_ray.core.specs import OptimizationSettings
    from phase2_ray.core.speedtrial import TrialSettings, paired_trial
    from phase2_ray.core.train import TrainSettings

    _, tok, train_ids, _ = tiny_corpus
    cfg = GPTConfig(
        arch="llama",
        vocab_size=tok.get_vocab_size(),
        block_size=16,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        d_model=16,
    )
    ts = TrainSettings(steps=100, batch_size=4, lr=1e-3, min_lr=1e-4, warmup_steps=2)
    a = paired_trial(
        cfg,
        ts,
        OptimizationSettings(),
        OptimizationSettings(),
        train_ids,
        TrialSettings(pairs=2, block_steps=1, warmup_steps=1),
    )
    assert a["losses_equal"] and all(p["a_s"] > 0 and p["b_s"] > 0 for p in a["pairs"])
    cands = {
        "eager-fp32": OptimizationSettings(),
        "fused+bf16": OptimizationSettings.of(fused_adamw=True, bf16=True),
    }
    results = probe(cfg, ts, cands, train_ids, steps=3, rounds=2, block_steps=1)
    assert {r.name for r in results} == set(cands) and all(r.mean_loss > 0 and r.block_s for r in results)
    dec = BatchDecoder(build_model(cfg), max_batch=3)
    assert dec.cache_bytes == cfg.n_layer * 2 * 3 * 2 * cfg.block_size * cfg.head_dim * 4  # 2 kv heads of 4


def test_a_saved_config_reads_back_for_either_arch():
    """A run directory's config.json states every default (what --resume reads back): it must validate again."""
    from phase2_ray.config import Config

    for sets in ([], ["model.arch=llama", "model.n_kv_head=2", "model.d_model=64"]):
        cfg = load_config(None, sets)
        again = Config.model_validate(cfg.model_dump(mode="json"))
        assert again.model == cfg.model
