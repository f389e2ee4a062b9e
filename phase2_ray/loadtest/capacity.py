"""Capacity under an SLO: the highest offered request rate at which enough requests still meet the latency SLO.

Pure Python (no Ray, no HTTP): the driver measures one open-loop level at a time and feeds the outcome to
`CapacitySearch`, which says what rate to try next. The search brackets (the rate doubles while levels pass), then
bisects between the highest passing and the lowest failing rate until they are within `rel_tol` of each other, the
level budget is spent, or time runs out. Latency counts from each request's scheduled arrival (open loop: no
coordinated omission), so a queue that builds up shows as late first tokens.

A level is *invalid*, not failed, when the load generator itself fell behind its schedule (it could not send at the
offered rate while the server kept up): that level says nothing about the server and is not counted as its limit.

Near the knee a short level started from an empty queue passes by luck, so the bisection's estimate is confirmed
with a longer level; one that fails steps the estimate down by `rel_tol` and is confirmed again. Capacity is then
interpolated where a monotone fit of goodput over the rates crosses `goodput_min`, passing short levels above a
confirmed rate left out. Its interval inverts each level's own test: from the highest rate whose goodput passes
beyond its interval to the lowest that fails beyond it (None where no level is that clear). A level's requests
are not independent (they share the queue's moment), so a goodput's interval comes from batch means over
consecutive stretches of the level, not from a count of requests."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.special import ndtri, stdtrit

from phase2_ray.report import request_metrics


@dataclass(frozen=True)
class Slo:
    ttft_ms: float
    """Time to first token, from the request's scheduled arrival."""
    tpot_ms: float
    """Time per output token after the first."""


def meets_slo(rec: dict, slo: Slo) -> bool:
    """A request is good when it succeeded and met the SLO (request_metrics.meets_slo: the one rule of goodput)."""
    return request_metrics.meets_slo(rec, slo.ttft_ms, slo.tpot_ms)


@dataclass
class LevelOutcome:
    """One open-loop level, summarised for the search (and, as a dict, for report.json)."""

    offered_rps: float
    requests: int
    """Requests counted for goodput: those after the level's settling part."""
    good: int
    achieved_rps: float
    """Requests sent per second of the level's sending span."""
    scheduled_rps: float
    """Arrivals per second of the schedule the generator drew (Poisson: a short level's differs from the offered
    rate by chance); the generator is judged against it."""
    generator_lag_ms_p99: float
    """How late the generator sent requests against their schedule (its own lateness, not the server's)."""
    ttft_trend: float
    """TTFT p50 of the level's last third over its first third: a growing queue shows as a rising ratio."""
    saturated: bool
    """The queue grew through the level (over-saturation): goodput then counts the last third only."""
    valid: bool
    latency: dict = field(default_factory=dict)
    """p50 / p99 of TTFT and TPOT over the level's successful requests (for latency vs offered load)."""
    invalid_reason: str | None = None
    stopped_early: bool = False
    confirm: bool = False
    """A confirmation level (longer, at the estimate)."""
    client_cpu_ms_per_request: float | None = None
    """The load generators' own CPU time per request sent (set by the caller, which measures it)."""
    good_flags: list[bool] = field(default_factory=list, repr=False)
    """Each counted request, in scheduled order: met the SLO or not."""

    @property
    def goodput_frac(self) -> float:
        return self.good / self.requests if self.requests else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("good_flags")
        d["goodput_frac"] = self.goodput_frac
        d["goodput_ci95"] = list(goodput_interval(self.good_flags, 0.95))
        return d


