"""The Serve application's limits, for real, in the session's Serve: the `serve run` builder answers a completion;
a full Serve queue (`max_queued_requests`) answers 503 and an engine whose waiting room is full answers 429 with
`Retry-After`; autoscaling adds a replica under load and removes it after."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from phase2_ray.config import AutoscalingConfig, ServeConfig
from phase2_ray.core.checkpoint import checkpoint_files, save_dir
from phase2_ray.core.model import GPT, GPTConfig
from tests.conftest import ROOT

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def tiny(tiny_corpus):
    _, tok, *_ = tiny_corpus
    cfg = dict(vocab_size=tok.get_vocab_size(), block_size=128, n_layer=1, n_head=2, d_model=16, dropout=0.0)
    torch.manual_seed(0)
    return cfg, checkpoint_files(GPT(GPTConfig(**cfg)), {"model": cfg}, tok.to_str())


def _deploy(name: str, files, serve_cfg: ServeConfig) -> str:
    from ray import serve

    from phase2_ray.serving.build import build_app, plain_specs

    serve.run(build_app(plain_specs({"tiny": files}), serve_cfg), name=name, route_prefix=f"/{name}")
    return f"/{name}"


def _burst(url: str, n: int, max_tokens: int) -> list[httpx.Response]:
    """n streaming completions at once; each response read to its end."""

    def one(i: int) -> httpx.Response:
        body = {"model": "tiny", "prompt": "def", "max_tokens": max_tokens, "stream": True, "seed": i}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as r:
            r.read()
            return r

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_the_serve_run_builder_answers_a_completion(serve_url, tiny, tmp_path):
    """`serve run phase2_ray.serving.build:app config=... checkpoints=RUN_DIR`: the application the builder makes,
    deployed, serves every checkpoint of the run directory (and the int8 copy the config asks for)."""
    from ray import serve

    from phase2_ray.serving.build import app

    cfg, files = tiny
    for v in ("baseline", "optimized"):
        save_dir(files, tmp_path / "checkpoints" / v)
    application = app({"config": str(ROOT / "configs/smoke.yaml"), "checkpoints": str(tmp_path)})
    serve.run(application, name="builder", route_prefix="/builder")
    try:
        url = f"{serve_url}/builder"
        models = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]]
        assert models == ["baseline", "optimized", "optimized-int8"]
        body = {"model": "optimized-int8", "prompt": "import os", "max_tokens": 5, "temperature": 0}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    finally:
        serve.delete("builder")


def test_a_full_serve_queue_answers_503_and_a_full_waiting_room_429_with_retry_after(serve_url, tiny):
    from ray import serve

    _, files = tiny
    # Serve's own backpressure: one request in the replica, one queued, the rest refused by the proxy
    path = _deploy(
        "queue", files, ServeConfig(cpus_per_replica=0, max_ongoing_requests=1, max_queued_requests=1)
    )
    try:
        got = _burst(serve_url + path, 8, 100)
        codes = sorted(r.status_code for r in got)
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
    finally:
        serve.delete("queue")
    # the engine's: one cache slot, one waiting, the rest answered 429 with Retry-After as JSON
    path = _deploy("waiting", files, ServeConfig(cpus_per_replica=0, max_batch_size=1, max_waiting=1))
    try:
        got = _burst(serve_url + path, 8, 100)
        refused = [r for r in got if r.status_code == 429]
        assert refused and len(refused) < 8, [r.status_code for r in got]
        for r in refused:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "overloaded"
    finally:
        serve.delete("waiting")


def test_autoscaling_adds_a_replica_under_load_and_removes_it_after(serve_url, tiny):
    from ray import serve

    from phase2_ray.serving.app import DEPLOYMENT

    _, files = tiny
    scaling = AutoscalingConfig(
        min_replicas=1, max_replicas=2, target_ongoing_requests=1, upscale_delay_s=0.5, downscale_delay_s=2
    )
    path = _deploy("autoscale", files, ServeConfig(cpus_per_replica=0, autoscaling=scaling))

    def replicas() -> int:
        st = serve.status().applications["autoscale"].deployments[DEPLOYMENT]
        return st.replica_states.get("RUNNING", 0)

    try:
        assert replicas() == 1
        seen, deadline = 1, time.time() + 60
        with ThreadPoolExecutor(1) as pool:
            while seen < 2 and time.time() < deadline:  # bursts of 6 long streams until a second replica runs
                job = pool.submit(_burst, serve_url + path, 6, 120)
                while not job.done():
                    seen = max(seen, replicas())
                    time.sleep(0.2)
                assert all(r.status_code == 200 for r in job.result())
        assert seen == 2, "no second replica within 60 s of load"
        deadline = time.time() + 60
        while replicas() > 1 and time.time() < deadline:  # idle: back to min_replicas
            time.sleep(0.5)
        assert replicas() == 1
    finally:
        serve.delete("autoscale")
