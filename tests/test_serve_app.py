"""The Serve application over real HTTP: streaming, non-streaming, and bad requests getting 4xx JSON."""

import json

import httpx
import pytest
import torch

from phase2_ray.core.checkpoint import checkpoint_files
from phase2_ray.core.model import GPT, GPTConfig
from tests.conftest import free_port

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def base_url(ray_cluster, tiny_corpus):
    from ray import serve

    from phase2_ray.stages.inference import APP_NAME, build_app

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
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"tiny": files, "tiny2": files}, 0, 1), name=APP_NAME, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def sse_events(resp: httpx.Response) -> list:
    return [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]


def test_models_and_health(base_url):
    assert [m["id"] for m in httpx.get(f"{base_url}/v1/models").json()["data"]] == ["tiny", "tiny2"]
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


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"model": "nope", "prompt": "x", "max_tokens": 2}, 404, "unknown model"),
        ({"model": "tiny", "prompt": "", "max_tokens": 2}, 400, "prompt"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 2, "temperature": 5}, 400, "temperature"),
        ({"model": "tiny", "prompt": "x " * 40, "max_tokens": 2}, 400, "context"),
        ({"prompt": "x"}, 400, "model"),
        ({"model": "tiny", "prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ],
)
def test_bad_requests_get_4xx_json(base_url, body, status, fragment):
    r = httpx.post(f"{base_url}/v1/completions", json=body, timeout=30)
    assert r.status_code == status
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"]


def test_malformed_json_and_server_stays_healthy(base_url):
    r = httpx.post(
        f"{base_url}/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "error" in r.json()
    assert httpx.get(f"{base_url}/healthz").status_code == 200


def test_openai_client_streams_and_lists_models(base_url):
    """The official `openai` client, unmodified, against the endpoint."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="not-checked", max_retries=0, timeout=30)
    assert sorted(m.id for m in client.models.list()) == ["tiny", "tiny2"]
    chunks = list(
        client.completions.create(model="tiny", prompt="class A:", max_tokens=6, stream=True, seed=2)
    )
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) == 6 and chunks[-1].usage.completion_tokens == 6
    full = client.completions.create(model="tiny2", prompt="class A:", max_tokens=6, seed=2)
    assert full.usage.completion_tokens == 6 and full.choices[0].finish_reason == "length"