def level_outcome(
    records: Sequence[dict],
    offered_rps: float,
    slo: Slo,
    *,
    max_generator_lag_ms: float | None = None,
    min_achieved_frac: float = 0.95,
    stopped_early: bool = False,
    confirm: bool = False,
    settle_frac: float = 0.25,
    saturation_ratio: float = 2.0,
    saturation_slo_frac: float = 0.25,
) -> LevelOutcome:
    """Summarises one level's records (warm-ups excluded by the caller), in scheduled order.

    Goodput counts the requests after the first `settle_frac` of the level: a level starts with an empty queue,
    and its first requests see a server the load has not reached yet (a short level would overstate capacity)."""
    recs = sorted(records, key=lambda r: r.get("scheduled") or r.get("start") or 0.0)
    good = [meets_slo(r, slo) for r in recs[int(len(recs) * settle_frac) :]]
    sends = [r["start"] for r in recs if r.get("start") is not None and r.get("error_type") != "not_sent"]
    span = max(sends) - min(sends) if len(sends) > 1 else 0.0
    achieved = (len(sends) - 1) / span if span > 0 else float("nan")
    # The schedule's own rate: Poisson arrivals of a few hundred requests differ from the nominal rate by a few
    # percent by chance; the generator is judged against the schedule it drew, not against the nominal rate.
    planned = [r["scheduled"] for r in recs if r.get("scheduled") is not None]
    planned_span = max(planned) - min(planned) if len(planned) > 1 else 0.0
    scheduled_rps = (len(planned) - 1) / planned_span if planned_span > 0 else offered_rps
    lags = [r.get("send_lag_ms") or 0.0 for r in recs]
    lag_p99 = float(np.percentile(lags, 99)) if lags else 0.0
    # A request that failed waited at least as long as it lasted: its TTFT counts as its whole time.
    ttfts = [r["ttft_ms"] if r.get("ttft_ms") is not None else _elapsed_ms(r) for r in recs]
    third = len(ttfts) // 3
    trend, saturated = float("nan"), False
    if third >= 3:
        first, last = float(np.median(ttfts[:third])), float(np.median(ttfts[-third:]))
        trend = last / first if first > 0 else float("inf")
        # The queue grows: the level's last third waits much longer than its first, by a good part of the SLO.
        # Below capacity a level settles within its first part, and its thirds differ by noise.
        saturated = trend > saturation_ratio and last - first > saturation_slo_frac * slo.ttft_ms
    if saturated:
        # What the level measured is a transient that a longer level would take further: goodput is judged on
        # its last third, nearest to where the queue was heading.
        good = [meets_slo(r, slo) for r in recs[-third:]]
    valid, reason = True, None
    # The generator fell behind on its own (late sends, not a slot it waited for): the level measured the client.
    # Latency counts from the schedule, so a generator late by half the TTFT budget fails requests by itself.
    if max_generator_lag_ms is None:
        max_generator_lag_ms = 0.5 * slo.ttft_ms
    behind = lag_p99 > max_generator_lag_ms or (
        not stopped_early and math.isfinite(achieved) and achieved < min_achieved_frac * scheduled_rps
    )
    if behind and not stopped_early:
        server_kept_up = sum(good) >= 0.95 * len(good) if good else False
        if server_kept_up or lag_p99 > max_generator_lag_ms:
            valid = False
            reason = (
                f"the load generator fell behind: sent {achieved:.2f} req/s of {offered_rps:.2f} offered, "
                f"p99 send lag {lag_p99:.1f} ms"
            )
    return LevelOutcome(
        latency=_latency(recs),
        offered_rps=offered_rps,
        requests=len(good),
        good=sum(good),
        achieved_rps=achieved,
        scheduled_rps=scheduled_rps,
        generator_lag_ms_p99=lag_p99,
        ttft_trend=trend,
        saturated=saturated,
        valid=valid,
        invalid_reason=reason,
        stopped_early=stopped_early,
        confirm=confirm,
        good_flags=good,
    )


