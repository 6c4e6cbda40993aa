"""Prometheus metrics with prometheus-client, one registry per app.

Modelled on text-embeddings-inference's `te_*` set: requests by transport, route and status with
their latency; per model and tower the time items wait in the queue, tokenization, image
decoding, session calls, items per call and tokens per sequence; counters and gauges read at
scrape time from the engine's own counters (nothing on the hot path); model states; build and
model info; the process's own `process_*` metrics.

Hot-path cost: histograms are observed in the worker thread after each call, with label children
bound once per tower (`bench/` measures the cost: a few microseconds per call).
"""
from __future__ import annotations

import platform
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .engine.model import EmbeddingModel
from .engine.repository import ModelRepository
from .engine.scheduler import CallRecord

VERSION = "0.1.0"
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_COUNTERS = (
    ("calls", "calls", "Session calls."),
    ("sequences", "sequences", "Items embedded (text sequences or images)."),
    ("tokens", "tokens", "Real tokens embedded (images count 1)."),
    ("padded_tokens", "padded_tokens", "Tokens computed, padding included."),
    ("failed_calls", "failed_calls", "Session calls that failed."),
    ("failed_items", "failed_items", "Items refused while being prepared (broken images)."),
    ("dropped_sequences", "dropped_sequences", "Queued items dropped: caller gone or deadline passed."),
    ("rejected_requests", "rejected_requests", "Requests refused at once: queue full or deadline out of reach."),
    ("busy_seconds", "busy_seconds", "Seconds spent inside session calls."),
    ("lone_calls", "lone_calls", "Session calls run alone on the every-CPU session."),
    ("loop_wakeups", "loop_wakeups", "Wake-ups of the event loop that carried finished vectors to it."),
)


def _versions() -> dict[str, str]:
    import numpy
    import onnxruntime
    import tokenizers

    found = {"version": VERSION, "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
             "numpy": numpy.__version__, "tokenizers": tokenizers.__version__}
    try:
        import openvino

        found["openvino"] = openvino.__version__.split("-")[0]
    except ImportError:
        pass
    return found


class _EngineCollector(Collector):
    """Counters and gauges read from the repository at scrape time."""

    def __init__(self, repository: Callable[[], ModelRepository | None]) -> None:
        self._repository = repository

    def collect(self) -> Iterable[Metric]:
        repository = self._repository()
        towers = [(m, kind, t.scheduler) for m in (repository.models() if repository else [])
                  for kind, t in m.towers.items()]
        for name, attr, text in _COUNTERS:
            family = CounterMetricFamily(f"ortembed_{name}", text, labels=["model", "tower"])
            for model, kind, scheduler in towers:
                family.add_metric([model.name, kind], getattr(scheduler.stats, attr))
            yield family
        queue = GaugeMetricFamily("ortembed_queue_items", "Items waiting per model and tower.", labels=["model", "tower"])
        for model, kind, scheduler in towers:
            queue.add_metric([model.name, kind], scheduler.queued)
        yield queue
        info = GaugeMetricFamily("ortembed_model_info", "Loaded models (value 1).",
                                 labels=["model", "recipe", "backend", "modality", "dimensions", "max_tokens", "aliases"])
        for model in (repository.models() if repository else []):
            m = model.manifest
            info.add_metric([m.name, m.recipe, model.settings.backend, m.modality, str(m.dimensions),
                             str(m.max_tokens), ",".join(m.aliases)], 1)
        yield info
        states = GaugeMetricFamily("ortembed_model_state", "Each model folder's state (value 1).",
                                   labels=["folder", "model", "state"])
        for state in (repository.states() if repository else []):
            states.add_metric([state.folder, state.name or "", state.status], 1)
        yield states
        pool = repository.pool if repository else None
        for name, text, value in (
                ("ortembed_ready", "1 when models are loaded and warmed up.", int(bool(repository and repository.ready))),
                ("ortembed_workers", "Worker threads (the CPU budget shared by every model).", pool.size if pool else 0),
                ("ortembed_busy_workers", "Workers inside a session call now.", pool.busy if pool else 0),
                ("ortembed_longest_call_seconds", "How long the oldest running session call has run.",
                 pool.longest_call() if pool else 0.0)):
            yield GaugeMetricFamily(name, text, value=value)


class ServiceMetrics:
    def __init__(self, repository: Callable[[], ModelRepository | None] = lambda: None) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        Info("ortembed_build", "Versions of ortembed and the libraries it runs on.", registry=registry).info(_versions())
        registry.register(_EngineCollector(repository))
        self.requests = Counter("ortembed_requests", "Requests answered, by transport, route and status.",
                                ["transport", "route", "status"], registry=registry)
        self.request_seconds = Histogram("ortembed_request_duration_seconds", "Request latency.",
                                         ["transport", "route", "status"], buckets=_LATENCY, registry=registry)
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        per_tower = ["model", "tower"]
        self.queue_seconds = Histogram("ortembed_queue_duration_seconds", "Time an item waited in its queue.",
                                       per_tower, buckets=_LATENCY, registry=registry)
        self.call_seconds = Histogram("ortembed_inference_duration_seconds", "Session call time.",
                                      per_tower + ["runner"], buckets=_LATENCY, registry=registry)
        self.call_items = Histogram("ortembed_batch_size", "Items per session call.", per_tower, buckets=_SIZES,
                                    registry=registry)
        self.input_tokens = Histogram("ortembed_input_tokens", "Tokens per sequence (after truncation).", ["model"],
                                      buckets=_TOKENS, registry=registry)
        self.tokenize_seconds = Histogram("ortembed_tokenization_duration_seconds", "Tokenization time per request.",
                                          ["model"], buckets=_LATENCY, registry=registry)
        self.decode_seconds = Histogram("ortembed_image_decode_duration_seconds",
                                        "Decoding and preprocessing time per image.", ["model"], buckets=_LATENCY,
                                        registry=registry)

    def observe(self, transport: str, route: str, status: str, seconds: float) -> None:
        key = (transport, route, status)  # route templates and status codes: a small, closed set
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(*key), self.request_seconds.labels(*key))
        children[0].inc()
        children[1].observe(seconds)

    def watch(self, model: EmbeddingModel) -> None:
        """Observe every call of the model's towers (repository hook, once per loaded model)."""
        for kind, tower in model.towers.items():
            tower.scheduler.observers.append(self._call_observer(model.name, kind))
            observers = getattr(tower, "tokenize_observers", None)
            if observers is not None:
                observers.append(self.tokenize_seconds.labels(model.name).observe)

    def _call_observer(self, model: str, tower: str) -> Callable[[CallRecord], None]:
        queue = self.queue_seconds.labels(model, tower)
        workers, lone = self.call_seconds.labels(model, tower, "workers"), self.call_seconds.labels(model, tower, "lone")
        items = self.call_items.labels(model, tower)
        tokens = self.input_tokens.labels(model) if tower == "text" else None
        decode = self.decode_seconds.labels(model) if tower == "image" else None

        def observe(record: CallRecord) -> None:
            (lone if record.lone else workers).observe(record.seconds)
            items.observe(record.items)
            for wait in record.queue_waits:
                queue.observe(wait)
            if tokens is not None:
                for length in record.lengths:
                    tokens.observe(length)
            if decode is not None:
                for seconds in record.prepare_seconds:
                    decode.observe(seconds)
        return observe
