"""The Serve application over real HTTP: streaming, non-streaming, and bad requests getting 4xx JSON. The API key
(401 without it) is checked on `phase2 serve` in tests/slow/test_process_hygiene.py."""

import json

import httpx
import pytest
import torch

from phase2_ray.config import ServeConfig
from phase2_ray.core.checkpoint import checkpoint_files
from phase2_ray.core.model import GPT, GPTConfig

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def base_url(serve_url, tiny_corpus):
    from ray import serve

    from phase2_ray.serving.build import APP_NAME, build_app, plain_specs

    _, tok, *_ = tiny_corpus
    cfg = {
        "vocab_size": tok.get_vocab_size(),
        "block_size": 32,
        "n_layer": 1,
        "n_head": 2,
        "d_model": 16,
        "dropout": 0.0,
    }
    torch.manual_seed(0)
    files = checkpoint_files(GPT(GPTConfig(**cfg)), {"model": cfg}, tok.to_str())
    # room for a chat template's wrapping around a message (chat tests)
    wide_cfg = {**cfg, "block_size": 128}
    wide = checkpoint_files(GPT(GPTConfig(**wide_cfg)), {"model": wide_cfg}, tok.to_str())
    serve_cfg = ServeConfig(cpus_per_replica=0, max_batch_size=4, max_waiting=8, api_key=None)
    serve.run(
        build_app(plain_specs({"tiny": files, "tiny2": files, "wide": wide}, "tiny"), serve_cfg),
        name=APP_NAME,
        route_prefix="/",
    )
    yield serve_url
    serve.delete(APP_NAME)


def sse_events(resp: httpx.Response) -> list:
    return [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]


def test_models_and_health(base_url):
    models = [m["id"] for m in httpx.get(f"{base_url}/v1/models").json()["data"]]
    assert models == ["tiny", "tiny-int8", "tiny2", "wide"]
    assert httpx.get(f"{base_url}/healthz").json()["status"] == "ok"


def test_streaming_completion(base_url):
    body = {"model": "tiny", "prompt": "def main():", "max_tokens": 7, "stream": True, "seed": 1}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    tokens = [c for c in chunks if c["choices"]]
    assert len(tokens) == 7 and tokens[-1]["choices"][0]["finish_reason"] == "length"
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 7 and usage["prompt_tokens"] >= 1


def test_non_streaming_is_the_same_text_for_the_same_seed(base_url):
    body = {"model": "tiny", "prompt": "import os", "max_tokens": 5, "seed": 3, "temperature": 0.7}
    a = httpx.post(f"{base_url}/v1/completions", json=body, timeout=30).json()
    with httpx.stream("POST", f"{base_url}/v1/completions", json={**body, "stream": True}, timeout=30) as r:
        streamed = "".join(
            json.loads(e)["choices"][0]["text"] for e in sse_events(r)[:-1] if json.loads(e)["choices"]
        )
    assert a["usage"]["completion_tokens"] == 5
    assert a["choices"][0]["text"] == streamed


