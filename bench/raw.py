"""The raw engine limit: the served model file in a bare onnxruntime InferenceSession.

No server code is used here on purpose: tokenization with `tokenizers` (truncation from the
manifest, no padding), an `InferenceSession` with the same total threads as the server, and
mean pooling + L2 normalization in numpy, as the server does after each call.

- batch sweep: length-sorted batches of B sequences (right-padded to the longest), one worker
  with intra_op_num_threads = cpus;
- worker sweep: N threads share one session with intra_op_num_threads = cpus / N, one sequence
  per run call (no padding);
- batch-1 latency: one short query at a time, tokenization included.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

_FEEDS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Seq:
    ids: np.ndarray  # int64
    type_ids: np.ndarray  # int64

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class ModelFiles:
    folder: Path
    name: str
    model: Path
    tokenizer: Path
    max_tokens: int
    pooling: str
    normalize: bool
    output: str
    output_is_pooled: bool
    dimensions: int
    manifest: dict

    @classmethod
    def read(cls, folder: Path) -> "ModelFiles":
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise SystemExit(f"bench: {manifest_path} is missing (run `make models`)")
        data = json.loads(manifest_path.read_text())
        model = folder / data.get("model_file", "model.onnx")
        if not model.is_file():
            raise SystemExit(f"bench: {model} is missing (run `make models`)")
        return cls(
            folder=folder,
            name=data["name"],
            model=model,
            tokenizer=folder / data.get("tokenizer_file", "tokenizer.json"),
            max_tokens=int(data["max_tokens"]),
            pooling=data.get("pooling", "mean"),
            normalize=bool(data.get("normalize", True)),
            output=data.get("output", "last_hidden_state"),
            output_is_pooled=bool(data.get("output_is_pooled", False)),
            dimensions=int(data["dimensions"]),
            manifest=data,
        )


def pool_normalize(hidden: np.ndarray, lengths: np.ndarray, mode: str, normalize: bool) -> np.ndarray:
    """(batch, seq, dim) token states to normalized sentence vectors, padding masked out."""
    if hidden.ndim == 2:  # already pooled by the graph
        vectors = hidden.astype(np.float32, copy=False)
    elif mode == "cls":
        vectors = hidden[:, 0, :]
    elif mode == "last":
        vectors = hidden[np.arange(hidden.shape[0]), lengths - 1, :]
    elif hidden.shape[0] == 1 or int(lengths.min()) == hidden.shape[1]:
        vectors = hidden.mean(axis=1, dtype=np.float32)
    else:
        mask = (np.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
        vectors = np.einsum("bsd,bs->bd", hidden, mask, dtype=np.float32) / lengths[:, None].astype(np.float32)
    if not normalize:
        return np.asarray(vectors, dtype=np.float32)
    norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return (vectors / norms).astype(np.float32, copy=False)


def padded_feeds(seqs: Sequence[Seq], names: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One call's feeds (right-padded to the longest sequence, the named inputs only) and lengths."""
    lengths = np.fromiter((s.length for s in seqs), dtype=np.int64, count=len(seqs))
    width = int(lengths.max())
    ids = np.zeros((len(seqs), width), dtype=np.int64)
    type_ids = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        ids[row, : seq.length] = seq.ids
        type_ids[row, : seq.length] = seq.type_ids
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}
    return {n: available[n] for n in names}, lengths


