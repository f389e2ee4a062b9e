"""Shared fixtures and the suite's three tiers:

- tests/unit/: no Ray cluster, seconds (`./dev test tests/unit`);
- tests/integration/: the session's Ray cluster, the pipeline, Serve (marker `integration`);
- tests/slow/: soak, faults, job submission, multi-node, interrupt (marker `slow`).

Every test gets its tier's marker from its folder, so `./dev test -m "not slow"` leaves the slow tier out; the
tiers run in that order (unit first), whatever paths are given."""

import os
import random
import socket
import sys
import zlib
from datetime import date
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "slow")


def benchmark(name: str):
    """A script of benchmarks/ as a module (benchmarks/ is not a package: its scripts import each other by name)."""
    import importlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


LEAN_2C = [
    "validation.concurrency=[1]",
    "validation.replica_sweep=[]",
    "validation.capacity.enabled=false",
    "validation.inprocess_reference=false",
    "serve.int8=false",
    # two copies of one tiny architecture: too noisy per round for a 10% serving margin (see test_pipeline_e2e)
    "targets.serving_regression_pct_max=100",
]
"""A smoke run's 2c kept lean (one level, no sweep, no capacity search, no int8 copy): for runs about the decision."""


def free_port() -> int:
    """A port nothing listens on now (Serve's proxy uses SO_REUSEPORT: a shared port would split traffic)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tier(item: pytest.Item) -> str | None:
    try:
        rel = Path(item.fspath).resolve().relative_to(TESTS)
    except ValueError:
        return None
    return rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in TIERS else None


# tests/ci holds what runs after the suite in .ci/run (the default config end to end, ~4 min): left out of the
# suite's own 15-minute run unless asked for.
collect_ignore = [] if os.environ.get("PHASE2_CI_E2E") else ["ci"]


def pytest_configure(config: pytest.Config) -> None:
    # Every report.json the suite writes (in this process, in `phase2` subprocesses and benchmarks, which inherit
    # the variable) is checked against report.json's models as it is written: a mismatch fails the write, and so the
    # test, instead of the warning a user's run gets.
    os.environ["PHASE2_STRICT_SCHEMA"] = "1"
    # The test process's own torch work is tiny models (the unit tier, the driver's side of a run) on a machine
    # whose cores the Ray actors also use: one intra-op thread, as each training actor has. Two threads spinning
    # against busy cores made a 16-wide model's step 20-50x slower (measured: 10 ms -> 200-600 ms under load).
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = _tier(item)
        if tier in ("integration", "slow"):
            item.add_marker(tier)
        if tier == "unit" and "ray_cluster" in item.fixturenames:
            raise pytest.UsageError(
                f"{item.nodeid}: a unit test may not use the Ray cluster (move it to integration)"
            )
    # unit first, then integration, then slow; within a tier the collected (file) order is kept
    items.sort(key=lambda it: TIERS.index(_tier(it)) if _tier(it) else 0)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_ray(request: pytest.FixtureRequest):
    """A unit test that starts Ray in this process fails: it belongs in tests/integration."""

    def ray_up() -> bool:
        return "ray" in sys.modules and sys.modules["ray"].is_initialized()

    before = ray_up()
    yield
    if _tier(request.node) == "unit" and ray_up() and not before:
        pytest.fail("this unit test started Ray in the test process: move it to tests/integration")


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (start-up costs seconds)."""
    import ray

    # Metrics reach the node's Prometheus endpoint every second instead of every 10 s: the metrics tests wait
    # for an export (what they check is unchanged). An idle worker process is kept for 10 minutes instead of 1 s,
    # so a later test's tasks (speed trials, references) start in a worker that has imported torch already
    # (seconds of CPU each, on a machine whose two cores every test shares; Ray keeps at most as many idle workers
    # as there are free CPUs); each task and actor still sets its own threads and cores.
    ray.init(
        # not None: ray.init() would join the cluster last recorded in /tmp/ray/ray_current_cluster (the cluster
        # job's, which starts first: `cluster_job` below)
        address="local",
        num_cpus=2,
        include_dashboard=False,
        namespace="phase2",
        log_to_driver=False,
        _system_config={"metrics_report_interval_ms": 1000, "idle_worker_killing_time_threshold_ms": 600_000},
    )
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


CLUSTER_JOB = "tests/slow/test_cluster_job.py::"