POST = {"model": "tiny", "prompt": "x", "max_tokens": 2}


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({**POST, "model": "nope"}, 404, "unknown model"),
        ({**POST, "prompt": ""}, 400, "prompt"),
        ({**POST, "prompt": "x" * 20_000}, 400, "exceeds"),
        ({**POST, "max_tokens": 0}, 400, "max_tokens"),
        ({**POST, "max_tokens": 32}, 400, "context"),
        ({**POST, "prompt": "x " * 40}, 400, "context"),
        ({**POST, "temperature": 5}, 400, "temperature"),
        ({**POST, "temperature": -0.1}, 400, "temperature"),
        ({**POST, "top_p": 0}, 400, "top_p"),
        ({**POST, "top_p": 1.5}, 400, "top_p"),
        ({**POST, "top_k": 0}, 400, "top_k"),
        ({**POST, "stream": "yes"}, 400, "stream"),
        ({**POST, "max_tokens": "many"}, 400, "max_tokens"),
        ({**POST, "prompt": ["a", "b"]}, 400, "prompt"),
        ({"prompt": "x"}, 400, "model"),
        ([1, 2], 400, "JSON object"),
    ],
)
def test_bad_requests_get_4xx_json(base_url, body, status, fragment):
    r = httpx.post(f"{base_url}/v1/completions", json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"]
    assert httpx.get(f"{base_url}/healthz", timeout=10).status_code == 200  # still serving


@pytest.mark.parametrize(
    "content, ctype, status, fragment",
    [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b'{"model": "tiny", "prompt": "\xff\xfe"}', "application/json", 400, "UTF-8"),
        (json.dumps(POST).encode(), "text/plain", 415, "content-type"),
        (b'{"prompt": "' + b"x" * (1 << 20) + b'"}', "application/json", 413, "exceeds"),
    ],
)
def test_malformed_bodies_get_4xx_and_server_stays_healthy(base_url, content, ctype, status, fragment):
    r = httpx.post(f"{base_url}/v1/completions", content=content, headers={"content-type": ctype}, timeout=30)
    assert r.status_code == status and fragment in r.json()["error"]["message"]
    assert httpx.get(f"{base_url}/healthz").status_code == 200
    ok = httpx.post(f"{base_url}/v1/completions", json=POST, timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


def load(base_url: str, model: str, prompts: list[str], *, n: int, max_tokens: int, **kw) -> list[dict]:
    """`n` streaming requests, all in flight at once unless `concurrency` says otherwise, no warm-up."""
    from phase2_ray.loadtest.client import run_requests
    from phase2_ray.loadtest.plan import Endpoint, LevelSpec

    asking = {k: kw.pop(k) for k in ("temperature", "top_k", "seed") if k in kw}
    ep = Endpoint(
        **{"temperature": 0.8, "top_k": 20, "seed": 0, **asking},
        base_url=base_url,
        prompts=prompts,
        max_tokens=max_tokens,
        timeout_s=60,
    )
    return run_requests(ep, LevelSpec(**{"model": model, "n": n, "concurrency": n, **kw}))


def test_concurrent_requests_are_batched_and_all_complete(base_url, ray_cluster):
    """12 streams at once on a 4-slot engine that lets 8 wait: all finish, and steps held >1 sequence."""
    from phase2_ray.serving.build import replica_stats

    records = load(base_url, "tiny2", ["def f(x):", "import sys"], n=12, max_tokens=12)
    assert [r["ok"] for r in records] == [True] * 12
    # ITL is per token after the first arrival: each arrival's gap spread over the tokens it carries
    assert all(r["output_tokens"] == 12 == r["completion_tokens"] for r in records)
    assert all(len(r["itl_ms"]) == sum(r["tokens_per_write"]) - r["tokens_per_write"][0] for r in records)
    stats = replica_stats(1)[0]["models"]["tiny2"]
    assert stats["max_batch_seen"] > 1 and stats["max_batch_seen"] <= 4
    assert stats["engine_first_token_ms"]["n"] >= 12 and stats["engine_first_token_ms"]["p50"] > 0


def test_overload_gets_429_json_and_the_rest_complete(base_url):
    """40 long streams at once against 4 slots + 8 waiting: the excess is refused with 429, never a 500."""
    records = load(base_url, "tiny", ["x"], n=40, max_tokens=30)
    refused = [r for r in records if not r["ok"]]
    assert refused and all(r["status"] == 429 and "overloaded" in r["error"] for r in refused)
    assert len(records) - len(refused) >= 12
    assert httpx.get(f"{base_url}/healthz").status_code == 200


def test_int8_model_is_served_and_smaller(base_url):
    from phase2_ray.serving.build import replica_stats

    r = httpx.post(
        f"{base_url}/v1/completions", json={**POST, "model": "tiny-int8", "max_tokens": 4}, timeout=30
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    models = replica_stats(1)[0]["models"]
    assert models["tiny-int8"]["weight_bytes"] < 0.5 * models["tiny"]["weight_bytes"]


def test_openai_client_streams_and_lists_models(base_url):
    """The official `openai` client, unmodified, against the endpoint."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="not-checked", max_retries=0, timeout=30)
    assert sorted(m.id for m in client.models.list()) == ["tiny", "tiny-int8", "tiny2", "wide"]
    chunks = list(
        client.completions.create(model="tiny", prompt="class A:", max_tokens=6, stream=True, seed=2)
    )
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) == 6 and chunks[-1].usage.completion_tokens == 6
    full = client.completions.create(model="tiny2", prompt="class A:", max_tokens=6, seed=2)
    assert full.usage.completion_tokens == 6 and full.choices[0].finish_reason == "length"


def test_poisson_arrivals_are_spread_and_all_complete(base_url):
    """Open loop: 12 requests at a mean 40 req/s arrive over ~0.3 s instead of all at once."""
    records = load(
        base_url, "tiny", ["x"], n=12, max_tokens=4, temperature=0.0, top_k=None, seed=5, request_rate=40.0
    )
    assert all(r["ok"] for r in records)
    starts = sorted(r["start"] for r in records)
    # 11 exponential gaps of mean 25 ms: their sum is 0.275 s on average; far from a burst (< 10 ms)
    assert 0.05 < starts[-1] - starts[0] < 2.0


CHAT = {"model": "wide", "messages": [{"role": "user", "content": "def f():"}], "max_tokens": 6, "seed": 5}


def test_chat_streams_deltas_and_applies_the_template(base_url):
    from phase2_ray.serving.chat import render_chat

    with httpx.stream(
        "POST", f"{base_url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    opening, *deltas = [c for c in chunks if c["choices"]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"].startswith("chatcmpl-") for c in chunks)
    # a role-only opening delta, as OpenAI's and vLLM's streams begin; then one content delta per token
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(set(d["choices"][0]["delta"]) == {"content"} for d in deltas)
    assert len(deltas) == 6 and deltas[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    text = "".join(c["choices"][0]["delta"]["content"] for c in deltas)
    # the same sampling over the templated prompt through /v1/completions gives the same text: the template is
    # what the model saw (the default one: these checkpoints carry none)
    prompt = render_chat(CHAT["messages"])
    same = {"model": "wide", "prompt": prompt, "max_tokens": 6, "seed": 5}
    assert (
        httpx.post(f"{base_url}/v1/completions", json=same, timeout=30).json()["choices"][0]["text"] == text
    )
    assert (
        chunks[-1]["usage"]["prompt_tokens"]
        == httpx.post(f"{base_url}/v1/completions", json=same, timeout=30).json()["usage"]["prompt_tokens"]
    )
    whole = httpx.post(f"{base_url}/v1/chat/completions", json=CHAT, timeout=30).json()
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"] == {
        "role": "assistant",
        "content": text,
    }


def test_the_openai_client_chats_unmodified(base_url):
    import openai

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "import os"}]
    out = client.chat.completions.create(model="wide", messages=msgs, max_completion_tokens=5, seed=2)
    assert out.choices[0].message.role == "assistant" and out.usage.completion_tokens == 5
    stream = client.chat.completions.create(
        model="wide", messages=msgs, max_tokens=5, seed=2, stream=True, stream_options={"include_usage": True}
    )
    parts, usage = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(parts) == out.choices[0].message.content and usage.completion_tokens == 5
    assert client.completions.create(model="tiny", prompt="x", max_tokens=2).usage.completion_tokens == 2


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({**CHAT, "messages": []}, 400, "messages"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
        ({**CHAT, "messages": [{"role": "user"}]}, 400, "content"),
        ({**CHAT, "messages": "hello"}, 400, "messages"),
        ({**CHAT, "max_tokens": 3, "max_completion_tokens": 4}, 400, "disagree"),
        ({**CHAT, "model": "nope"}, 404, "unknown model"),
        ({**CHAT, "max_tokens": 500}, 400, "context"),
    ],
)
def test_bad_chat_requests_get_4xx_json(base_url, body, status, fragment):
    r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]


def test_the_load_generator_drives_chat(base_url):
    from phase2_ray.loadtest.client import run_requests
    from phase2_ray.loadtest.plan import Endpoint, LevelSpec

    ep = Endpoint(
        base_url=base_url,
        prompts=["def f():", "import os"],
        max_tokens=5,
        temperature=0.8,
        top_k=20,
        seed=0,
        timeout_s=60,
        api="chat",
    )
    recs = run_requests(ep, LevelSpec(model="wide", n=4, concurrency=2))
    assert len(recs) == 4 and all(r["ok"] and r["output_tokens"] == r["completion_tokens"] == 5 for r in recs)
    assert all(r["prompt_tokens"] > 10 for r in recs)  # the template's wrapping counted as prompt