def bare_session(model: Path, intra: int) -> ort.InferenceSession:
    """A plain CPU InferenceSession with `intra` intra-op threads, set up as the server's."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # As the server: spin only when one caller owns every core.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if intra > 1 else "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


class RawEngine:
    """One tokenizer, sessions per intra-op thread count (created lazily, reused)."""

    def __init__(self, files: ModelFiles, cpus: int) -> None:
        self.files = files
        self.cpus = cpus
        self.tokenizer = Tokenizer.from_file(str(files.tokenizer))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(files.max_tokens)
        self._sessions: dict[int, ort.InferenceSession] = {}
        self._feeds: tuple[str, ...] = ()

    def session(self, intra: int) -> ort.InferenceSession:
        if intra not in self._sessions:
            session = bare_session(self.files.model, intra)
            names = {i.name for i in session.get_inputs()}
            self._feeds = tuple(n for n in _FEEDS if n in names)
            self._sessions[intra] = session
        return self._sessions[intra]

    # -- preparation (not timed) ---------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[Seq]:
        return [Seq(np.asarray(e.ids, dtype=np.int64), np.asarray(e.type_ids, dtype=np.int64))
                for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=True)]

    def feeds_for(self, seqs: Sequence[Seq]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        self.session(self.cpus)  # makes sure the feed names are known
        return padded_feeds(seqs, self._feeds)

    # -- one call --------------------------------------------------------------------------------
    def run(self, session: ort.InferenceSession, feeds: dict[str, np.ndarray], lengths: np.ndarray) -> np.ndarray:
        (hidden,) = session.run([self.files.output], feeds)
        return pool_normalize(hidden, lengths, self.files.pooling, self.files.normalize)

    def embed_one(self, text: str, intra: int) -> np.ndarray:
        """Tokenize and embed one text (batch 1): the reference vectors for sanity checks."""
        seq = self.tokenize([text])[0]
        feeds, lengths = self.feeds_for([seq])
        return self.run(self.session(intra), feeds, lengths)[0]


@dataclass
class Throughput:
    texts: int
    seconds: float
    padded_tokens: int = 0
    real_tokens: int = 0

    @property
    def per_second(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else float("nan")


class BatchSweep:
    """Length-sorted batches of a fixed size over the whole corpus, one worker, all threads."""

    def __init__(self, engine: RawEngine, seqs: Sequence[Seq], batch: int) -> None:
        self.engine = engine
        self.batch = batch
        order = sorted(range(len(seqs)), key=lambda i: seqs[i].length)
        chunks = [[seqs[i] for i in order[start:start + batch]] for start in range(0, len(order), batch)]
        self.calls = [engine.feeds_for(chunk) for chunk in chunks]
        self.texts = len(seqs)
        self.real_tokens = sum(s.length for s in seqs)
        self.padded_tokens = sum(int(lengths.max()) * len(lengths) for _, lengths in self.calls)

    def measure(self) -> Throughput:
        session = self.engine.session(self.engine.cpus)
        self.engine.run(session, *self.calls[-1])  # the widest shape: the arena is ready
        started = time.perf_counter()
        for feeds, lengths in self.calls:
            self.engine.run(session, feeds, lengths)
        seconds = time.perf_counter() - started
        return Throughput(self.texts, seconds, self.padded_tokens, self.real_tokens)


class WorkerSweep:
    """N threads share one session (intra-op threads = cpus / N).

    batch 1: one sequence per run call in corpus order (no padding). batch B > 1: length-sorted
    batches of B, taken by whichever worker is free (what a batching server does at best).
    """

    def __init__(self, engine: RawEngine, seqs: Sequence[Seq], workers: int, batch: int = 1) -> None:
        self.engine = engine
        self.workers = workers
        self.batch = batch
        self.intra = max(1, engine.cpus // workers)
        self.calls = [engine.feeds_for(group) for group in call_groups(seqs, batch)]
        self.texts = len(seqs)
        self.real_tokens = sum(s.length for s in seqs)
        self.padded_tokens = sum(int(lengths.max()) * len(lengths) for _, lengths in self.calls)

    def measure(self) -> Throughput:
        session = self.engine.session(self.intra)
        self.engine.run(session, *max(self.calls, key=lambda c: int(c[1].max()) * len(c[1])))
        seconds = run_in_threads(self.workers, len(self.calls), lambda i: self.engine.run(session, *self.calls[i]))
        return Throughput(self.texts, seconds, self.padded_tokens, self.real_tokens)


def call_groups(seqs: Sequence[Seq], batch: int) -> list[list[Seq]]:
    """batch 1: one sequence per call in corpus order; B > 1: length-sorted groups of B."""
    if batch == 1:
        return [[s] for s in seqs]
    order = sorted(range(len(seqs)), key=lambda i: seqs[i].length)
    return [[seqs[i] for i in order[start:start + batch]] for start in range(0, len(order), batch)]


def run_in_threads(workers: int, count: int, call: Callable[[int], object]) -> float:
    """Calls 0..count-1, each once, `workers` threads taking the next one; returns the seconds."""
    lock = threading.Lock()
    position = [0]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while True:
                with lock:
                    index = position[0]
                    position[0] += 1
                if index >= count:
                    return
                call(index)
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=work, name=f"raw-worker-{i}") for i in range(workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    return seconds


def batch1_latencies(engine: RawEngine, texts: Sequence[str], intra: int) -> list[float]:
    """Seconds per text: tokenize + one batch-1 run + pooling/normalization, one at a time."""
    session = engine.session(intra)
    for text in texts[:3]:
        engine.embed_one(text, intra)
    out: list[float] = []
    for text in texts:
        started = time.perf_counter()
        encoding = engine.tokenizer.encode(text)
        ids = np.asarray(encoding.ids, dtype=np.int64)[None, :]
        available = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                     "token_type_ids": np.asarray(encoding.type_ids, dtype=np.int64)[None, :]}
        (hidden,) = session.run([engine.files.output], {n: available[n] for n in engine._feeds})
        pool_normalize(hidden, np.array([ids.shape[1]]), engine.files.pooling, engine.files.normalize)
        out.append(time.perf_counter() - started)
    return out
