"""Workloads (phase2_ray/workload.py): lengths drawn from distributions, prompts from JSONL or ShareGPT
files, seeded, always fitting the model's context. Bad files exiting 2 is tests/unit/test_bad_input.py."""

import json

from phase2_ray.config.serving import WorkloadConfig
from phase2_ray.workload import build_workload

BLOCK = 64


def build(tiny_corpus, seed=0, **cfg):
    _, tok, _, val = tiny_corpus
    w = build_workload(
        WorkloadConfig(**cfg),
        tok,
        val.tolist(),
        block_size=BLOCK,
        default_prompt_tokens=8,
        default_max_tokens=16,
        seed=seed,
    )
    return w, tok


def test_drawn_lengths_follow_their_distributions_and_the_seed(tiny_corpus):
    w, tok = build(
        tiny_corpus,
        count=200,
        prompt_tokens={"dist": "uniform", "min": 4, "max": 24},
        output_tokens={"dist": "normal", "mean": 20, "std": 6, "min": 8, "max": 32},
    )
    outs = [m for _, m in w.requests]
    plens = [len(tok.encode(p).ids) for p, _ in w.requests]
    assert len(w.requests) >= 190  # a cut that decodes to whitespace only is dropped
    assert min(outs) >= 8 and max(outs) <= 32 and 17 < sum(outs) / len(outs) < 23
    assert len(set(outs)) > 10 and len(set(plens)) > 10  # drawn, not fixed
    assert all(p + o <= BLOCK for p, o in zip(plens, outs, strict=True))
    assert build(tiny_corpus, count=200, prompt_tokens={"dist": "uniform", "min": 4, "max": 24})[
        0
    ].requests == (
        build(tiny_corpus, count=200, prompt_tokens={"dist": "uniform", "min": 4, "max": 24})[0].requests
    )
    other = build(tiny_corpus, seed=1, count=200, prompt_tokens={"dist": "uniform", "min": 4, "max": 24})[0]
    assert other.requests != w.requests
    assert "uniform[4, 24]" in w.source and w.summary()["requests"] == len(w.requests)


def test_an_int_is_a_fixed_length(tiny_corpus):
    w, _ = build(tiny_corpus, count=10, output_tokens=12)
    assert {m for _, m in w.requests} == {12}


def test_jsonl_and_sharegpt_files_give_prompts_that_fit_the_context(tiny_corpus, tmp_path):
    long = "def f(x):\n    return x\n" * 200
    f = tmp_path / "w.jsonl"
    f.write_text(
        json.dumps({"prompt": "import os", "max_tokens": 5}) + "\n\n" + json.dumps({"prompt": long}) + "\n"
    )
    w, tok = build(tiny_corpus, file=str(f))
    assert w.requests[0] == ("import os", 5) and w.requests[1][1] == 16  # max_tokens defaults
    assert w.truncated == 1 and len(tok.encode(w.requests[1][0]).ids) <= BLOCK - 16
    g = tmp_path / "share.json"
    g.write_text(
        json.dumps(
            [
                {
                    "conversations": [
                        {"from": "human", "value": "class A:"},
                        {"from": "gpt", "value": "a b c"},
                    ]
                },
                {"conversations": [{"from": "gpt", "value": "no question"}]},
            ]
        )
    )
    w, _ = build(tiny_corpus, file=str(g))
    assert w.requests == [
        ("class A:", 3)
    ]  # the reply's words; a conversation without a human turn is skipped
