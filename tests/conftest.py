import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port nothing listens on now (Serve's proxy uses SO_REUSEPORT: a shared port would split traffic)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (start-up costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, namespace="phase2", log_to_driver=False)
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_corpus():
    """Real text (stdlib source), a small tokenizer and token ids, shared by the core tests."""
    from phase2_ray.core import data

    corpus = data.load_corpus(data.stdlib_files(), 60_000, 0.1)
    tok = data.train_tokenizer(corpus.train_text, 400)
    return corpus, tok, data.encode(tok, corpus.train_text), data.encode(tok, corpus.val_text)
