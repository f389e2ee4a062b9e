"""Stage 2c's Serve application: one model deployment per variant behind an OpenAI-style HTTP router.

One deployment per variant puts each model in its own replica process, so each variant's peak memory is its own."""

import json
import os
import resource
import time
import uuid

import psutil
import ray
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from phase2_ray.core.checkpoint import load_checkpoint
from phase2_ray.core.generate import stream_tokens

APP_NAME = "phase2"


@serve.deployment(max_ongoing_requests=8)
class InferenceScalingEngine:
    """Loads one variant's checkpoint in __init__; `generate` streams tokens through the KV-cache sampler."""

    def __init__(self, variant: str, checkpoint: dict[str, bytes], threads: int) -> None:
        torch.set_num_threads(threads)
        self.variant = variant
        self.threads = threads
        self.model, self.meta, self.tok = load_checkpoint(checkpoint)
        self.block_size = self.model.cfg.block_size

    def generate(self, prompt: str, max_tokens: int, temperature: float, top_k: int | None, seed: int | None):
        """Yields a header ({"prompt_tokens"} or {"error"}) first, then one {"text", "token"} per token."""
        ids = self.tok.encode(prompt).ids
        if not ids:
            yield {"error": "prompt encodes to no tokens"}
            return
        if len(ids) + max_tokens > self.block_size:
            yield {
                "error": f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds "
                f"the model's context of {self.block_size} tokens"
            }
            return
        yield {"prompt_tokens": len(ids)}
        out: list[int] = []
        shown = ""
        for t in stream_tokens(self.model, ids, max_tokens, temperature=temperature, top_k=top_k, seed=seed):
            out.append(t)
            text = self.tok.decode(out)
            # A token can end inside a multi-byte character; hold its text back until the character completes.
            piece = "" if text.endswith("\ufffd") else text[len(shown) :]
            shown = shown if text.endswith("\ufffd") else text
            yield {"text": piece, "token": t}

    def stats(self) -> dict:
        """Current and peak RSS of this replica's process, and where it runs."""
        rss = psutil.Process().memory_info().rss
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
        return {
            "variant": self.variant,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "rss_mb": rss / 2**20,
            "peak_memory_mb": peak_kb / 1024,
            "threads": self.threads,
            "params": self.model.num_params(),
        }

    def check_health(self) -> None:
        if not torch.isfinite(self.model.wte.weight).all():
            raise RuntimeError(f"{self.variant}: model weights are not finite")


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(description="Variant to generate with (see GET /v1/models).")
    prompt: str = Field(min_length=1, max_length=100_000)
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = None
    stream: bool = False


api = FastAPI(title="phase2_ray inference")


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


@api.exception_handler(RequestValidationError)
async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    parts = [f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()]
    return _error(400, "; ".join(parts))


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Router:
    """Parses and validates requests, picks the variant's deployment, streams its tokens as SSE."""

    def __init__(self, engines: dict[str, DeploymentHandle]) -> None:
        self.engines = engines

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "models": sorted(self.engines)}

    @api.get("/v1/models")
    def models(self) -> dict:
        return {
            "object": "list",
            "data": [{"id": v, "object": "model", "owned_by": "phase2_ray"} for v in sorted(self.engines)],
        }

    @api.post("/v1/completions")
    async def completions(self, req: CompletionRequest):
        engine = self.engines.get(req.model)
        if engine is None:
            return _error(404, f"unknown model {req.model!r}; served: {sorted(self.engines)}", "not_found")
        gen = engine.options(stream=True).generate.remote(
            req.prompt, req.max_tokens, req.temperature, req.top_k, req.seed
        )
        header = await gen.__anext__()
        if "error" in header:
            return _error(400, header["error"])
        rid, created = f"cmpl-{uuid.uuid4().hex[:16]}", int(time.time())
        usage = {"prompt_tokens": header["prompt_tokens"]}

        def chunk(text: str, finish: str | None) -> dict:
            return {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": req.model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish}],
            }

        if not req.stream:
            pieces = [item["text"] async for item in gen]
            usage.update(completion_tokens=len(pieces), total_tokens=usage["prompt_tokens"] + len(pieces))
            return {**chunk("".join(pieces), "length"), "usage": usage}

        async def events():
            n = 0
            async for item in gen:
                n += 1
                finish = "length" if n == req.max_tokens else None
                yield f"data: {json.dumps(chunk(item['text'], finish))}\n\n"
            usage.update(completion_tokens=n, total_tokens=usage["prompt_tokens"] + n)
            yield f"data: {json.dumps({'id': rid, 'object': 'text_completion', 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


def build_app(
    checkpoints: dict[str, dict[str, bytes]], cpus_per_replica: float, threads: int
) -> serve.Application:
    """The application serving every variant's checkpoint: Router -> one InferenceScalingEngine per variant."""
    engines = {
        v: InferenceScalingEngine.options(
            name=f"engine-{v}", ray_actor_options={"num_cpus": cpus_per_replica}
        ).bind(v, files, threads)
        for v, files in checkpoints.items()
    }
    return Router.bind(engines)


def engine_stats(variant: str) -> dict:
    """Replica memory and placement of a running variant's engine."""
    handle = serve.get_deployment_handle(f"engine-{variant}", app_name=APP_NAME)
    return handle.stats.remote().result()
