"""The config's external endpoints as the load generator sees them: routes with their keys (from the environment
only), a readiness check before any load, and each answer's token count checked against the endpoint's own
tokenizer. No Ray here.

Why re-tokenize: a tool that counts another server's tokens with the wrong tokenizer reports wrong throughput
(ray-project/llmperf#92, vllm-project/guidellm#37). Output tokens are the server's own `usage.completion_tokens`;
the re-tokenized count of the same text is a check beside it, reported as a mismatch rate. It is not expected to be
0 under sampling: a sampled token sequence need not be the canonical encoding of its own text, so the rate to read
is the candidate's against a self-served model's or the baseline's with the same tokenizer."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer

from phase2_ray.config import Config
from phase2_ray.config.endpoints import EndpointConfig, tokenizer_file
from phase2_ray.loadtest.plan import Route
from phase2_ray.loadtest.probe import EndpointError, probe_endpoint

PROBE_TIMEOUT_S = 10.0


def external(cfg: Config) -> dict[str, EndpointConfig]:
    """The configured endpoints served elsewhere (not `self`)."""
    return {n: e for n, e in cfg.endpoints.items() if e.external}


def route_of(e: EndpointConfig) -> Route:
    return Route(e.base_url, e.model or "", e.api, e.api_key())


def probe_all(cfg: Config) -> dict[str, dict]:
    """Every external endpoint checked before any load (loadtest.probe); raises EndpointError naming the first
    that is not ready. Returns what each probe learned (listed models, whether it sends [DONE] and usage)."""
    return {
        name: probe_endpoint(name, route_of(e), PROBE_TIMEOUT_S, e.api_key_env)
        for name, e in external(cfg).items()
    }


def still_up(name: str, e: EndpointConfig) -> str | None:
    """None when the endpoint still answers a probe; else the probe's one-line error."""
    try:
        probe_endpoint(name, route_of(e), PROBE_TIMEOUT_S, e.api_key_env)
    except EndpointError as err:
        return str(err)
    return None


def broken_off(records: list[dict], overloaded: bool = False) -> bool:
    """Whether some request broke off in a way a dead server explains: refused, cut, timed out or 5xx. A capacity
    level (`overloaded`) overloads the server on purpose: only a refused connection counts there."""
    kinds = ("connection",) if overloaded else ("connection", "truncated", "timeout")
    return any(
        r.get("error_type") in kinds or (not overloaded and str(r.get("error_type")).startswith("http_5"))
        for r in records
    )


def load_tokenizer(path: str) -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_file(path)))


def token_check(records: Iterable[dict], tok: Tokenizer | None, source: str | None) -> dict:
    """One endpoint's token accounting over its successful requests: how many carried the server's usage, and,
    with a tokenizer, how often re-tokenizing the answer's text gives another count than the server's."""
    ok = [r for r in records if r.get("ok")]
    usage = [r for r in ok if r.get("completion_tokens") is not None]
    out: dict = {
        "requests": len(ok),
        "with_usage": len(usage),
        "output_tokens_from": "usage.completion_tokens" if len(usage) == len(ok) else "token events",
        "prompt_tokens_usage_mean": _mean(
            [r["prompt_tokens"] for r in ok if r.get("prompt_tokens") is not None]
        ),
        "tokenizer": source,
    }
    if tok is None or not ok:
        return {**out, "mismatch_rate": None}
    diffs = []
    for r in ok:
        n = len(tok.encode(r.get("text") or "", add_special_tokens=False).ids)
        diffs.append(
            n - (r["completion_tokens"] if r.get("completion_tokens") is not None else r["output_tokens"])
        )
    off = [d for d in diffs if d]
    return {
        **out,
        "mismatched": len(off),
        "mismatch_rate": len(off) / len(diffs),
        "mean_abs_diff": sum(abs(d) for d in diffs) / len(diffs),
    }


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def token_checks(model_ids, records: list[dict], external: dict, models: dict) -> dict[str, dict]:
    """Each model's token accounting (`token_check`) with its own tokenizer: an external endpoint's, or a
    self-served model's checkpoint tokenizer."""
    toks = {m: (e.tokenizer, load_tokenizer(e.tokenizer)) for m, e in external.items() if e.tokenizer}
    for m, spec in models.items():
        if "checkpoint" in spec:
            tok = Tokenizer.from_str(spec["checkpoint"]["tokenizer.json"].decode("utf-8"))
            toks[m] = ("the served checkpoint's tokenizer.json", tok)
    out = {}
    for m in model_ids:
        source, tok = toks.get(m, (None, None))
        out[m] = token_check([r for r in records if r["variant"] == m], tok, source)
    return out
