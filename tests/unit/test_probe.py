"""An endpoint checked before load: each way a server can be wrong gets one line naming it (a hand-written HTTP
server on loopback plays each; no Ray). Also routes: one load level sent to another server under another name."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from phase2_ray.loadtest.client import run_requests
from phase2_ray.loadtest.plan import Endpoint, LevelSpec, Route
from phase2_ray.loadtest.probe import EndpointError, probe_endpoint
from tests.conftest import free_port


def _chunk(text: str, finish: str | None = None) -> bytes:
    c = {"id": "x", "object": "text_completion", "created": 0, "model": "m", "choices": []}
    c["choices"] = [{"index": 0, "text": text, "finish_reason": finish}]
    return f"data: {json.dumps(c)}\n\n".encode()


GOOD_STREAM = _chunk("a") + _chunk("b", "length") + b"data: [DONE]\n\n"


class Server:
    """GET /v1/models and POST /v1/{chat/}completions as `behaviour` says."""

    def __init__(self, behaviour: dict) -> None:
        self.b = behaviour
        self.bodies: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.headers.get("Authorization") != outer.b.get(
                    "auth", self.headers.get("Authorization")
                ):
                    return self._send(401, b'{"error": {"message": "bad key"}}')
                self._send(
                    200, json.dumps({"data": [{"id": m} for m in outer.b.get("models", ["m"])]}).encode()
                )

            def do_POST(self) -> None:
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                if "post_status" in outer.b:
                    body = outer.b.get("body", {"error": {"message": "nope"}})
                    return self._send(outer.b["post_status"], json.dumps(body).encode())
                ctype = outer.b.get("ctype", "text/event-stream")
                self._send(200, outer.b.get("stream", GOOD_STREAM), ctype)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@contextmanager
def served(**behaviour):
    s = Server(behaviour)
    t = threading.Thread(target=s.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()


def test_a_good_endpoint_passes_and_says_what_it_saw():
    with served() as s:
        got = probe_endpoint("candidate", Route(s.url, "m"))
    assert got == {"models": ["m"], "chunks": 2, "done": True, "usage": False}
    assert s.bodies[0]["stream"] is True and s.bodies[0]["stream_options"] == {"include_usage": True}


CASES = {
    "wrong model": ({"models": ["other", "x"]}, "serves no model 'm' (it lists: other, x)"),
    "bad key": ({"auth": "Bearer right"}, "refuses the API key (HTTP 401): set CAND_KEY to its key"),
    "no streaming": ({"ctype": "application/json", "stream": b"{}"}, "does not stream"),
    "malformed SSE, not a field": (
        {"stream": b"event: x\nhello\n\n"},
        "malformed SSE: a line that is no SSE field",
    ),
    "malformed SSE, not JSON": ({"stream": b"data: {oops\n\n"}, "malformed SSE: an event that is not JSON"),
    "no chat endpoint": ({"post_status": 404}, "has no /v1/completions (HTTP 404)"),
    "server error": ({"post_status": 500}, "got HTTP 500"),
    "no tokens": ({"stream": b"data: [DONE]\n\n"}, "carried no token"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_endpoint_is_one_line_naming_it(case):
    behaviour, fragment = CASES[case]
    with served(**behaviour) as s:
        with pytest.raises(EndpointError) as e:
            probe_endpoint(
                "candidate", Route(s.url, "m", api_key="sk-secret-123"), timeout_s=5, key_env="CAND_KEY"
            )
    msg = str(e.value)
    assert (
        "\n" not in msg and msg.startswith(f"endpoint 'candidate' ({s.url}, model 'm')") and fragment in msg
    )
    assert "sk-secret" not in msg  # the key itself never appears


def test_an_unreachable_endpoint():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EndpointError, match=r"endpoint 'baseline' .*: unreachable \(ConnectError"):
        probe_endpoint("baseline", Route(url, "m"), timeout_s=2)


def test_routes_send_a_model_id_to_its_own_server_under_its_own_name():
    with served(models=["served-name"]) as s:
        ep = Endpoint(
            base_url="http://127.0.0.1:9",  # nothing: every request of `cand` must go to its route
            prompts=["p"],
            max_tokens=2,
            temperature=0.0,
            top_k=None,
            seed=0,
            timeout_s=10,
            routes={"cand": Route(s.url, "served-name", "chat", "k")},
        )
        recs = run_requests(ep, LevelSpec(model="cand", n=2, concurrency=1))
    assert [r["variant"] for r in recs] == ["cand", "cand"] and all(r["ok"] for r in recs), recs
    assert {b["model"] for b in s.bodies} == {"served-name"} and all("messages" in b for b in s.bodies)


def test_a_key_the_server_echoes_is_masked_in_the_probe_and_in_request_records():
    """Some gateways echo the key they got in an error body; it must not reach report.json or requests.csv."""
    key = "sk-echoed-0123456789"
    echo = {"error": {"message": f"key {key} is not valid here"}}
    with served(post_status=500, body=echo) as s:
        with pytest.raises(EndpointError) as e:
            probe_endpoint("candidate", Route(s.url, "m", api_key=key), timeout_s=5)
        ep = Endpoint(
            base_url="http://127.0.0.1:9",
            prompts=["p"],
            max_tokens=2,
            temperature=0.0,
            top_k=None,
            seed=0,
            timeout_s=5,
            routes={"cand": Route(s.url, "m", api_key=key)},
        )
        (rec,) = run_requests(ep, LevelSpec(model="cand", n=1, concurrency=1))
    assert key not in str(e.value) and "***" in str(e.value)
    assert rec["error_type"] == "http_500" and key not in rec["error"] and "***" in rec["error"]
