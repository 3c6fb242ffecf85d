"""What finished jobs teach about run times: a compact, decaying summary per kind of job.

Pure: no clock reads, no I/O. A `RunTimes` summary keeps, per kind of job (account,
`job_type`, size band of `requested_count`), a log-scale histogram of run times: 64
buckets from 1 s to 2 days, every weight multiplied by ``2**(-1/half_life)`` when a
sample joins its histogram, so old samples fade and the total stays below about
``1.44 * half_life``. A sample also joins the coarser kinds (the account and type over
every size, the account, everyone) so a new kind borrows from its family until it has
`MIN_SAMPLES` of its own. At most `MAX_KEYS` kinds are kept; the stalest goes first.

A histogram is also a `Distribution` (CDF and partial mean, smoothed over neighbouring
buckets, log-uniform inside one), which `watcher.optimal` turns into a poll schedule.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Protocol

from watcher.strictjson import strict_json

BUCKETS = 64
LOW_S = 1.0
HIGH_S = 2 * 86400.0
LOG_RATIO = math.log(HIGH_S / LOW_S) / BUCKETS
EDGES = tuple(LOW_S * math.exp(LOG_RATIO * k) for k in range(BUCKETS + 1))
HALF_LIFE = 500.0
MIN_SAMPLES = 50
FAR_OUT = 0.99  # a job older than this share of its kind's run times is far outside what was seen
MAX_KEYS = 64
ANY = "*"
UNKNOWN = "?"
FORMAT = 1
_MAX_TEXT = 200
_DUST = 1e-3  # weights below this are dropped: a sample 5000 additions old

Key = tuple[str, str, str]  # (account, job_type, size band)


def size_band(requested_count: object) -> str:
    """The size band of `requested_count` ("<1k", "<10k", "<100k", ">=100k"; "?" unknown)."""
    if isinstance(requested_count, bool) or not isinstance(requested_count, int | float):
        return UNKNOWN
    if not math.isfinite(requested_count) or requested_count < 0:
        return UNKNOWN
    for bound, band in ((1_000, "<1k"), (10_000, "<10k"), (100_000, "<100k")):
        if requested_count < bound:
            return band
    return ">=100k"


def levels(key: Key) -> list[Key]:
    """`key` and its coarser kinds, most specific first."""
    account, job_type, _ = key
    chain = [key, (account, job_type, ANY), (account, ANY, ANY), (ANY, ANY, ANY)]
    return list(dict.fromkeys(chain))


def bucket_of(seconds: float) -> int:
    """The bucket of a run time; below 1 s is the first, beyond 2 days the last."""
    if not seconds > LOW_S:  # NaN too
        return 0
    return min(BUCKETS - 1, int(math.log(seconds / LOW_S) / LOG_RATIO))


@dataclass(frozen=True, slots=True)
class Histogram:
    """Decayed bucket weights of one kind of job; `count` samples were ever added."""

    weights: tuple[float, ...] = (0.0,) * BUCKETS
    count: int = 0
    touched: int = 0  # the summary's sequence number at its last sample: the stalest is evicted

    @property
    def total(self) -> float:
        return math.fsum(self.weights)

    def add(self, seconds: float, decay: float, seq: int) -> Histogram:
        k = bucket_of(seconds)
        weights = [w * decay if w * decay >= _DUST else 0.0 for w in self.weights]
        weights[k] += 1.0
        return Histogram(tuple(weights), self.count + 1, seq)

    def merge(self, other: Histogram) -> Histogram:
        weights = tuple(a + b for a, b in zip(self.weights, other.weights, strict=True))
        return Histogram(weights, self.count + other.count, max(self.touched, other.touched))

    def quantile(self, q: float) -> float:
        """The run time below which a share `q` of the weight lies (log-uniform within a bucket)."""
        return as_distribution(self.weights).quantile(q)

    def mean(self) -> float:
        return as_distribution(self.weights).mean()

    def median_after(self, age: float) -> float:
        """The run time by which half the jobs of this kind still running at `age` have ended."""
        dist = as_distribution(self.weights)
        return max(age, dist.quantile(dist.cdf(max(age, 0.0)) / 2 + 0.5))


@dataclass(frozen=True, slots=True)
class RunTimes:
    """Histograms of run times by kind of job; immutable, every change returns a new summary."""

    histograms: Mapping[Key, Histogram] = field(default_factory=dict)
    seq: int = 0
    half_life: float = HALF_LIFE

    def add(self, key: Key, seconds: float) -> RunTimes:
        """One finished job's run time, added to its kind and the coarser ones."""
        if not math.isfinite(seconds) or seconds < 0:
            return self
        decay = 0.5 ** (1.0 / self.half_life)
        seq = self.seq + 1
        histograms = dict(self.histograms)
        for level in levels(key):
            histograms[level] = histograms.get(level, Histogram()).add(seconds, decay, seq)
        return replace(self, histograms=_bounded(histograms), seq=seq)

    def merge(self, other: RunTimes) -> RunTimes:
        """Both summaries' samples (weights add: for summaries that hold disjoint samples)."""
        histograms = dict(self.histograms)
        for key, hist in other.histograms.items():
            histograms[key] = histograms[key].merge(hist) if key in histograms else hist
        return replace(self, histograms=_bounded(histograms), seq=max(self.seq, other.seq))

    def lookup(self, key: Key, min_samples: int = MIN_SAMPLES) -> Histogram | None:
        """The most specific histogram of `key`'s kinds with `min_samples`; None if none has."""
        for level in levels(key):
            hist = self.histograms.get(level)
            if hist is not None and hist.count >= min_samples:
                return hist
        return None

    def to_json(self) -> str:
        kinds = [
            {"k": list(key), "n": h.count, "t": h.touched,
             "w": [[i, r] for i, w in enumerate(h.weights) if (r := round(w, 4)) > 0]}
            for key, h in sorted(self.histograms.items())
        ]
        body = {"format": FORMAT, "half_life": self.half_life, "seq": self.seq, "kinds": kinds}
        return json.dumps(body, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> RunTimes:
        """Parse a stored summary; ValueError on anything but what `to_json` writes."""
        data = strict_json(text)
        if not isinstance(data, dict) or set(data) != {"format", "half_life", "seq", "kinds"}:
            raise ValueError("not a run-time summary")
        if data["format"] != FORMAT:
            raise ValueError(f"unknown summary format {data['format']!r}")
        half_life, seq, kinds = data["half_life"], _count(data["seq"]), data["kinds"]
        if isinstance(half_life, bool) or not isinstance(half_life, int | float) or not 1 <= half_life <= 1e6:
            raise ValueError("bad half_life")
        if not isinstance(kinds, list) or len(kinds) > MAX_KEYS:
            raise ValueError("bad kinds")
        histograms = dict(_kind(item, float(half_life)) for item in kinds)
        if len(histograms) != len(kinds):
            raise ValueError("a kind appears twice")
        return cls(histograms, seq, float(half_life))

    @classmethod
    def load(cls, text: str | None, half_life: float = HALF_LIFE) -> RunTimes:
        """A stored summary, or an empty one if there is none or it cannot be read."""
        try:
            return cls.from_json(text) if text is not None else cls(half_life=half_life)
        except ValueError:
            return cls(half_life=half_life)


def _bounded(histograms: dict[Key, Histogram]) -> dict[Key, Histogram]:
    if len(histograms) <= MAX_KEYS:
        return histograms
    keep = sorted(histograms, key=lambda k: (k == (ANY, ANY, ANY), histograms[k].touched))[-MAX_KEYS:]
    return {k: histograms[k] for k in keep}


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("not a count")
    return value


def _kind(item: Any, half_life: float) -> tuple[Key, Histogram]:
    if not isinstance(item, dict) or set(item) != {"k", "n", "t", "w"}:
        raise ValueError("bad kind")
    key, pairs = item["k"], item["w"]
    if not (isinstance(key, list) and len(key) == 3 and all(isinstance(p, str) and len(p) <= _MAX_TEXT for p in key)):
        raise ValueError("bad key")
    if not isinstance(pairs, list) or len(pairs) > BUCKETS:
        raise ValueError("bad weights")
    weights = [0.0] * BUCKETS
    ceiling = 1.5 * half_life + 2  # the decayed total never exceeds 1/(1 - decay) < 1.45 * half_life + 1
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError("bad weight")
        index, weight = _count(pair[0]), pair[1]
        if index >= BUCKETS or weights[index] or isinstance(weight, bool) or not isinstance(weight, int | float) \
                or not 0 < weight <= ceiling:
            raise ValueError("bad weight")
        weights[index] = float(weight)
    return (key[0], key[1], key[2]), Histogram(tuple(weights), _count(item["n"]), _count(item["t"]))


# --- distributions the schedule is computed for ------------------------------------


class Distribution(Protocol):
    """A run-time distribution: its CDF and partial mean ``E[T; T <= x]``, total mass 1."""

    def cdf(self, x: float) -> float: ...
    def partial_mean(self, x: float) -> float: ...


class _Dist:
    """A histogram as a distribution: smoothed over neighbouring buckets, log-uniform inside one."""

    def __init__(self, weights: tuple[float, ...]) -> None:
        kernel = (1.0, 4.0, 6.0, 4.0, 1.0)  # a few hundred samples are lumpy; a fifth of a decade is not
        smooth = [0.0] * BUCKETS
        for k, w in enumerate(weights):
            for d, c in zip(range(-2, 3), kernel, strict=True):
                smooth[min(max(k + d, 0), BUCKETS - 1)] += w * c / 16
        total = math.fsum(smooth) or 1.0
        self.mass = [w / total for w in smooth]
        self.cum, self.cum_mean = [0.0], [0.0]
        for k, m in enumerate(self.mass):
            self.cum.append(self.cum[-1] + m)
            self.cum_mean.append(self.cum_mean[-1] + m * (EDGES[k + 1] - EDGES[k]) / LOG_RATIO)

    def _split(self, x: float) -> tuple[int, float]:
        k = bucket_of(x)
        return k, (math.log(min(max(x, EDGES[k]), EDGES[k + 1]) / EDGES[k]) / LOG_RATIO)

    def cdf(self, x: float) -> float:
        k, share = self._split(x)
        return 0.0 if x <= LOW_S else min(1.0, self.cum[k] + self.mass[k] * share)

    def partial_mean(self, x: float) -> float:
        k, _ = self._split(x)
        return 0.0 if x <= LOW_S else self.cum_mean[k] + self.mass[k] * (min(x, EDGES[k + 1]) - EDGES[k]) / LOG_RATIO

    def mean(self) -> float:
        return self.cum_mean[-1]

    def quantile(self, q: float) -> float:
        k = min(max(bisect.bisect_left(self.cum, q) - 1, 0), BUCKETS - 1)
        share = min(max((q - self.cum[k]) / self.mass[k], 0.0), 1.0) if self.mass[k] > 0 else 0.0
        return EDGES[k] * math.exp(share * LOG_RATIO)


#: A histogram's weights as a distribution; one per summary content, since quantiles are asked on every poll.
as_distribution = lru_cache(maxsize=256)(_Dist)
