"""Per-request serving metrics, defined once: TTFT, TPOT, ITL, E2E, percentiles and goodput for 2c, the capacity
search, the in-process reference, `phase2 compare` and the benchmarks alike. Pure Python and numpy.

Definitions follow vLLM's benchmark:
- TTFT: request sent (or scheduled, open loop) -> first token chunk, at the client;
- TPOT: (E2E - TTFT) / (output_tokens - 1); a request of one token has none;
- ITL: per token. When one write carries k tokens, its gap since the previous write is spread over them (gap / k
  each), so the ITLs of a request add up to its first-to-last arrival time;
- goodput: the share of requests that succeeded and met every SLO: TTFT within its bound, and TPOT within its
  bound where the request has a TPOT (one-token requests are judged on TTFT alone).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

PERCENTILES = (50, 90, 99)


def tpot_ms(e2e_ms: float | None, ttft_ms: float | None, output_tokens: int | None) -> float | None:
    """Time per output token after the first; None for a request of fewer than two tokens or not measured."""
    if e2e_ms is None or ttft_ms is None or (output_tokens or 0) < 2:
        return None
    return (e2e_ms - ttft_ms) / (output_tokens - 1)


def spread_gap(gap_ms: float, tokens: int) -> list[float]:
    """The per-token ITLs of one write of `tokens` tokens that arrived `gap_ms` after the previous write."""
    return [gap_ms / tokens] * tokens if tokens > 0 else []


def meets_slo(rec: dict, ttft_max_ms: float, tpot_max_ms: float) -> bool:
    """A request is good when it succeeded, its TTFT is within the bound, and its TPOT too where it has one."""
    if not rec.get("ok") or rec.get("ttft_ms") is None or rec["ttft_ms"] > ttft_max_ms:
        return False
    tpot = tpot_ms(rec.get("e2e_ms"), rec["ttft_ms"], rec.get("output_tokens"))
    return tpot is None or tpot <= tpot_max_ms


def describe(values: Iterable[float], percentiles: tuple[int, ...] = PERCENTILES) -> dict[str, float] | None:
    """p50/p90/p99 (or `percentiles`), mean and count of the finite `values` (None when there are none: an
    unmeasured figure is not reported)."""
    arr = np.asarray(list(values), dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return None
    out = {f"p{p}": float(np.percentile(arr, p)) for p in percentiles}
    out["mean"] = float(arr.mean())
    out["n"] = int(arr.size)
    return out
