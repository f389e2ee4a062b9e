"""Stage 2c's Serve application: InferenceScalingEngine, an OpenAI-compatible completions server.

One deployment, FastAPI ingress, every model id loaded in each replica. Why not one deployment per variant behind
a router: each Serve hop costs ~6 ms here (a handle call measured 9 ms against 3 ms for a plain actor call), and
the proxy cannot route on the `model` field of a JSON body (Serve multiplexing routes on a header, which OpenAI
clients do not send). The models are small, so holding all of them costs less than a hop; each model's own bytes
(weights + KV cache) are reported separately from the replica's RSS.

Run it alone with `phase2 serve -c CONFIG --checkpoints RUN_DIR`, or
`serve run phase2_ray.stages.inference:app config=CONFIG checkpoints=RUN_DIR`."""

import json
import os
import resource
import sys
import time
import uuid
from pathlib import Path

import psutil
import ray
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from ray import serve

from phase2_ray.core.checkpoint import read_dir
from phase2_ray.core.compress import load_for_serving, weight_bytes
from phase2_ray.core.engine import AsyncBatchEngine, IncrementalDetokenizer, Overloaded
from phase2_ray.core.generate import SamplingParams
from phase2_ray.stages.nodes import assigned_device
from phase2_ray.storage import materialize

APP_NAME = "phase2"
DEPLOYMENT = "InferenceScalingEngine"
INT8_SUFFIX = "-int8"
MAX_BODY_BYTES = 1 << 20