@pytest.fixture(scope="session", autouse=True)
def cluster_job(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The job on a simulated three-node cluster (tests/slow/test_cluster_job.py), started when the session starts
    if that test is selected; the test waits for it. It runs in processes of its own, on a cluster of its own, for
    about a minute, most of it start-ups; started first, it overlaps the unit tier, which keeps one of the two
    cores busy, instead of adding its time at the end."""
    if not any(item.nodeid.startswith(CLUSTER_JOB) for item in request.session.items):
        yield None
        return
    from tests.slow.test_cluster_job import start

    job = start(tmp_path_factory.mktemp("cluster_job"))
    yield job
    job.stop()


@pytest.fixture(scope="session")
def serve_url(ray_cluster) -> str:
    """One Serve instance for the session (a start costs seconds), as on a long-lived cluster: pipeline runs
    deploy their application into it and delete only that application at the end; fixtures that deploy an
    application of their own delete it when done. Its proxy's port is a free one."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def tiny_corpus():
    """Real text (stdlib source), a small tokenizer and token ids, shared by the core tests."""
    from phase2_ray.core import data

    corpus = data.load_corpus(data.stdlib_files(), 60_000, 0.1)
    tok = data.train_tokenizer(corpus.train_text, 400)
    return corpus, tok, data.encode(tok, corpus.train_text), data.encode(tok, corpus.val_text)


GPT2_SHAPE = {"n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 2}
"""The shape of `hf_gpt2`'s model (transformers' GPT2Config names)."""


@pytest.fixture(scope="session")
def hf_gpt2(tmp_path_factory, tiny_corpus):
    """A small GPT-2 that transformers built and saved (nothing downloaded), with `tiny_corpus`'s tokenizer. Its
    linear biases are non-zero, as a real GPT-2's are, and its matrices scaled up so that greedy picks are not
    near-ties and a dropped bias would show."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tok, *_ = tiny_corpus
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.get_vocab_size(), **GPT2_SHAPE))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.3)
            elif p.dim() == 2:
                p.mul_(8.0)
    d = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(d)
    (d / "tokenizer.json").write_text(tok.to_str())
    return d


@pytest.fixture(scope="session")
def smoke_init(tmp_path_factory) -> Path:
    """configs/smoke.yaml without its model section and vocabulary size, for model.init_from (keys a config
    states must match the checkpoint's)."""
    import yaml

    raw = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())
    raw.pop("model")
    raw["data"].pop("vocab_size")
    path = tmp_path_factory.mktemp("cfg") / "smoke-init.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


LLAMA_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
"""The shape of `hf_llamas`' models (transformers' names): grouped-query attention, an MLP width off Llama's rule."""
LLAMA_FAMILY = {
    # untied, with Llama 3.1's rope scaling
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            }
        },
    ),
    # tied, q/k/v biases, saved in shards
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    # MistralConfig's default window of 4096 is longer than the context: it changes nothing, and is accepted
    "mistral": ("MistralConfig", "MistralForCausalLM", {"rope_theta": 1e6}),
}


@pytest.fixture(scope="session")
def hf_llamas(tmp_path_factory, tiny_corpus) -> dict[str, Path]:
    """One small model of each Llama family that transformers built from its own config class and saved (nothing
    downloaded), with `tiny_corpus`'s tokenizer. Matrices scaled up and norms' gains and biases random, so greedy
    picks are not near-ties and a dropped bias or a swapped half would show."""
    import torch
    import transformers

    _, tok, *_ = tiny_corpus
    out = {}
    for kind, (config_cls, model_cls, extra) in LLAMA_FAMILY.items():
        torch.manual_seed(0)
        config = getattr(transformers, config_cls)(vocab_size=tok.get_vocab_size(), **LLAMA_SHAPE, **extra)
        model = getattr(transformers, model_cls)(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0.0, 0.3)
                elif name.endswith("norm.weight"):
                    p.uniform_(0.5, 1.5)
                else:
                    p.mul_(4.0)
        d = tmp_path_factory.mktemp(kind)
        model.save_pretrained(d, max_shard_size="100KB" if kind == "qwen2" else "50GB")
        (d / "tokenizer.json").write_text(tok.to_str())
        out[kind] = d
    return out


@pytest.fixture
def kill_rng(request) -> random.Random:
    """A seeded random for where a fault test kills: the seed is the test's id hashed with today's date (other
    points on other days), or PHASE2_TEST_SEED when set, which reproduces a failure: the seed is printed, and
    pytest shows it with a failing test's output."""
    env = os.environ.get("PHASE2_TEST_SEED")
    seed = int(env) if env else zlib.crc32(f"{request.node.nodeid}:{date.today()}".encode())
    print(f"kill point seed {seed} (PHASE2_TEST_SEED={seed} reproduces it)")
    return random.Random(seed)


def exit_2_line(config: Path, out: Path, sets: list[str], capsys) -> str:
    """`phase2 run -c CONFIG --set ...` must exit 2 (a config error, before Ray starts) with one line on stderr:
    returns that line."""
    from phase2_ray.cli import main

    args = ["run", "-c", str(config), "--output", str(out)] + [x for s in sets for x in ("--set", s)]
    assert main(args) == 2, sets
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("phase2: "), err
    return err
