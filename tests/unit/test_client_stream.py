"""The streaming client against a hand-written SSE server on loopback (no Ray): what makes a request ok, and how
arrivals, inter-token latency and open-loop queueing are timed. Timing bounds are loose on purpose."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import pytest

from phase2_ray.loadtest.client import _sse_events, poisson_schedule, run_requests, stream_completion
from phase2_ray.loadtest.plan import Endpoint, LevelSpec
from phase2_ray.records import RequestRecord

GAP = 0.3  # seconds between the test server's writes: long enough that two writes never share a read


def _token(text: str) -> str:
    chunk = {
        "id": "cmpl-test",
        "object": "text_completion",
        "created": 0,
        "model": "tiny",
        "choices": [{"index": 0, "text": text, "finish_reason": None, "logprobs": None}],
    }
    return f"data: {json.dumps(chunk)}\n\n"


def _tokens(texts: str) -> str:
    """One SSE event per character, like the server's one event per token."""
    return "".join(_token(t) for t in texts)


def _tail(completion_tokens: int | None, done: bool = True) -> str:
    usage = {"prompt_tokens": 3, "total_tokens": 3 + (completion_tokens or 0)}
    if completion_tokens is not None:
        usage["completion_tokens"] = completion_tokens
    closing = {"id": "cmpl-test", "object": "text_completion", "created": 0, "model": "tiny", "choices": []}
    return f"data: {json.dumps({**closing, 'usage': usage})}\n\n" + ("data: [DONE]\n\n" if done else "")


class _Handler(BaseHTTPRequestHandler):
    """Runs the server's `script(stream, body)` for each POST; HTTP/1.0 handling closes the socket after it."""

    disable_nagle_algorithm = True  # each write goes out at once

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.script(_Stream(self), body)

    def log_message(self, *args) -> None:
        pass


class _Stream:
    """Writes an HTTP response by hand: chunked (the real server's framing) or delimited by the close."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self.w, self.chunked = handler.wfile, True

    def start(self, chunked: bool = True) -> None:
        self.chunked = chunked
        framing = "Transfer-Encoding: chunked\r\n" if chunked else ""
        self.w.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{framing}Connection: close\r\n\r\n".encode()
        )
        self.w.flush()

    def send(self, text: str) -> None:
        """One write (one send on the socket)."""
        data = text.encode()
        self.w.write(f"{len(data):x}\r\n".encode() + data + b"\r\n" if self.chunked else data)
        self.w.flush()

    def end(self) -> None:
        if self.chunked:
            self.w.write(b"0\r\n\r\n")
            self.w.flush()

    def error(self, status: int, message: str) -> None:
        data = json.dumps({"error": {"message": message}}).encode()
        head = f"HTTP/1.1 {status} Oops\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        self.w.write(head.encode() + b"Connection: close\r\n\r\n" + data)
        self.w.flush()


@contextmanager
def serve(script: Callable[[_Stream, dict], None]):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.script = script
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _run(url: str, seed: int = 0, api: str = "completions", prompt: str = "p", **kw) -> list[dict]:
    endpoint = Endpoint(
        base_url=url,
        prompts=[prompt],
        max_tokens=8,
        temperature=0.0,
        top_k=None,
        seed=seed,
        timeout_s=20,
        api=api,
    )
    return run_requests(endpoint, LevelSpec(**{"model": "tiny", "n": 1, "concurrency": 1, **kw}))


def _good(stream: _Stream, body: dict) -> None:
    """The real server's shape: the first token alone, then writes of several tokens, then usage and [DONE]."""
    stream.start()
    stream.send(_tokens("a"))
    time.sleep(GAP)
    stream.send(_tokens("bcde"))
    time.sleep(GAP)
    stream.send(_tokens("fgh"))
    time.sleep(0.05)
    stream.send(_tail(8))
    stream.end()


def test_sse_parser_splits_events_across_chunks():
    buf, pending = bytearray(), []
    raw = (_tokens("ab") + _tail(2)).replace("\n", "\r\n").encode()  # CRLF line ends are legal SSE too
    got = []
    for i in range(0, len(raw), 7):  # chunks that cut lines, and the JSON, anywhere
        got += _sse_events(buf, raw[i : i + 7], pending)
    assert [json.loads(d)["choices"][0]["text"] for d in got[:2]] == ["a", "b"]
    assert json.loads(got[2])["usage"]["completion_tokens"] == 2 and got[3] == "[DONE]"
    assert not buf and not pending
    # an event still waiting for its blank line is not complete
    assert _sse_events(buf, b"data: [DONE]\n", pending) == [] and pending == ["[DONE]"]


