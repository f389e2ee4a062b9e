"""Checkpoints at a storage URI (`file://`, `s3://`, `gs://`) through pyarrow.fs, for checkpoints too large to
travel through the object store: the training actor writes them there, the Serve replicas and the driver read
them back. Without a URI, checkpoints travel as bytes through the object store and no filesystem is shared.

Credentials come from the environment, as pyarrow.fs reads them (AWS_* variables, instance roles, ...); an
S3-compatible server is reached with `s3://bucket/prefix?endpoint_override=host:port&scheme=http`."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from phase2_ray.core.checkpoint import META, TOKENIZER, WEIGHTS

SCHEMES = ("file", "s3", "gs")


def join(uri: str, *parts: str) -> str:
    """`uri` with path components appended, its query (endpoint options) kept."""
    u = urlsplit(uri)
    path = "/".join([u.path.rstrip("/"), *parts])
    return urlunsplit((u.scheme, u.netloc, path, u.query, ""))


def put_checkpoint(files: dict[str, bytes], uri: str, last: str = META) -> str:
    """Writes the files under `uri` (`last` last, so its presence means complete); returns `uri`.

    On a local filesystem each file goes to a temporary name and is renamed; an object-store PUT is atomic."""
    fs, path = pafs.FileSystem.from_uri(uri)
    fs.create_dir(path, recursive=True)
    local = isinstance(fs, pafs.LocalFileSystem)
    for name in sorted(files, key=lambda n: n == last):
        final = f"{path}/{name}"
        target = f"{final}.tmp-{secrets.token_hex(4)}" if local else final
        with fs.open_output_stream(target) as f:
            f.write(files[name])
        if local:
            fs.move(target, final)
    return uri


def get_checkpoint(uri: str, names: tuple[str, ...] = (WEIGHTS, META, TOKENIZER)) -> dict[str, bytes]:
    """The files `names` under `uri` as {name: bytes}; load_checkpoint verifies their sha256 afterwards."""
    fs, path = pafs.FileSystem.from_uri(uri)
    out = {}
    for name in names:
        try:
            with fs.open_input_stream(f"{path}/{name}") as f:
                out[name] = f.read()
        except FileNotFoundError as e:
            raise FileNotFoundError(f"checkpoint at {uri} lacks {name}") from e
    return out


def check_uri(uri: str) -> None:
    """Raises ValueError naming what is wrong, before anything runs: scheme, and whether pyarrow can open it."""
    u = urlsplit(uri)
    if u.scheme not in SCHEMES:
        raise ValueError(f"{uri!r}: scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
    if u.scheme != "file":
        # Opening an s3:// or gs:// filesystem asks the network (the bucket's region): here, only the syntax.
        if not u.netloc:
            raise ValueError(f"{uri!r}: no bucket (expected {u.scheme}://bucket/prefix)")
        return
    try:
        pafs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError variants for bad URIs
        raise ValueError(f"{uri!r}: pyarrow.fs cannot open it ({e})") from e


def materialize(spec: dict) -> dict:
    """A served model's spec with its checkpoint as bytes: read from `checkpoint_uri` when it has one."""
    if "checkpoint_uri" in spec:
        return {**spec, "checkpoint": get_checkpoint(spec["checkpoint_uri"])}
    return spec
