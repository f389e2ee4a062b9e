"""Checkpoints at a storage URI: the pyarrow.fs round trip (file:// and a loopback S3) and bad URIs, without Ray.
The pipeline with storage.uri set is tests/integration/test_pipeline_e2e.py (test_pipeline_with_a_storage_uri)."""

import pytest

from phase2_ray.cli import main
from phase2_ray.core.checkpoint import META, load_checkpoint
from phase2_ray.storage import check_uri, get_checkpoint, join, materialize, put_checkpoint
from tests.conftest import ROOT, free_port


def _files(tok) -> dict[str, bytes]:
    from phase2_ray.core.checkpoint import checkpoint_files
    from phase2_ray.core.model import GPT, GPTConfig

    cfg = dict(vocab_size=tok.get_vocab_size(), block_size=16, n_layer=1, n_head=2, d_model=16)
    return checkpoint_files(GPT(GPTConfig(**cfg)), {"model": cfg}, tok.to_str())


def test_file_uri_round_trip_is_complete_and_leaves_no_temp_files(tmp_path, tiny_corpus):
    files = _files(tiny_corpus[1])
    uri = join(f"file://{tmp_path}/store", "run1", "baseline")
    assert put_checkpoint(files, uri) == uri
    on_disk = sorted(p.name for p in (tmp_path / "store" / "run1" / "baseline").iterdir())
    assert on_disk == sorted(files)  # no .tmp-* left behind
    got = get_checkpoint(uri)
    assert got == files
    model, meta, _ = load_checkpoint(materialize({"checkpoint_uri": uri})["checkpoint"])
    assert meta["model"]["d_model"] == 16
    # A missing file is named; a corrupted one fails load_checkpoint's sha256 check.
    (tmp_path / "store" / "run1" / "baseline" / META).unlink()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        get_checkpoint(uri)


def test_join_keeps_the_endpoint_query():
    uri = "s3://bucket/pre?endpoint_override=127.0.0.1:9000&scheme=http"
    assert join(uri, "run", "v") == "s3://bucket/pre/run/v?endpoint_override=127.0.0.1:9000&scheme=http"


@pytest.mark.parametrize(
    "uri, message", [("ftp://host/x", "scheme must be one of"), ("s3:///prefix-only", "no bucket")]
)
def test_bad_uris_are_named(uri, message):
    with pytest.raises(ValueError, match=message):
        check_uri(uri)


def test_config_rejects_a_non_uri(tmp_path, capsys):
    rc = main(["run", "-c", str(ROOT / "configs" / "smoke.yaml"), "--set", "storage.uri=/plain/path"])
    assert rc == 2 and "storage.uri" in capsys.readouterr().err


@pytest.fixture
def s3_server(monkeypatch):
    """moto's S3 server on a free loopback port: real S3 HTTP requests, no AWS account."""
    from moto.server import ThreadedMotoServer

    for k, v in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


def test_s3_uri_round_trip(s3_server, tiny_corpus):
    import boto3

    boto3.client("s3", endpoint_url=f"http://{s3_server}").create_bucket(Bucket="ckpts")
    base = f"s3://ckpts/phase2?endpoint_override={s3_server}&scheme=http&region=us-east-1"
    check_uri(base)
    files = _files(tiny_corpus[1])
    uri = put_checkpoint(files, join(base, "run1", "optimized"))
    assert get_checkpoint(uri) == files
    keys = boto3.client("s3", endpoint_url=f"http://{s3_server}").list_objects_v2(Bucket="ckpts")["Contents"]
    objects = [k["Key"] for k in keys if not k["Key"].endswith("/")]  # pyarrow also writes directory markers
    assert sorted(objects) == sorted(f"phase2/run1/optimized/{n}" for n in files)
    _, meta, _ = load_checkpoint(get_checkpoint(uri))
    assert meta["model"]["n_layer"] == 1
