"""Prometheus text exposition of the service's counters. No client library needed."""
from __future__ import annotations

import threading
from collections import defaultdict

from .engine.repository import ModelRepository

# Request latency buckets in seconds.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class RequestMetrics:
    """Requests by transport, route and status, and a latency histogram per transport/route."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = defaultdict(int)
        self._buckets: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * len(_BUCKETS))
        self._sums: dict[tuple[str, str], float] = defaultdict(float)
        self._totals: dict[tuple[str, str], int] = defaultdict(int)

    def observe(self, transport: str, route: str, status: str, seconds: float) -> None:
        with self._lock:
            self._counts[(transport, route, status)] += 1
            key = (transport, route)
            buckets = self._buckets[key]
            for index, bound in enumerate(_BUCKETS):
                if seconds <= bound:
                    buckets[index] += 1
            self._sums[key] += seconds
            self._totals[key] += 1

    def render(self) -> list[str]:
        lines = ["# HELP ortembed_requests_total Requests answered, by transport, route and status.",
                 "# TYPE ortembed_requests_total counter"]
        with self._lock:
            for (transport, route, status), count in sorted(self._counts.items()):
                lines.append(f"ortembed_requests_total{_labels(transport=transport, route=route, status=status)} {count}")
            lines += ["# HELP ortembed_request_seconds Request latency.", "# TYPE ortembed_request_seconds histogram"]
            for (transport, route), buckets in sorted(self._buckets.items()):
                for bound, count in zip(_BUCKETS, buckets):
                    lines.append(f"ortembed_request_seconds_bucket{_labels(transport=transport, route=route, le=str(bound))} {count}")
                labels = _labels(transport=transport, route=route)
                total = self._totals[(transport, route)]
                lines.append(f"ortembed_request_seconds_bucket{_labels(transport=transport, route=route, le='+Inf')} {total}")
                lines.append(f"ortembed_request_seconds_sum{labels} {self._sums[(transport, route)]:.6f}")
                lines.append(f"ortembed_request_seconds_count{labels} {total}")
        return lines


_MODEL_COUNTERS = (
    ("session_calls_total", "calls", "ONNX Runtime session calls."),
    ("sequences_total", "sequences", "Sequences embedded."),
    ("tokens_total", "tokens", "Real tokens embedded."),
    ("padded_tokens_total", "padded_tokens", "Tokens computed including padding."),
    ("failed_calls_total", "failed_calls", "Session calls that failed."),
    ("dropped_sequences_total", "dropped_sequences", "Queued sequences dropped: caller gone or deadline passed."),
    ("rejected_requests_total", "rejected_requests", "Requests refused because the queue was full."),
    ("busy_seconds_total", "busy_seconds", "Seconds spent inside session calls."),
    ("loop_wakeups_total", "loop_wakeups", "Wake-ups of the event loop that carried finished vectors to it."),
    ("lone_calls_total", "lone_calls", "Session calls run alone on the every-CPU session (nothing else running)."),
)


def render(repository: ModelRepository | None, requests: RequestMetrics) -> str:
    lines = requests.render()
    lines += ["# HELP ortembed_ready 1 when every model is loaded and warmed up.", "# TYPE ortembed_ready gauge",
              f"ortembed_ready {int(bool(repository and repository.ready))}"]
    models = repository.models() if repository else []
    lines += ["# HELP ortembed_queue_sequences Sequences waiting per model.", "# TYPE ortembed_queue_sequences gauge"]
    lines += [f"ortembed_queue_sequences{_labels(model=m.name)} {m.scheduler.queued}" for m in models]
    for metric, attr, help_text in _MODEL_COUNTERS:
        lines += [f"# HELP ortembed_{metric} {help_text}", f"# TYPE ortembed_{metric} counter"]
        lines += [f"ortembed_{metric}{_labels(model=m.name)} {getattr(m.scheduler.stats, attr)}" for m in models]
    return "\n".join(lines) + "\n"
