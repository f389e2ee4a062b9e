"""The requests a validation run sends: prompts and output lengths drawn from distributions (prompts cut from
held-out text), or read from a user's file (JSONL `{"prompt": ..., "max_tokens": ...}` per line, or a
ShareGPT-style JSON list of conversations). Seeded: the same config sends the same requests. No Ray here.

Every request must fit the model's context: a prompt longer than the context leaves for its output keeps its
last tokens (the part the model continues from), and the count of cut prompts is reported."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from phase2_ray.config.serving import LengthDist, WorkloadConfig


class WorkloadError(ValueError):
    """A workload file or setting that cannot give requests; the message names the file and line."""


@dataclass(frozen=True)
class Workload:
    requests: list[tuple[str, int]]
    """(prompt, max_tokens) per request; request i sends requests[i % len(requests)]."""
    source: str
    truncated: int = 0
    """Prompts cut to fit the context."""

    def summary(self) -> dict:
        outs = [m for _, m in self.requests]
        return {
            "source": self.source,
            "requests": len(self.requests),
            "truncated_prompts": self.truncated,
            "max_tokens": {"min": min(outs), "max": max(outs), "mean": sum(outs) / len(outs)},
        }


def draw(dist: LengthDist, rng: random.Random) -> int:
    if dist.dist == "fixed":
        return int(dist.value)
    if dist.dist == "uniform":
        return rng.randint(dist.min, dist.max)
    return max(dist.min, min(dist.max, round(rng.gauss(dist.mean, dist.std))))


def build_workload(
    cfg: WorkloadConfig,
    tok,
    val_ids: list[int],
    *,
    block_size: int,
    default_prompt_tokens: int,
    default_max_tokens: int,
    seed: int,
) -> Workload:
    """The run's requests from `validation.workload` (tok: a `tokenizers.Tokenizer`). Raises WorkloadError."""
    rng = random.Random(seed)
    if cfg.file:
        items = read_file(Path(cfg.file), cfg.format, default_max_tokens)
        if cfg.output_tokens:  # lengths from the config override the file's
            items = [(p, draw(cfg.output_tokens, rng)) for p, _ in items]
        out, cut = [], 0
        for prompt, max_tokens in items:
            max_tokens = min(max_tokens, block_size - 1)
            ids = tok.encode(prompt).ids
            room = block_size - max_tokens
            if len(ids) > room:
                ids, cut = ids[-room:], cut + 1
                prompt = tok.decode(ids)
            if not ids or not prompt.strip():
                continue
            out.append((prompt, max_tokens))
        if not out:
            raise WorkloadError(f"validation.workload.file {cfg.file}: no usable prompt")
        return Workload(out, str(cfg.file), cut)
    pd = cfg.prompt_tokens or LengthDist(dist="fixed", value=default_prompt_tokens)
    od = cfg.output_tokens or LengthDist(dist="fixed", value=default_max_tokens)
    out = []
    for _ in range(cfg.count):
        n_prompt, n_out = draw(pd, rng), draw(od, rng)
        n_out = min(n_out, block_size - 1)
        n_prompt = max(1, min(n_prompt, block_size - n_out))
        off = rng.randrange(0, max(1, len(val_ids) - n_prompt))
        text = tok.decode(val_ids[off : off + n_prompt])
        # decoding then re-encoding can merge tokens differently: keep what fits
        ids = tok.encode(text).ids[: block_size - n_out]
        if ids and text.strip():
            out.append((tok.decode(ids), n_out))
    if not out:
        raise WorkloadError("validation.workload: no usable prompt could be cut from the val split")
    return Workload(out, f"prompt {_describe(pd)}, output {_describe(od)} tokens")


def _describe(d: LengthDist) -> str:
    if d.dist == "fixed":
        return f"{d.value}"
    if d.dist == "uniform":
        return f"uniform[{d.min}, {d.max}]"
    return f"normal({d.mean:g}, {d.std:g}) in [{d.min}, {d.max}]"


def read_file(path: Path, fmt: str, default_max_tokens: int) -> list[tuple[str, int]]:
    """(prompt, max_tokens) pairs from a JSONL or ShareGPT-style JSON file; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise WorkloadError(f"validation.workload.file {path}: cannot read it ({e})") from e
    if fmt == "auto":
        fmt = "sharegpt" if text.lstrip().startswith("[") else "jsonl"
    return (
        _sharegpt(path, text, default_max_tokens)
        if fmt == "sharegpt"
        else _jsonl(path, text, default_max_tokens)
    )


def _jsonl(path: Path, text: str, default_max_tokens: int) -> list[tuple[str, int]]:
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"validation.workload.file {path}, line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"{where}: not JSON ({e.msg})") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"]:
            raise WorkloadError(f'{where}: expected {{"prompt": "<non-empty text>", "max_tokens": <int>}}')
        mt = obj.get("max_tokens", default_max_tokens)
        if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
            raise WorkloadError(f"{where}: max_tokens must be an integer >= 1, got {mt!r}")
        out.append((obj["prompt"], mt))
    if not out:
        raise WorkloadError(f"validation.workload.file {path}: no requests in it")
    return out


def _sharegpt(path: Path, text: str, default_max_tokens: int) -> list[tuple[str, int]]:
    """The first human turn of each conversation is the prompt; the reply's length in words (a stand-in for its
    tokens under the user's tokenizer, which is not ours) is its max_tokens."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkloadError(f"validation.workload.file {path}, line {e.lineno}: not JSON ({e.msg})") from e
    if not isinstance(data, list):
        raise WorkloadError(
            f"validation.workload.file {path}: a ShareGPT file is a JSON list of conversations"
        )
    out = []
    for i, conv in enumerate(data):
        turns = conv.get("conversations") if isinstance(conv, dict) else None
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise WorkloadError(
                f'validation.workload.file {path}, conversation {i}: expected {{"conversations": '
                '[{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}'
            )
        human = next((t.get("value") for t in turns if t.get("from") in ("human", "user")), None)
        reply = next((t.get("value") for t in turns if t.get("from") in ("gpt", "assistant")), None)
        if isinstance(human, str) and human.strip():
            n = len(reply.split()) if isinstance(reply, str) and reply.split() else default_max_tokens
            out.append((human, n))
    if not out:
        raise WorkloadError(f"validation.workload.file {path}: no conversation with a human turn")
    return out
