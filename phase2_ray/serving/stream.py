"""How a completion goes out over HTTP: OpenAI's text_completion chunks (or, for chat, chat.completion.chunk deltas)
as server-sent events, one event per token, batched into few writes, closed by a usage chunk and `data: [DONE]`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from phase2_ray.core.engine import IncrementalDetokenizer


class CompletionStream:
    """The chunks of one completion (streamed or whole), numbered and detokenized as they go."""

    def __init__(
        self, model: str, tokenizer, prompt_tokens: int, max_tokens: int, *, chat: bool = False
    ) -> None:
        self.rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:16]}"
        self.created, self.chat = int(time.time()), chat
        self.object = "chat.completion.chunk" if chat else "text_completion"
        self.model, self.prompt_tokens, self.max_tokens = model, prompt_tokens, max_tokens
        self.detok = IncrementalDetokenizer(tokenizer)
        self.sent = 0

    def chunk(self, text: str, finish: str | None) -> dict:
        if self.chat:
            choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return {
            "id": self.rid,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def role_chunk(self) -> str:
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "finish_reason": None,
            "logprobs": None,
        }
        head = {"id": self.rid, "object": self.object, "created": self.created, "model": self.model}
        return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"

    def usage(self, n: int) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": n,
            "total_tokens": self.prompt_tokens + n,
        }

    def whole(self, tokens: list[int]) -> dict:
        """The non-streamed response."""
        text = "".join(self.detok.push(t) for t in tokens) + self.detok.flush()
        if self.chat:
            message = {"role": "assistant", "content": text}
            return {
                "id": self.rid,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": "length", "logprobs": None}],
                "usage": self.usage(len(tokens)),
            }
        return {**self.chunk(text, "length"), "usage": self.usage(len(tokens))}

    def sse(self, tokens: list[int]) -> str:
        parts = []
        for t in tokens:
            self.sent += 1
            finish = "length" if self.sent == self.max_tokens else None
            text = self.detok.push(t) + (
                self.detok.flush() if finish else ""
            )  # the last token: nothing held back
            parts.append(f"data: {json.dumps(self.chunk(text, finish))}\n\n")
        return "".join(parts)

    async def events(
        self, first: list[int], rest: AsyncIterator[list[int]], per_write: int, interval_s: float
    ) -> AsyncIterator[str]:
        # Chat: a role-only delta first, as OpenAI's and vLLM's streams begin (a client does not count it as a
        # token), in the same write as the first token.
        role = self.role_chunk() if self.chat else ""
        yield role + self.sse(first)  # the first token goes out at once: it is the TTFT
        flushed, pending = time.perf_counter(), []
        async for batch in rest:
            pending += batch
            now = time.perf_counter()
            # Every write costs Serve ~1 ms of CPU (a hop to the proxy, then the socket) whatever its size, so
            # tokens go out `per_write` at a time (still one SSE event per token), or sooner when the oldest
            # has waited `interval_s`: the write rate per stream stays flat as load grows.
            if len(pending) >= per_write or now - flushed >= interval_s:
                yield self.sse(pending)
                flushed, pending = now, []
        if pending:
            yield self.sse(pending)
        # Always the usage chunk (OpenAI's `stream_options.include_usage` form: no choices), so a client counts the
        # tokens from the server's own number; OpenAI's clients skip a chunk without choices.
        tail = {"id": self.rid, "object": self.object, "created": self.created, "model": self.model}
        yield f"data: {json.dumps({**tail, 'choices': [], 'usage': self.usage(self.sent)})}\n\ndata: [DONE]\n\n"
