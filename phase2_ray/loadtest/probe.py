"""Checking an OpenAI-compatible endpoint before any load is sent to it: it answers, knows the model, takes the key,
streams, and streams well-formed server-sent events. Each failure is one line that names the endpoint and what is
wrong, so a bad URL or key costs seconds, not a load test of errors. No Ray here.

The key is never part of a message (it comes from the environment, and messages reach logs and report.json)."""

from __future__ import annotations

import json

import httpx

from phase2_ray.loadtest.plan import Route


class EndpointError(RuntimeError):
    """An endpoint that cannot be load-tested; the message names it and says why, on one line."""


def _where(name: str, route: Route) -> str:
    return f"endpoint {name!r} ({route.base_url}, model {route.model!r})"


def probe_endpoint(name: str, route: Route, timeout_s: float = 10.0, key_env: str | None = None) -> dict:
    """Raises EndpointError unless `route` is ready for load; returns what was learned: the models it lists, and a
    two-token streamed answer's chunks, whether it closed with `data: [DONE]` and whether it carried usage."""
    where = _where(name, route)
    headers = {"Authorization": f"Bearer {route.api_key}"} if route.api_key else {}
    base = route.base_url.rstrip("/")
    key_hint = f"set {key_env} to its key" if key_env else "give it a key (api_key_env)"
    try:
        with httpx.Client(timeout=timeout_s, headers=headers) as client:
            r = client.get(f"{base}/v1/models")
            if r.status_code in (401, 403):
                raise EndpointError(f"{where}: refuses the API key (HTTP {r.status_code}): {key_hint}")
            if r.status_code != 200:
                raise EndpointError(f"{where}: GET /v1/models answered HTTP {r.status_code}")
            try:
                listed = [m["id"] for m in r.json()["data"]]
            except (ValueError, KeyError, TypeError) as e:
                raise EndpointError(f"{where}: GET /v1/models is not an OpenAI model list ({e})") from e
            if route.model not in listed:
                raise EndpointError(
                    f"{where}: serves no model {route.model!r} (it lists: {', '.join(listed)})"
                )
            chat = route.api == "chat"
            body: dict = {"model": route.model, "max_tokens": 2, "stream": True, "temperature": 0.0}
            body["stream_options"] = {"include_usage": True}
            body.update({"messages": [{"role": "user", "content": "Hello"}]} if chat else {"prompt": "Hello"})
            path = "/v1/chat/completions" if chat else "/v1/completions"
            with client.stream("POST", f"{base}{path}", json=body) as s:
                if s.status_code in (401, 403):
                    raise EndpointError(
                        f"{where}: refuses the API key on {path} (HTTP {s.status_code}): {key_hint}"
                    )
                if s.status_code == 404:
                    raise EndpointError(
                        f"{where}: has no {path} (HTTP 404); api: {route.api} may be the wrong API"
                    )
                if s.status_code != 200:
                    text = route.scrub(s.read().decode("utf-8", "replace")[:200].replace("\n", " "))
                    raise EndpointError(
                        f"{where}: a 2-token streamed request got HTTP {s.status_code}: {text}"
                    )
                ctype = s.headers.get("content-type", "")
                if not ctype.startswith("text/event-stream"):
                    raise EndpointError(
                        f"{where}: does not stream (a stream: true request got content-type {ctype or 'none'!r}, "
                        "not text/event-stream)"
                    )
                try:
                    chunks, done, usage = _read_sse(s, where)
                except EndpointError as e:
                    raise EndpointError(route.scrub(str(e))) from None
    except httpx.TimeoutException as e:
        raise EndpointError(f"{where}: no answer within {timeout_s:g} s ({type(e).__name__})") from e
    except httpx.TransportError as e:
        raise EndpointError(f"{where}: unreachable ({type(e).__name__}: {e})") from e
    except httpx.HTTPError as e:  # anything else httpx raises (decoding, redirects): this endpoint's failure
        raise EndpointError(route.scrub(f"{where}: {type(e).__name__}: {e}")) from e
    if not chunks:
        raise EndpointError(f"{where}: its stream carried no token")
    return {"models": listed, "chunks": len(chunks), "done": done, "usage": usage}


def _read_sse(s: httpx.Response, where: str) -> tuple[list[dict], bool, bool]:
    chunks: list[dict] = []
    done = usage = False
    for line in s.iter_lines():
        if not line or line.startswith(":"):
            continue  # event separators and SSE comments (keep-alives)
        field = line.split(":", 1)[0]
        if field in ("event", "id", "retry"):
            continue  # other SSE fields: allowed, and carry no token
        if field != "data":
            raise EndpointError(f"{where}: malformed SSE: a line that is no SSE field: {line[:80]!r}")
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        try:
            event = json.loads(data)
        except ValueError as e:
            raise EndpointError(f"{where}: malformed SSE: an event that is not JSON: {data[:80]!r}") from e
        if not isinstance(event, dict):
            raise EndpointError(f"{where}: malformed SSE: an event that is not a JSON object: {data[:80]!r}")
        if "error" in event:
            raise EndpointError(f"{where}: its stream reported an error: {str(event['error'])[:200]}")
        usage = usage or bool(event.get("usage"))
        if event.get("choices"):
            chunks.append(event)
    return chunks, done, usage
