"""Stage 2c's Serve deployment: InferenceScalingEngine, an OpenAI-compatible server (/v1/completions and
/v1/chat/completions, streamed or whole).

One deployment, FastAPI ingress, every model id loaded in each replica. Why not one deployment per variant behind
a router: each Serve hop costs milliseconds (a handle call is several times a plain actor call), and the proxy
cannot route on the `model` field of a JSON body (Serve multiplexing routes on a header, which OpenAI clients do
not send). The models are small, so holding all of them costs less than a hop; each model's own bytes
(weights + KV cache) are reported separately from the replica's RSS.

Run it alone with `phase2 serve -c CONFIG --checkpoints RUN_DIR`, or
`serve run phase2_ray.serving.build:app config=CONFIG checkpoints=RUN_DIR`."""

import os
import resource
import sys

import psutil
import ray
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from phase2_ray.config import ServeConfig
from phase2_ray.core.compress import load_for_serving, weight_bytes
from phase2_ray.core.engine import AsyncBatchEngine, Overloaded
from phase2_ray.core.sampling import SamplingParams
from phase2_ray.devices import assigned_device
from phase2_ray.records import ReplicaStats
from phase2_ray.serving.chat import TemplateError, render_chat
from phase2_ray.serving.requests import error, parse_chat, parse_completion
from phase2_ray.serving.stream import CompletionStream
from phase2_ray.storage import materialize

APP_NAME = "phase2"
DEPLOYMENT = "InferenceScalingEngine"


api = FastAPI(title="phase2_ray inference", docs_url=None, redoc_url=None)


def unauthorized() -> JSONResponse:
    return error(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")


@serve.deployment(name=DEPLOYMENT, health_check_period_s=5)
@serve.ingress(api)
class InferenceScalingEngine:
    """Loads each model id's checkpoint (compressing the `-int8` ones) and serves them with continuous batching."""

    def __init__(self, models: dict[str, dict], cfg: ServeConfig) -> None:
        torch.set_num_threads(cfg.threads_per_replica)
        # Serve ships response chunks from its own thread while the decode loop runs Python on the user-code
        # thread; at CPython's default 5 ms switch interval each chunk could wait that long for the GIL.
        sys.setswitchinterval(0.0005)
        self.cfg = cfg
        self.engines: dict[str, AsyncBatchEngine] = {}
        self.tokenizers, self.meta, self.weight_bytes = {}, {}, {}
        self.device = assigned_device()
        self.sources: dict[str, str] = {}
        shared: dict[
            str, object
        ] = {}  # one tokenizer object per distinct tokenizer file (variants share theirs)
        for model_id, spec in models.items():
            model, meta, tok = load_for_serving(materialize(spec), self.device)
            tok = shared.setdefault(meta["sha256"]["tokenizer.json"], tok)
            self.sources[model_id] = spec.get("checkpoint_uri", "object store")
            self.engines[model_id] = AsyncBatchEngine(
                model,
                cfg.max_batch_size,
                cfg.max_waiting,
                cfg.min_step_ms,
                getattr(torch, cfg.kv_cache_dtype),
            )
            self.tokenizers[model_id], self.meta[model_id] = tok, meta
            self.weight_bytes[model_id] = weight_bytes(model)
        self.replica_id = serve.get_replica_context().replica_id.unique_id

    def _authorized(self, request: Request) -> bool:
        key = self.cfg.api_key
        return not key or request.headers.get("authorization", "") == f"Bearer {key}"

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "models": sorted(self.engines)}

    @api.get("/v1/models")
    def models(self, request: Request):
        if not self._authorized(request):
            return unauthorized()
        return {
            "object": "list",
            "data": [{"id": m, "object": "model", "owned_by": "phase2_ray"} for m in sorted(self.engines)],
        }

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        if not self._authorized(request):
            return unauthorized()
        req = await parse_completion(request, self.engines, self.cfg.max_prompt_chars)
        if isinstance(req, JSONResponse):
            return req
        return await self._complete(req.model, req.prompt, req.max_tokens, req, chat=False)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        if not self._authorized(request):
            return unauthorized()
        req = await parse_chat(request, self.engines, self.cfg.max_prompt_chars)
        if isinstance(req, JSONResponse):
            return req
        try:  # the checkpoint's own template where it has one, else the documented default (serving/chat.py)
            prompt = render_chat(
                [m.model_dump() for m in req.messages], self.meta[req.model].get("chat_template")
            )
        except TemplateError as e:
            return error(400, str(e))
        return await self._complete(req.model, prompt, req.limit, req, chat=True)

    async def _complete(self, model: str, prompt: str, max_tokens: int, req, *, chat: bool):
        """One completion of `prompt`: streamed as server-sent events, or whole."""
        engine, tok = self.engines[model], self.tokenizers[model]
        ids = tok.encode(prompt).ids
        params = SamplingParams(max_tokens, req.temperature, req.top_k, req.top_p, req.seed)
        gen = engine.generate(ids, params)
        try:
            # Validation and admission errors surface here, before any byte is sent.
            first = await gen.__anext__()
        except ValueError as e:
            return error(400, str(e))
        except Overloaded as e:
            return error(429, f"server busy: {e}; retry later", "overloaded", {"Retry-After": "1"})
        out = CompletionStream(model, tok, len(ids), max_tokens, chat=chat)
        if not req.stream:
            tokens = list(first)
            async for more in gen:
                tokens += more
            return out.whole(tokens)
        events = out.events(first, gen, self.cfg.stream_batch_tokens, self.cfg.stream_interval_ms / 1000.0)
        return StreamingResponse(events, media_type="text/event-stream")

    def stats(self) -> ReplicaStats:
        """This replica's memory (RSS now and peak, USS) and each model's own bytes: what the report shows."""
        mem = psutil.Process().memory_full_info()
        return ReplicaStats(
            replica_id=self.replica_id,
            pid=os.getpid(),
            node_id=ray.get_runtime_context().get_node_id(),
            rss_mb=mem.rss / 2**20,
            uss_mb=mem.uss / 2**20,
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
            threads=self.cfg.threads_per_replica,
            device=self.device,
            checkpoint_sources=dict(self.sources),
            # On GPU the replica's RSS misses device memory; CUDA's own peak is the figure there.
            cuda_max_allocated_mb=torch.cuda.max_memory_allocated() / 2**20
            if self.device == "cuda"
            else None,
            models={
                m: {
                    "weight_bytes": self.weight_bytes[m],
                    "int8": self.meta[m].get("int8"),
                    "params": sum(p.numel() for p in e.decoder.model.parameters())
                    + sum(b.numel() for b in e.decoder.model.buffers()),
                    **e.stats(),
                }
                for m, e in self.engines.items()
            },
        )

    def check_health(self) -> None:
        for m, e in self.engines.items():
            if not e.alive:
                raise RuntimeError(f"{m}: decode loop has stopped")