@dataclass
class CapacitySearch:
    """Which rate to offer next, from the outcomes so far. Use: `while (r := s.next_rate()) is not None:
    s.observe(measure(r))`, then `s.result()`."""

    goodput_min: float = 0.95
    start_rps: float = 1.0
    growth: float = 2.0
    rel_tol: float = 0.10
    max_levels: int = 12
    max_rps: float = 10_000.0
    levels: list[LevelOutcome] = field(default_factory=list)
    stop_reason: str | None = None
    confirming: bool = False
    """The rate `next_rate()` just gave is a confirmation: measure it with a longer level (`confirm_factor`)."""
    confirm_factor: float = 2.0
    _fitted: list[float] = field(default_factory=list, repr=False)

    def passes(self, o: LevelOutcome) -> bool:
        return o.valid and o.requests > 0 and o.goodput_frac >= self.goodput_min

    def _valid(self) -> list[LevelOutcome]:
        """The levels the estimate rests on, by rate: valid ones; once a confirmation has passed, short levels
        that passed above it are left out (a short level passes by luck near the knee; the longer one that
        confirmed a lower rate outweighs them)."""
        levels = [o for o in self.levels if o.valid and o.requests]
        confirmed = [o.offered_rps for o in levels if o.confirm and self.passes(o)]
        if confirmed:
            top = max(confirmed)
            levels = [o for o in levels if o.confirm or o.offered_rps <= top or not self.passes(o)]
        return sorted(levels, key=lambda o: o.offered_rps)

    @property
    def confirmed(self) -> bool:
        return any(o.confirm and self.passes(o) for o in self.levels)

    def _bracket(self, fracs: list[float] | None = None) -> tuple[int | None, int | None]:
        """Indexes into `_valid()` of the highest rate whose fitted goodput meets the bar and of the next rate
        above it. The fit is monotone (goodput cannot rise with load): one lucky level above a failing one does
        not move the bracket past it."""
        levels = self._valid()
        fitted = decreasing_fit(
            [o.offered_rps for o in levels],
            fracs if fracs is not None else [o.goodput_frac for o in levels],
            [o.requests for o in levels],
        )
        ok = [i for i, g in enumerate(fitted) if g >= self.goodput_min]
        lo = max(ok) if ok else None
        if lo is None:
            hi = 0 if levels else None
        else:
            hi = lo + 1 if lo + 1 < len(levels) else None
        self._fitted = fitted
        return lo, hi

    def _rates(self) -> tuple[float | None, float | None]:
        lo, hi = self._bracket()
        levels = self._valid()
        return (
            levels[lo].offered_rps if lo is not None else None,
            levels[hi].offered_rps if hi is not None else None,
        )

    def next_rate(self) -> float | None:
        self.confirming = False
        if self.stop_reason:
            return None
        if len(self.levels) >= self.max_levels:
            self.stop_reason = f"level budget spent ({self.max_levels} levels)"
            return None
        if not self.levels:
            return self.start_rps
        last = self.levels[-1]
        if not last.valid:
            # once more at the same rate (a moment of the machine's, perhaps); twice running: the generator's limit
            if len(self.levels) >= 2 and not self.levels[-2].valid:
                self.stop_reason = f"invalid level at {last.offered_rps:.3g} req/s: {last.invalid_reason}"
                return None
            self.confirming = last.confirm
            return last.offered_rps
        if last.confirm:
            if self.passes(last):
                self.stop_reason = f"{last.offered_rps:.3g} req/s confirmed by a longer level"
                return None
            # The estimate failed when measured longer: step down by the tolerance and confirm again.
            nxt = last.offered_rps / (1 + self.rel_tol)
            if nxt < self.start_rps / self.growth**4:
                self.stop_reason = "no offered rate met the SLO"
                return None
            self.confirming = True
            return nxt
        lo, hi = self._rates()
        if hi is None:  # still bracketing upwards
            nxt = (lo or self.start_rps) * self.growth
            if nxt > self.max_rps:
                self.stop_reason = f"every level up to max_rps={self.max_rps:g} met the SLO"
                return None
            return nxt
        if lo is None:  # even the first level failed: go down
            nxt = hi / self.growth
            if nxt < self.start_rps / self.growth**4:
                self.stop_reason = "no offered rate met the SLO"
                return None
            return nxt
        if (hi - lo) / lo <= self.rel_tol:
            # Confirm at the estimate with a longer level: near the knee a short level from an empty queue
            # passes by luck (the queue has not reached its steady length); a confirmation that fails becomes
            # the new upper end and the bisection goes on.
            self.confirming = True
            est = self._estimate([o.goodput_frac for o in self._valid()])
            return est if est is not None and lo < est < hi else lo
        return math.sqrt(lo * hi)  # bisect on a log scale: the bracket spans a factor, not a distance

    def stop(self, reason: str) -> None:
        """Ends the search from outside (the time budget)."""
        self.stop_reason = self.stop_reason or reason

    def observe(self, outcome: LevelOutcome) -> None:
        self.levels.append(outcome)

    def result(self, *, confidence: float = 0.95) -> dict:
        lo_rate, hi_rate = self._rates()
        out: dict = {
            "capacity_rps": None,
            "ci_low": None,
            "ci_high": None,
            "confidence": confidence,
            "highest_passing_rps": lo_rate,
            "lowest_failing_rps": hi_rate,
            "goodput_min": self.goodput_min,
            "stop_reason": self.stop_reason,
            "censored": hi_rate is None and lo_rate is not None,
            "confirmed": self.confirmed,
            "levels": [o.to_dict() for o in self.levels],
            "method": "monotone fit of goodput over the levels' offered rates, crossing interpolated; "
            "interval: from the highest level passing beyond its goodput's interval (batch means) to the lowest "
            "level failing beyond it",
        }
        if lo_rate is None:
            return out
        if hi_rate is None:  # never failed: capacity is at least `lo`, no crossing to locate
            out["capacity_rps"] = lo_rate
            return out
        levels = self._valid()
        est = self._estimate([o.goodput_frac for o in levels])
        out["capacity_rps"] = est
        # The interval inverts each level's test: capacity is at least the highest rate whose goodput is above
        # the bar beyond its own sampling error, and below the lowest rate that is under it beyond its error.
        # A level's pass or fail near the knee is as much luck as load; this interval carries that, where the
        # bracket alone would not.
        ci = {id(o): goodput_interval(o.good_flags, confidence) for o in levels}
        clearly_ok = [o.offered_rps for o in levels if ci[id(o)][0] >= self.goodput_min]
        clearly_bad = [o.offered_rps for o in levels if ci[id(o)][1] < self.goodput_min]
        below = [r for r in clearly_ok if r <= est]
        above = [r for r in clearly_bad if r >= est]
        out["ci_low"] = float(max(below)) if below else None
        out["ci_high"] = float(min(above)) if above else None
        return out

    def _estimate(self, fracs: list[float]) -> float | None:
        levels = self._valid()
        lo, hi = self._bracket(fracs)
        if lo is None:
            return levels[0].offered_rps if levels else None  # not even the lowest rate: at most that
        if hi is None:
            return levels[lo].offered_rps
        f = self._fitted
        return crossing(levels[lo].offered_rps, f[lo], levels[hi].offered_rps, f[hi], self.goodput_min)