def test_good_stream_times_each_write_and_spreads_its_gap_over_its_tokens():
    with serve(_good) as url:
        (r,) = _run(url)
    assert r["ok"], r
    assert r["error_type"] is None and r["warmup"] is False
    assert r["output_tokens"] == r["completion_tokens"] == 8 and r["text"] == "abcdefgh"
    assert r["tokens_per_write"] == [1, 4, 3]
    g1, g2 = r["write_gap_ms"]
    assert 0.5 * GAP * 1000 < g1 < 10 * GAP * 1000 and 0.5 * GAP * 1000 < g2 < 10 * GAP * 1000
    # per token: an arrival's gap split evenly over its tokens; the first arrival adds no entry
    assert len(r["itl_ms"]) == r["output_tokens"] - r["tokens_per_write"][0] == 7
    assert r["itl_ms"][:4] == pytest.approx([g1 / 4] * 4) and r["itl_ms"][4:] == pytest.approx([g2 / 3] * 3)
    assert sum(r["itl_ms"]) == pytest.approx(g1 + g2)  # first-to-last arrival
    # [DONE] came last, so E2E covers TTFT plus every gap
    assert 0 < r["ttft_ms"] < r["ttft_ms"] + sum(r["itl_ms"]) <= r["e2e_ms"] + 1e-6
    assert r["queue_ms"] == 0.0 and r["scheduled"] == r["start"]  # closed loop: no schedule to fall behind


def test_one_write_of_every_token_is_one_arrival():
    def script(stream: _Stream, body: dict) -> None:
        stream.start()
        stream.send(_tokens("abcd") + _tail(4))
        stream.end()

    with serve(script) as url:
        (r,) = _run(url)
    assert r["ok"] and r["tokens_per_write"] == [4] and r["write_gap_ms"] == [] and r["itl_ms"] == []


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked_cut", "eof_before_done"])
def test_stream_cut_before_done_is_truncated(chunked):
    def script(stream: _Stream, body: dict) -> None:
        stream.start(chunked)
        stream.send(_tokens("abc"))
        time.sleep(0.05)
        stream.send(_tail(3, done=False))  # even the usage chunk: without [DONE] the answer is not whole
        # return without the terminating chunk: the server closes the socket

    with serve(script) as url:
        (r,) = _run(url)
    assert not r["ok"] and r["error_type"] == "truncated", r
    assert "3 tokens" in r["error"] and r["output_tokens"] == 3 and r["e2e_ms"] is None


def test_usage_counts_the_tokens_when_an_event_carries_several() -> None:
    """vLLM may pack tokens (speculative decoding, held-back UTF-8): usage is the count, the events stay for ITL."""

    def script(stream: _Stream, body: dict) -> None:
        stream.start()
        stream.send(_tokens("abcde") + _tail(7))
        stream.end()

    with serve(script) as url:
        (r,) = _run(url)
    assert r["ok"] and r["output_tokens"] == 7 and r["token_events"] == 5, r


@pytest.mark.parametrize(
    "events, error_type, words",
    [
        (_tokens("abcde") + _tail(4), "token_count_mismatch", ["5", "4"]),
        (_tokens("abcde") + _tail(None), "token_count_mismatch", ["5", "None"]),
        (_tail(0), "empty", ["without a token"]),
        (_tokens("ab") + 'data: {"error": {"message": "engine died"}}\n\n', "stream_error", ["engine died"]),
        (_tokens("ab") + "data: {not json\n\n", "bad_response", []),
    ],
    ids=["usage_disagrees", "no_usage", "empty", "error_event", "bad_json"],
)
def test_bad_streams_fail_with_their_reason(events, error_type, words):
    def script(stream: _Stream, body: dict) -> None:
        stream.start()
        stream.send(events)
        stream.end()

    with serve(script) as url:
        (r,) = _run(url)
    assert not r["ok"] and r["error_type"] == error_type, r
    assert all(w in r["error"] for w in words), r["error"]


def _slow(stream: _Stream, body: dict) -> None:
    time.sleep(0.2)  # "prefill": the first token takes 0.2 s
    stream.start()
    stream.send(_tokens("ab") + _tail(2))
    stream.end()


def test_stream_completion_counts_from_the_scheduled_arrival():
    async def go(url: str) -> RequestRecord:
        async with aiohttp.ClientSession() as client:
            record = RequestRecord("tiny", 0)
            payload = {"model": "tiny", "prompt": "p", "stream": True}
            scheduled = time.perf_counter() - 0.5  # it should have gone half a second ago
            return await stream_completion(
                client, url + "/v1/completions", payload, record, 20, scheduled=scheduled
            )

    with serve(_slow) as url:
        r = asyncio.run(go(url))
    assert r.ok, r
    assert r.queue_ms >= 500 and r.ttft_ms >= r.queue_ms + 150 and r.e2e_ms >= r.ttft_ms
    assert r.start - r.scheduled == pytest.approx(r.queue_ms / 1000, abs=1e-3)


