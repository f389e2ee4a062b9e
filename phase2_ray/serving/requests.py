"""What the completions and chat completions endpoints accept: OpenAI's request shapes, parsed strictly, every
problem a 4xx JSON error that names what is wrong."""

from __future__ import annotations

import json
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

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


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completions request this server honours (text messages; no tools, no images);
    unknown fields are ignored, as OpenAI clients send some with their defaults."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str = Field(description="Model id (see GET /v1/models).")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens.")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> ChatCompletionRequest:
        if self.max_tokens and self.max_completion_tokens and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree: send one")
        return self

    @property
    def limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 16


def error(status: int, message: str, kind: str = "invalid_request_error", headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


async def parse_completion(
    request: Request, served: set[str] | dict, max_prompt_chars: int
) -> CompletionRequest | JSONResponse:
    """The request body as a CompletionRequest, or the 4xx that says what is wrong with it."""
    req = await parse_body(request, CompletionRequest, served)
    if not isinstance(req, JSONResponse) and len(req.prompt) > max_prompt_chars:
        return error(400, f"prompt of {len(req.prompt)} chars exceeds {max_prompt_chars}")
    return req


async def parse_chat(
    request: Request, served: set[str] | dict, max_prompt_chars: int
) -> ChatCompletionRequest | JSONResponse:
    """The request body as a ChatCompletionRequest, or the 4xx that says what is wrong with it."""
    req = await parse_body(request, ChatCompletionRequest, served)
    if isinstance(req, JSONResponse):
        return req
    chars = sum(len(m.content) for m in req.messages)
    if chars > max_prompt_chars:
        return error(400, f"messages of {chars} chars exceed {max_prompt_chars}")
    return req


async def parse_body(request: Request, kind: type[BaseModel], served: set[str] | dict):
    """The JSON body as `kind`, or the 4xx that says what is wrong with it (type, size, encoding, fields, model)."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        return error(415, f"content-type must be application/json, got {ctype or 'none'!r}")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return error(413, f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        return error(400, "body is not valid UTF-8")
    except ValueError as e:
        return error(400, f"body is not valid JSON: {e}")
    if not isinstance(data, dict):
        return error(400, f"body must be a JSON object, got {type(data).__name__}")
    try:
        req = kind.model_validate(data)
    except ValidationError as e:
        parts = [f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()]
        return error(400, "; ".join(parts))
    if req.model not in served:
        return error(404, f"unknown model {req.model!r}; served: {sorted(served)}", "not_found")
    return req
