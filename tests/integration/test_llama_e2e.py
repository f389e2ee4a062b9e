"""Llama-family models through the product, on Ray: the Serve engine's temperature-0 completion against
transformers' greedy `generate` for each family, and a whole pipeline run (2a-2d) that starts from a Qwen2
directory transformers built and saved, trains both variants, serves them with their int8 copy, exports them back
to Hugging Face and is approved under lenient targets (this run is about the architecture, not the optimization)."""

import contextlib
import io
import json
import threading

import httpx
import pytest
import ray
import torch

from phase2_ray import cli
from phase2_ray.config import ServeConfig
from phase2_ray.configure import load_config
from phase2_ray.core.checkpoint import checkpoint_files, load_checkpoint, read_dir
from phase2_ray.core.model import GPTConfig, build_model
from phase2_ray.core.train import evaluate, val_offsets
from phase2_ray.dataprep import prepare_data
from phase2_ray.pretrained import load_init
from tests.conftest import LLAMA_FAMILY
from tests.integration.test_init_from_mlflow import LENIENT

pytestmark = pytest.mark.ray
APP, ROUTE = "llama-family", "/llama-family"


def test_the_serve_engine_completes_as_transformers_generates(serve_url, hf_llamas, smoke_init):
    from ray import serve
    from transformers import AutoModelForCausalLM

    from phase2_ray.serving.build import build_app, plain_specs

    files, toks = {}, {}
    for kind in LLAMA_FAMILY:
        cfg = load_config(smoke_init, [f"model.init_from={hf_llamas[kind]}"])
        init = load_init(cfg)
        model = build_model(GPTConfig(**cfg.model.gpt_fields(cfg.data.vocab_size)))
        model.load_state_dict(init.state)
        files[kind] = checkpoint_files(
            model, {"model": cfg.model.gpt_fields(cfg.data.vocab_size)}, init.tokenizer.to_str()
        )
        toks[kind] = init.tokenizer
    serve.run(
        build_app(plain_specs(files), ServeConfig(cpus_per_replica=0, int8=False)),
        name=APP,
        route_prefix=ROUTE,
    )
    prompt, n = "def main(argv):\n    return", 20
    try:
        for kind in LLAMA_FAMILY:
            body = {"model": kind, "prompt": prompt, "max_tokens": n, "temperature": 0}
            served = httpx.post(f"{serve_url}{ROUTE}/v1/completions", json=body, timeout=60).json()
            hf = AutoModelForCausalLM.from_pretrained(hf_llamas[kind], dtype=torch.float32).eval()
            x = torch.tensor([toks[kind].encode(prompt).ids])
            greedy = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n)
            assert served["usage"]["completion_tokens"] == n
            assert served["choices"][0]["text"] == toks[kind].decode(greedy[0, x.shape[1] :].tolist()), kind
    finally:
        serve.delete(APP)


@pytest.fixture(scope="module")
def qwen_run(serve_url, hf_llamas, smoke_init, tmp_path_factory):
    out = tmp_path_factory.mktemp("qwen-run")
    sets = [f"model.init_from={hf_llamas['qwen2']}", "export.hf=true", *LENIENT]
    buf, names, done = io.StringIO(), set(), threading.Event()

    def watch() -> None:  # the named actors while they live, as the dashboard's Actors page lists them
        while not done.is_set():
            names.update(a["name"] for a in ray.util.list_named_actors(all_namespaces=True))
            done.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with contextlib.redirect_stdout(buf):
            rc = cli.main(
                ["run", "-c", str(smoke_init), "--output", str(out), "--json-logs"]
                + [a for s in sets for a in ("--set", s)]
            )
    finally:
        done.set()
        watcher.join()
    report = json.loads((out / "report.json").read_text())
    return rc, out, report, load_config(smoke_init, sets), buf.getvalue(), names


def test_a_run_from_a_qwen2_directory_is_approved_and_exports_back(qwen_run, hf_llamas):
    from transformers import AutoModelForCausalLM

    rc, out, report, cfg, *_ = qwen_run
    failing = [g for g in report["decision"]["gates"] if not g["passed"]]
    assert rc == 0 and report["decision"]["outcome"] == "approved", failing
    assert report["init_from"]["kind"] == "hf-qwen2"
    m = report["config"]["model"]
    assert (m["arch"], m["n_kv_head"], m["qkv_bias"], m["tie_embeddings"]) == ("llama", 2, True, True)
    # both variants started from the Qwen2's own weights: their first val loss is its loss
    d = prepare_data(cfg)
    ours = build_model(GPTConfig(**cfg.model.gpt_fields(d.vocab_size)))
    ours.load_state_dict(d.init.state)
    offsets = val_offsets(len(d.val_tokens), cfg.model.block_size, cfg.training.eval_windows)
    want = evaluate(ours, d.val_tokens, offsets, cfg.training.batch_size)
    for v in ("baseline", "optimized"):
        t = report["training"][v]
        assert t["initial_val_loss"] == pytest.approx(want, rel=1e-5)
        assert t["val_loss"] < t["initial_val_loss"]  # it trained
        assert 0 < t["mfu"]["value"] < 1
    # served: both variants and the int8 copy answered every request
    for name in ("baseline", "optimized", "optimized-int8"):
        assert report["inference"][name]["success_rate"] == 1.0, name
    # exported back as a Qwen2 that transformers loads, with the trained weights
    hf = AutoModelForCausalLM.from_pretrained(report["exports"]["hf"]["optimized"]).eval()
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    trained, _, tok = load_checkpoint(read_dir(out / "checkpoints" / "optimized"))
    x = torch.tensor([tok.encode("import os\nprint(os.getcwd())").ids])
    with torch.no_grad():
        ref, theirs = trained(x)[0], hf(x).logits
    assert (ref - theirs).abs().max().item() < 1e-4 * ref.abs().max().item()


def test_the_json_log_stream_parses_line_by_line_and_ends_with_the_report(qwen_run):
    """--json-logs as a CI job reads it: every stdout line a JSON object with a stable event name, in time order,
    the last one naming the report and the exit code."""
    rc, out, report, _, stdout, _ = qwen_run
    lines = [json.loads(line) for line in stdout.splitlines()]  # each line parses, or this raises
    events = [x["event"] for x in lines]
    assert {"run.start", "train.done", "serve.ready", "load.level", "run.decision"} <= set(events), events
    assert all(isinstance(x["message"], str) for x in lines)
    times = [x["t_s"] for x in lines if "t_s" in x]
    assert times == sorted(times)
    assert lines[-1] == {
        "event": "run.report",
        "message": str(out / "report.md"),
        "path": str(out / "report.md"),
        "exit_code": rc,
    }


def test_the_actors_carry_their_dashboard_names(qwen_run):
    """The names the dashboard's Actors page shows, as Ray registered them while the run went on (the test
    session's Ray has no dashboard for ray.util.state to ask): the training actors and load clients of this run,
    under `<run_id>:train:<variant>` and `<run_id>:2c:client<i>`."""
    run_id, names = qwen_run[2]["run_id"], qwen_run[5]
    mine = {n for n in names if n.startswith(f"{run_id}:")}
    want = {f"{run_id}:train:baseline", f"{run_id}:train:optimized", f"{run_id}:2c:client0"}
    assert want <= mine, sorted(mine)
