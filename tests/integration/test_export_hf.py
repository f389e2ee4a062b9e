"""`phase2 export --format hf`: transformers loads the directory with no custom code, its logits match ours within
fp32 tolerance, and its greedy generation equals the Serve engine's temperature-0 completion of the same prompt.
This checks the exporter and, through an implementation nobody here wrote, our own engine."""

import httpx
import pytest
import torch

from phase2_ray.cli import main as phase2
from phase2_ray.config import ServeConfig
from phase2_ray.core.checkpoint import checkpoint_files, save_dir
from phase2_ray.core.model import GPT, GPTConfig

pytestmark = pytest.mark.ray
APP, ROUTE = "export-hf", "/export-hf"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_corpus):
    """A run directory with one checkpoint whose logits are peaked (random weights scaled up), so greedy picks
    are not near-ties that rounding could flip."""
    _, tok, *_ = tiny_corpus
    cfg = {"vocab_size": tok.get_vocab_size(), "block_size": 64, "n_layer": 2, "n_head": 2, "d_model": 32}
    torch.manual_seed(0)
    model = GPT(GPTConfig(**cfg, dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(8.0)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    d = tmp_path_factory.mktemp("run")
    save_dir(
        checkpoint_files(model, {"model": {**cfg, "dropout": 0.0}}, tok.to_str()),
        d / "checkpoints" / "optimized",
    )
    return d


def test_export_loads_in_transformers_and_matches_our_logits_and_the_engines_greedy_tokens(
    run_dir, tmp_path, serve_url, tiny_corpus
):
    from ray import serve
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phase2_ray.core.checkpoint import load_checkpoint, read_dir
    from phase2_ray.serving.build import build_app, plain_specs

    out = tmp_path / "hf"
    assert phase2(["export", str(run_dir), "--format", "hf", "--output", str(out)]) == 0
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert type(hf).__name__ == "GPT2LMHeadModel"
    files = read_dir(run_dir / "checkpoints" / "optimized")
    ours, _, tok = load_checkpoint(files)
    prompt = "def main(argv):\n    return"
    ids = tok.encode(prompt).ids
    assert hf_tok(prompt)["input_ids"] == ids  # the same tokenizer, read by transformers
    x = torch.tensor([ids])
    with torch.no_grad():
        ref, theirs = ours(x)[0], hf(x).logits
    assert (ref - theirs).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())

    n = 20
    greedy = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n)[
        0, len(ids) :
    ]
    assert len(greedy) == n  # no early stop: the checkpoint never produced the end-of-text token here
    serve.run(
        build_app(plain_specs({"optimized": files}), ServeConfig(cpus_per_replica=0, int8=False)),
        name=APP,
        route_prefix=ROUTE,
    )
    try:
        body = {"model": "optimized", "prompt": prompt, "max_tokens": n, "temperature": 0}
        served = httpx.post(f"{serve_url}{ROUTE}/v1/completions", json=body, timeout=60).json()
    finally:
        serve.delete(APP)
    assert served["choices"][0]["text"] == tok.decode(greedy.tolist())


@pytest.mark.parametrize(
    ("variant", "fragment"),
    [("optimized-int8", "is not exported"), ("baseline", "no checkpoint of variant 'baseline'")],
)
def test_export_refuses_what_it_cannot_write_with_one_line(run_dir, tmp_path, capsys, variant, fragment):
    assert phase2(["export", str(run_dir), "--variant", variant, "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x" / "config.json").exists()
