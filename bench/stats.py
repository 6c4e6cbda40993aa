"""Small statistics: summaries of repeats and latency percentiles (no numpy needed here)."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    count: int

    def fmt(self, digits: int = 1) -> str:
        if self.count == 1:
            return f"{self.median:.{digits}f}"
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def summarize(values: Iterable[float]) -> Summary | None:
    data = [v for v in values if v is not None and not math.isnan(v)]
    if not data:
        return None
    return Summary(statistics.median(data), min(data), max(data), len(data))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of unsorted values."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (rank - lo)