def _latency(recs: Sequence[dict]) -> dict:
    ok = [r for r in recs if r.get("ok") and r.get("ttft_ms") is not None]
    ttft = [r["ttft_ms"] for r in ok]
    tpot = [request_metrics.tpot_ms(r.get("e2e_ms"), r["ttft_ms"], r.get("output_tokens")) for r in ok]
    out: dict = {"ok": len(ok)}
    for name, xs in (("ttft", ttft), ("tpot", [x for x in tpot if x is not None])):
        d = request_metrics.describe(xs, (50, 99)) or {}
        for q in (50, 99):
            out[f"{name}_p{q}_ms"] = d.get(f"p{q}")
    return out


def _elapsed_ms(rec: dict) -> float:
    start = rec.get("scheduled") or rec.get("start") or 0.0
    return max(0.0, ((rec.get("end") or start) - start) * 1000.0)


def decreasing_fit(rates: list[float], fracs: list[float], weights: list[int]) -> list[float]:
    """Weighted least-squares fit of `fracs` (ordered by rate) that never rises: pool adjacent violators."""
    blocks: list[list[float]] = []  # [value, weight, count]
    for f, w in zip(fracs, weights, strict=True):
        blocks.append([f, float(w), 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return [v for v, _, n in blocks for _ in range(n)]


def crossing(r_lo: float, g_lo: float, r_hi: float, g_hi: float, g_min: float) -> float:
    """The rate where goodput falls to `g_min`, interpolated linearly between two levels (clamped to them)."""
    if g_lo <= g_hi or g_lo < g_min:
        return r_lo if g_lo < g_min else r_hi
    frac = (g_lo - g_min) / (g_lo - g_hi)
    return r_lo + min(1.0, max(0.0, frac)) * (r_hi - r_lo)


def wilson(good: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion (good of n), which stays inside [0, 1] and is sane at 0 or n."""
    if n == 0:
        return 0.0, 1.0
    p = good / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


BATCHES = 8


def goodput_interval(flags: list[bool], confidence: float) -> tuple[float, float]:
    """Interval of a level's goodput: t over the means of BATCHES consecutive stretches of its requests (batch
    means: neighbours in time share the queue, so a request count would overstate what the level knows); where
    every stretch agrees, Wilson's interval over the requests (batch means would give zero width)."""
    n = len(flags)
    if n == 0:
        return 0.0, 1.0
    z = float(ndtri(0.5 + confidence / 2))
    if n < 2 * BATCHES:
        return wilson(sum(flags), n, z)
    arr = np.asarray(flags, dtype=float)
    means = [float(b.mean()) for b in np.array_split(arr, BATCHES)]
    sd = float(np.std(means, ddof=1))
    w_lo, w_hi = wilson(int(arr.sum()), n, z)
    if sd == 0:
        return w_lo, w_hi
    half = float(stdtrit(BATCHES - 1, 0.5 + confidence / 2)) * sd / math.sqrt(BATCHES)
    m = float(arr.mean())
    return max(0.0, min(m - half, w_lo)), min(1.0, max(m + half, w_hi))


def requests_to_show(goodput_min: float, confidence: float = 0.95) -> int:
    """Requests a level needs, all of them good, for its goodput's interval to clear `goodput_min` (Wilson:
    n >= z^2 g / (1 - g)), with half again as many so that a miss or two still can: a confirmation level is at
    least this long, or the capacity it confirms could not be told from luck."""
    z = float(ndtri(0.5 + confidence / 2))
    return math.ceil(1.5 * z * z * goodput_min / max(1e-9, 1 - goodput_min))