def test_open_loop_latency_includes_waiting_for_a_slot():
    rate, n = 50.0, 5
    with serve(_slow) as url:
        records = _run(url, n=n, concurrency=1, request_rate=rate, seed=7)
    assert [r["index"] for r in records] == list(range(n)) and all(r["ok"] for r in records), records
    # one slot and 0.2 s per request against ~20 ms between arrivals: the later requests queue
    for r in records:
        assert r["queue_ms"] >= 0 and r["ttft_ms"] >= r["queue_ms"] + 150 and r["e2e_ms"] >= r["ttft_ms"]
        assert r["start"] - r["scheduled"] == pytest.approx(r["queue_ms"] / 1000, abs=1e-3)
    assert all(r["queue_ms"] > 100 for r in records[2:])
    assert records[-1]["queue_ms"] > records[1]["queue_ms"]
    # scheduled arrivals follow the seeded Poisson schedule, not the sends
    offsets = [r["scheduled"] - records[0]["scheduled"] for r in records]
    # (each client and round seeds its own arrivals from the seed and its first request index)
    assert offsets == pytest.approx(poisson_schedule(0.0, n, rate, 7 * 1_000_003 + 0), abs=0.05)


def test_warmups_come_back_flagged_and_a_failing_one_is_kept():
    def script(stream: _Stream, body: dict) -> None:
        if body["seed"] < 100:  # warm-ups have negative indices, so seeds below the run's seed
            stream.error(500, "cold start failed")
            return
        stream.start()
        stream.send(_tokens("ab") + _tail(2))
        stream.end()

    with serve(script) as url:
        records = _run(url, n=2, warmup=2, seed=100)
    assert [(r["index"], r["warmup"]) for r in records] == [(-2, True), (-1, True), (0, False), (1, False)]
    for r in records[:2]:
        assert not r["ok"] and r["status"] == 500 and r["error_type"] == "http_500"
        assert "cold start failed" in r["error"]
    assert all(r["ok"] and r["queue_ms"] == 0.0 for r in records[2:]), records


def _final(text: str, finish: str = "length", chat: bool = False) -> str:
    """A token event that closes the answer (finish_reason set), as completions or as a chat delta."""
    choice = {"index": 0, "finish_reason": finish}
    choice.update({"delta": {"content": text}} if chat else {"text": text})
    obj = "chat.completion.chunk" if chat else "text_completion"
    return f"data: {json.dumps({'id': 'x', 'object': obj, 'created': 0, 'model': 'tiny', 'choices': [choice]})}\n\n"


@pytest.mark.parametrize("with_usage", [True, False], ids=["usage", "no_usage_at_all"])
def test_a_server_that_sends_no_done_is_whole_after_a_finish_reason(with_usage):
    # transformers serve ends its stream with a finish_reason chunk (and usage when asked), never `data: [DONE]`
    def script(stream: _Stream, body: dict) -> None:
        assert body["stream_options"] == {"include_usage": True}  # the client asks for the server's count
        stream.start()
        stream.send(_tokens("abc") + _final("d") + (_tail(4, done=False) if with_usage else ""))
        stream.end()

    with serve(script) as url:
        (r,) = _run(url)
    assert r["ok"] and r["output_tokens"] == 4 and r["text"] == "abcd" and r["e2e_ms"] > 0, r
    assert r["completion_tokens"] == (4 if with_usage else None)


def test_chat_deltas_are_tokens_and_a_lying_usage_still_fails():
    def script(stream: _Stream, body: dict) -> None:
        assert body["messages"] == [{"role": "user", "content": "hello"}] and "prompt" not in body
        stream.start()
        stream.send(_final("a", None, chat=True) + _final("b", None, chat=True) + _final("c", chat=True))
        stream.send(_tail(2))  # usage says 2, three arrived: each event carries a token at least
        stream.end()

    with serve(script) as url:
        (r,) = _run(url, api="chat", prompt="hello")
    assert not r["ok"] and r["error_type"] == "token_count_mismatch" and r["text"] == "abc"


def test_an_openai_style_chat_stream_counts_only_content_deltas():
    # OpenAI and vLLM open with a role-only delta and may close with an empty delta carrying the finish_reason
    def delta(d: dict, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": d, "finish_reason": finish}
        return f"data: {json.dumps({'id': 'x', 'object': 'chat.completion.chunk', 'choices': [choice]})}\n\n"

    def script(stream: _Stream, body: dict) -> None:
        stream.start()
        stream.send(delta({"role": "assistant", "content": ""}))
        time.sleep(GAP)
        stream.send(delta({"content": "a"}) + delta({"content": ""}) + delta({"content": "c"}))
        stream.send(delta({}, "stop") + _tail(3))
        stream.end()

    with serve(script) as url:
        (r,) = _run(url, api="chat")
    assert r["ok"] and r["output_tokens"] == 3 and r["text"] == "ac", r
    assert r["ttft_ms"] >= GAP * 1000 * 0.8  # timed at the first token, not at the role announcement