class CompletionRequest(BaseModel):
    """The subset of OpenAI's completions request this server honours; unknown fields are ignored, as OpenAI
    clients send some (e.g. `n`, `logprobs`) with their defaults."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str = Field(description="Model id (see GET /v1/models).")
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = None
    stream: StrictBool = False


def _error(status: int, message: str, kind: str = "invalid_request_error", headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


api = FastAPI(title="phase2_ray inference", docs_url=None, redoc_url=None)


@serve.deployment(name=DEPLOYMENT, health_check_period_s=5)
@serve.ingress(api)
class InferenceScalingEngine:
    """Loads each model id's checkpoint (compressing the `-int8` ones) and serves them with continuous batching."""

    def __init__(self, models: dict[str, dict], settings: dict) -> None:
        torch.set_num_threads(settings["threads"])
        # Serve ships response chunks from its own thread while the decode loop runs Python on the user-code
        # thread; at CPython's default 5 ms switch interval each chunk could wait that long for the GIL.
        sys.setswitchinterval(settings.get("switch_interval_s", 0.0005))
        self.settings = settings
        self.engines: dict[str, AsyncBatchEngine] = {}
        self.tokenizers, self.meta, self.weight_bytes = {}, {}, {}
        self.device = assigned_device()
        self.sources: dict[str, str] = {}
        for model_id, spec in models.items():
            model, meta, tok = load_for_serving(materialize(spec), self.device)
            self.sources[model_id] = spec.get("checkpoint_uri", "object store")
            self.engines[model_id] = AsyncBatchEngine(model, settings["max_batch"], settings["max_waiting"])
            self.tokenizers[model_id], self.meta[model_id] = tok, meta
            self.weight_bytes[model_id] = weight_bytes(model)
        self.replica_id = serve.get_replica_context().replica_id.unique_id

    def _authorized(self, request: Request) -> bool:
        key = self.settings.get("api_key")
        return not key or request.headers.get("authorization", "") == f"Bearer {key}"

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "models": sorted(self.engines)}

    @api.get("/v1/models")
    def models(self, request: Request):
        if not self._authorized(request):
            return _error(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")
        return {
            "object": "list",
            "data": [{"id": m, "object": "model", "owned_by": "phase2_ray"} for m in sorted(self.engines)],
        }

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        if not self._authorized(request):
            return _error(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")
        req = await self._parse(request)
        if isinstance(req, JSONResponse):
            return req
        engine, tok = self.engines[req.model], self.tokenizers[req.model]
        ids = tok.encode(req.prompt).ids
        params = SamplingParams(req.max_tokens, req.temperature, req.top_k, req.top_p, req.seed)
        gen = engine.generate(ids, params)
        try:
            first = (
                await gen.__anext__()
            )  # validation and admission errors surface here, before any byte is sent
        except ValueError as e:
            return _error(400, str(e))
        except Overloaded as e:
            return _error(429, f"server busy: {e}; retry later", "overloaded", {"Retry-After": "1"})
        rid, created = f"cmpl-{uuid.uuid4().hex[:16]}", int(time.time())
        detok = IncrementalDetokenizer(tok)

        def chunk(text: str, finish: str | None) -> dict:
            return {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": req.model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            }

        def usage(n: int) -> dict:
            return {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}

        if not req.stream:
            tokens = list(first)
            async for more in gen:
                tokens += more
            return {**chunk("".join(detok.push(t) for t in tokens), "length"), "usage": usage(len(tokens))}

        interval = self.settings["stream_interval_ms"] / 1000.0
        per_write = self.settings["stream_batch_tokens"]
        sent = [0]

        def sse(tokens: list[int]) -> str:
            parts = []
            for t in tokens:
                sent[0] += 1
                finish = "length" if sent[0] == req.max_tokens else None
                parts.append(f"data: {json.dumps(chunk(detok.push(t), finish))}\n\n")
            return "".join(parts)

        async def events():
            yield sse(first)  # the first token goes out at once: it is the TTFT
            flushed, pending = time.perf_counter(), []
            async for batch in gen:
                pending += batch
                now = time.perf_counter()
                # Every write costs Serve ~1 ms of CPU (a hop to the proxy, then the socket) whatever its size,
                # so tokens go out `per_write` at a time (still one SSE event per token), or sooner when the
                # oldest has waited `interval`: the write rate per stream stays flat as load grows.
                if len(pending) >= per_write or now - flushed >= interval:
                    yield sse(pending)
                    flushed, pending = now, []
            if pending:
                yield sse(pending)
            tail = {"id": rid, "object": "text_completion", "created": created, "model": req.model}
            yield f"data: {json.dumps({**tail, 'choices': [], 'usage': usage(sent[0])})}\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _parse(self, request: Request) -> CompletionRequest | JSONResponse:
        """The request body as a CompletionRequest, or the 4xx that says what is wrong with it."""
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            return _error(415, f"content-type must be application/json, got {ctype or 'none'!r}")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
        try:
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            return _error(400, "body is not valid UTF-8")
        except ValueError as e:
            return _error(400, f"body is not valid JSON: {e}")
        if not isinstance(data, dict):
            return _error(400, f"body must be a JSON object, got {type(data).__name__}")
        try:
            req = CompletionRequest.model_validate(data)
        except ValidationError as e:
            parts = [f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()]
            return _error(400, "; ".join(parts))
        if req.model not in self.engines:
            return _error(404, f"unknown model {req.model!r}; served: {sorted(self.engines)}", "not_found")
        if len(req.prompt) > self.settings["max_prompt_chars"]:
            return _error(
                400, f"prompt of {len(req.prompt)} chars exceeds {self.settings['max_prompt_chars']}"
            )
        return req

    def stats(self) -> dict:
        """This replica's memory (RSS now and peak, USS) and each model's own bytes: what the report shows."""
        proc = psutil.Process()
        mem = proc.memory_full_info()
        return {
            "replica_id": self.replica_id,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "rss_mb": mem.rss / 2**20,
            "uss_mb": mem.uss / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            / 1024,  # ru_maxrss is KiB on Linux
            "threads": self.settings["threads"],
            "device": self.device,
            "checkpoint_sources": dict(self.sources),
            # On GPU the replica's RSS misses device memory; CUDA's own peak is the figure there.
            "cuda_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20
            if self.device == "cuda"
            else None,
            "models": {
                m: {
                    "weight_bytes": self.weight_bytes[m],
                    "params": sum(p.numel() for p in e.decoder.model.parameters())
                    + sum(b.numel() for b in e.decoder.model.buffers()),
                    **e.stats(),
                }
                for m, e in self.engines.items()
            },
        }

    def check_health(self) -> None:
        for m, e in self.engines.items():
            if not e.alive:
                raise RuntimeError(f"{m}: decode loop has stopped")


def engine_options(
    serve_cfg, cpus_per_replica: float | None = None, gpus_per_replica: float | None = None
) -> dict:
    """Deployment options from the config's `serve` section (replicas or autoscaling, backpressure)."""
    opts: dict = {
        "ray_actor_options": {
            "num_cpus": serve_cfg.cpus_per_replica if cpus_per_replica is None else cpus_per_replica,
            "num_gpus": serve_cfg.gpus_per_replica if gpus_per_replica is None else gpus_per_replica,
            # Serve runs user code on a second event loop in its own thread by default, so every response
            # message crosses threads. Our handlers never block for long (a decode step is ~1 ms), so running
            # them on the replica's main loop is safe, and measured c16 throughput 970 -> 1,670 tok/s here.
            "runtime_env": {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}},
        },
        "max_ongoing_requests": serve_cfg.max_ongoing_requests,
        "max_queued_requests": serve_cfg.max_queued_requests,
    }
    if serve_cfg.autoscaling is not None:
        opts["autoscaling_config"] = serve_cfg.autoscaling.model_dump()
    else:
        opts["num_replicas"] = serve_cfg.num_replicas
    return opts


def model_specs(
    checkpoints: dict[str, dict[str, bytes]], int8_of: str | None, uris: dict[str, str] | None = None
) -> dict[str, dict]:
    """Every served model id -> its checkpoint: the files, or only their storage URI when `uris` has one (the
    replica reads it there); `int8: True` marks the compressed copy of `int8_of`."""
    uris = uris or {}
    models: dict[str, dict] = {
        v: {"checkpoint_uri": uris[v]} if v in uris else {"checkpoint": files}
        for v, files in checkpoints.items()
    }
    if int8_of is not None:
        models[int8_of + INT8_SUFFIX] = {**models[int8_of], "int8": True}
    return models


def build_app(
    checkpoints: dict[str, dict[str, bytes]],
    serve_cfg,
    *,
    int8_of: str | None = None,
    cpus_per_replica: float | None = None,
    gpus_per_replica: float | None = None,
    num_replicas: int | None = None,
    uris: dict[str, str] | None = None,
) -> serve.Application:
    """The application serving each checkpoint under its variant's name, plus `<int8_of>-int8` when asked."""
    models = model_specs(checkpoints, int8_of, uris)
    settings = {
        "threads": serve_cfg.threads_per_replica,
        "max_batch": serve_cfg.max_batch_size,
        "max_waiting": serve_cfg.max_waiting,
        "max_prompt_chars": serve_cfg.max_prompt_chars,
        "stream_interval_ms": serve_cfg.stream_interval_ms,
        "stream_batch_tokens": serve_cfg.stream_batch_tokens,
        "api_key": serve_cfg.resolved_api_key(),
    }
    opts = engine_options(serve_cfg, cpus_per_replica, gpus_per_replica)
    if num_replicas is not None:
        opts.pop("autoscaling_config", None)
        opts["num_replicas"] = num_replicas
    return InferenceScalingEngine.options(**opts).bind(models, settings)


def app(args: dict) -> serve.Application:
    """Application builder for `serve run phase2_ray.stages.inference:app config=... checkpoints=RUN_DIR`."""
    from phase2_ray.config import load_config

    cfg = load_config(args.get("config"))
    checkpoints, int8_of = checkpoints_of(args["checkpoints"])
    return build_app(checkpoints, cfg.serve, int8_of=int8_of if cfg.serve.int8 else None)


def checkpoints_of(run_dir: str | Path) -> tuple[dict[str, dict[str, bytes]], str | None]:
    """Every variant checkpoint saved in RUN_DIR/checkpoints, and the variant to compress (optimized, if there)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist: pass the directory of a finished run")
    found = {d.name: read_dir(d) for d in sorted(root.iterdir()) if (d / "meta.json").is_file()}
    if not found:
        raise FileNotFoundError(f"no checkpoint (meta.json) under {root}")
    return found, ("optimized" if "optimized" in found else None)


def replica_stats(expected: int, tries: int = 64) -> list[dict]:
    """Stats of every running replica: calls go through the handle until `expected` distinct replicas answered."""
    handle = serve.get_deployment_handle(DEPLOYMENT, app_name=APP_NAME)
    seen: dict[str, dict] = {}
    for _ in range(tries):
        s = handle.stats.remote().result()
        seen[s["replica_id"]] = s
        if len(seen) >= expected:
            break
    return sorted(seen.values(), key=lambda s: s["replica_id"])
