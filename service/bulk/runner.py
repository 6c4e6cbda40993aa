"""The run: rows into chunks and requests, answers into journal chunks, retries and failures.

Rows are read in order into chunks of `chunk_rows` rows (chunk k holds rows [k*C, (k+1)*C));
each chunk is cut into jobs of `batch_size` rows, one EmbedRequest each. At most `open_chunks`
chunks are in memory: the reader waits for a chunk to be written before it reads further, so
memory does not grow with the input. A chunk goes to the journal once every row of it has a
vector or a final failure.

What happens to an answer:
- a vector per row: done;
- a broken stream (a server killed, a deadline passed) or a refusal in RETRYABLE: the job goes
  back to the front of the queue after an exponential backoff with jitter; after `retries`
  attempts the run stops (the journal keeps what is done: rerun the same command);
- FATAL codes (credentials): the run stops at once;
- any other refusal (INVALID_ARGUMENT, ...): a job of several rows is split into one-row jobs, so
  a bad row does not fail its neighbours; a one-row job's failure is final (the failures file).
"""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..client import embed_request, to_array
from ..grpc.gen import embeddings_pb2 as pb
from .journal import ChunkResult, Journal
from .readers import Row, load_image
from .streams import Target, jittered, slot

RETRYABLE = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED",
                       "FAILED_PRECONDITION", "NOT_FOUND"})  # NOT_FOUND: a replica may not know an endpoint yet
FATAL = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "UNIMPLEMENTED"})
INVALID_INPUT = "INVALID_INPUT"  # a row this client could not read: never sent
_TOO_LARGE = "larger than max"  # gRPC's own refusal of a message over the receiver's limit
_RETRY, _NEW = 0, 1  # queue priorities: retried jobs first, new jobs in row order; -1 stops


class RunError(Exception):
    """The run stopped; what is in the journal stays (rerun the same command to continue)."""


@dataclass(frozen=True)
class RunSettings:
    model: str
    input_type: str | None = None
    dimensions: int | None = None
    element_type: str | None = None
    truncate: bool | None = None
    batch_size: int = 32
    chunk_rows: int = 1024
    streams: int = 2  # per target address
    depth: int = 4  # requests in flight per stream
    deadline: float = 120.0  # seconds for one request's answer
    retries: int = 8  # attempts after the first, per request
    stream_requests: int = 256  # requests before a stream is reopened
    stall_timeout: float = 300.0  # no answer from any target for this long: stop
    max_failures: int = 1000  # failed rows before the run stops; negative: no limit
    metadata: tuple[tuple[str, str], ...] = ()

    def request(self, items: list[str | bytes], request_id: str = "") -> pb.EmbedRequest:
        return embed_request(items, model=self.model, input_type=self.input_type, dimensions=self.dimensions,
                             element_type=self.element_type, truncate=self.truncate,  # type: ignore[arg-type]
                             request_id=request_id)


@dataclass
class Stats:
    rows_estimate: int = 0
    rows_read: int = 0  # rows of the input seen so far (the journal's included)
    journal_vectors: int = 0  # rows done by earlier runs
    journal_failed: int = 0
    vectors: int = 0  # rows embedded by this run
    failed: int = 0
    requests: int = 0
    retries: int = 0
    stream_failures: int = 0
    chunks_written: int = 0
    started: float = field(default_factory=time.monotonic)
    last_answer: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.journal_vectors + self.journal_failed + self.vectors + self.failed


class OpenChunk:
    def __init__(self, index: int) -> None:
        self.index = index
        self.jobs = 0  # unfinished jobs
        self.read = False  # every row of it has been read
        self.closed = False
        self.parts: list[tuple[list[int], list[Any], np.ndarray]] = []
        self.failures: list[dict[str, Any]] = []

    def result(self) -> ChunkResult:
        parts = sorted(self.parts, key=lambda part: part[0][0])
        if not parts:
            return ChunkResult(self.index, np.zeros(0, np.int64), np.zeros((0, 0), np.float32), [], self.failures)
        return ChunkResult(self.index, np.array([i for p in parts for i in p[0]], np.int64),
                           np.concatenate([p[2] for p in parts]), [i for p in parts for i in p[1]],
                           sorted(self.failures, key=lambda f: f["row"]))


@dataclass(eq=False)
class Job:
    chunk: OpenChunk
    rows: list[Row]
    attempts: int = 0


class Run:
    """Feeds the stream slots of every target (streams.Work) and journals finished chunks."""

    def __init__(self, rows: Iterable[Row | None], journal: Journal, settings: RunSettings, folder: Path,
                 stats: Stats) -> None:
        self.rows = rows
        self.journal = journal
        self.settings = settings
        self.folder = folder  # image paths are relative to the input's folder
        self.stats = stats
        self.deadline, self.depth = settings.deadline, settings.depth
        self.stream_requests, self.metadata = settings.stream_requests, settings.metadata
        self.rows_total = 0
        self._queue: asyncio.PriorityQueue[tuple[int, int, Job | None]] = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._unfinished = 0
        self._reading = True
        self._window: asyncio.Semaphore | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._finished = asyncio.Event()
        self.error: BaseException | None = None

    # -- the whole run ---------------------------------------------------------------------
    async def execute(self, targets: list[Target]) -> int:
        """Embed every row not in the journal; the number of rows of the input."""
        in_flight = sum(t.slots for t in targets) * self.depth * self.settings.batch_size
        self._window = asyncio.Semaphore(2 + -(-in_flight // self.settings.chunk_rows))
        tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._watch_stall())]
        tasks += [asyncio.create_task(slot(self, target)) for target in targets for _ in range(target.slots)]
        try:
            await self._finished.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*list(self._writes), return_exceptions=True)
        if self.error is not None:
            raise self.error
        return self.rows_total

    def _stop(self, error: BaseException | None = None) -> None:
        if error is not None and self.error is None:
            self.error = error
        self._finished.set()
        self._queue.put_nowait((-1, next(self._order), None))

    def _check_finished(self) -> None:
        if not self._reading and self._unfinished == 0 and not self._writes:
            self._stop()

    async def _watch_stall(self) -> None:
        limit = self.settings.stall_timeout
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            if time.monotonic() - self.stats.last_answer > limit:
                self._stop(RunError(f"no answer from any target for {limit:g} s (--stall-timeout); "
                                    "rerun the same command to continue"))

    # -- reading -------------------------------------------------------------------------
    async def _read(self) -> None:
        assert self._window is not None
        size, chunk, batch = self.settings.batch_size, None, []
        try:
            for position, row in enumerate(self.rows):
                self.stats.rows_read = self.rows_total = position + 1
                if position % 512 == 511:
                    await asyncio.sleep(0)
                if row is None:  # a row of a chunk in the journal
                    continue
                if chunk is None or row.index // self.settings.chunk_rows != chunk.index:
                    if chunk is not None:
                        self._end_reading(chunk, batch)
                        batch = []
                    await self._window.acquire()
                    chunk = OpenChunk(row.index // self.settings.chunk_rows)
                if row.error is not None:
                    self._fail(chunk, row, INVALID_INPUT, row.error)
                    continue
                batch.append(row)
                if len(batch) == size:
                    self._add(Job(chunk, batch), _NEW)
                    batch = []
            if chunk is not None:
                self._end_reading(chunk, batch)
        except Exception as exc:  # noqa: BLE001 - an unreadable input stops the run with its error
            self._stop(exc)
            return
        self._reading = False
        self._check_finished()

    def _end_reading(self, chunk: OpenChunk, batch: list[Row]) -> None:
        if batch:
            self._add(Job(chunk, batch), _NEW)
        chunk.read = True
        self._close_if_done(chunk)

    def _add(self, job: Job, priority: int, new: bool = True) -> None:
        if new:
            job.chunk.jobs += 1
            self._unfinished += 1
        self._queue.put_nowait((priority, next(self._order), job))

    # -- streams.Work --------------------------------------------------------------------
    async def next_job(self) -> Job | None:
        item = await self._queue.get()
        if item[2] is None:  # stop: pass it on to the next slot
            self._queue.put_nowait(item)
        return item[2]

    def request(self, job: Job) -> pb.EmbedRequest | None:
        items: list[str | bytes] = []
        kept = []
        for row in job.rows:
            if row.text is not None:
                items.append(row.text)
            else:
                try:
                    items.append(load_image(row.image or b"", self.folder))
                except (OSError, ValueError) as exc:
                    self._fail(job.chunk, row, INVALID_INPUT, f"image not readable: {exc}")
                    continue
            kept.append(row)
        job.rows = kept
        if not kept:
            self._done(job)
            return None
        self.stats.requests += 1
        return self.settings.request(items, request_id=f"{job.chunk.index}:{kept[0].index}")

    def answer(self, job: Job, answer: pb.EmbedStreamResponse, target: Target) -> None:
        self.stats.last_answer = time.monotonic()
        if answer.WhichOneof("result") != "response":
            self._refused(job, answer.error.code, answer.error.message)
            return
        vectors = to_array(answer.response)
        if len(vectors) != len(job.rows):
            self._stop(RunError(f"{target.name} answered {len(vectors)} vectors to {len(job.rows)} inputs"))
            return
        job.chunk.parts.append(([r.index for r in job.rows], [r.id for r in job.rows], vectors))
        self.stats.vectors += len(job.rows)
        self._done(job)

    def broken(self, jobs: list[Job], code: str, message: str) -> None:
        self.stats.stream_failures += 1
        if code in FATAL:
            self._stop(RunError(f"{code}: {message}"))
            return
        for job in jobs:
            self._retry(job, code, message)

    def abort(self, error: BaseException) -> None:
        self._stop(error)

    # -- outcomes ------------------------------------------------------------------------
    def _refused(self, job: Job, code: str, message: str) -> None:
        if code in FATAL:
            self._stop(RunError(f"{code}: {message}"))
        elif code in RETRYABLE:
            self._retry(job, code, message)
        else:
            self._final(job, code, message)

    def _final(self, job: Job, code: str, message: str) -> None:
        """A refusal that will not change: split a batch; fail a lone row for good."""
        if len(job.rows) == 1:
            self._fail(job.chunk, job.rows[0], code, message)
            self._done(job)
            return
        for row in job.rows[1:]:
            self._add(Job(job.chunk, [row]), _RETRY)
        job.rows = job.rows[:1]
        self._add(job, _RETRY, new=False)

    def _retry(self, job: Job, code: str, message: str) -> None:
        job.attempts += 1
        self.stats.retries += 1
        if job.attempts <= self.settings.retries:
            asyncio.get_running_loop().call_later(jittered(job.attempts), self._add, job, _RETRY, False)
        elif _TOO_LARGE in message:  # too big for the server: smaller requests, then the row fails
            job.attempts = 0
            self._final(job, code, message)
        else:
            rows = f"rows {job.rows[0].index}-{job.rows[-1].index}"
            self._stop(RunError(f"gave up on {rows} after {job.attempts} attempts, last {code}: {message}; "
                                "rerun the same command to continue"))

    def _fail(self, chunk: OpenChunk, row: Row, code: str, message: str) -> None:
        chunk.failures.append({"row": row.index, "id": row.id, "code": code, "message": message})
        self.stats.failed += 1
        limit = self.settings.max_failures
        if 0 <= limit < self.stats.failed + self.stats.journal_failed:
            self._stop(RunError(f"more than {limit} rows failed (--max-failures), the last {code}: {message}"))

    def _done(self, job: Job) -> None:
        job.chunk.jobs -= 1
        self._unfinished -= 1
        self._close_if_done(job.chunk)
        self._check_finished()

    def _close_if_done(self, chunk: OpenChunk) -> None:
        if chunk.read and chunk.jobs == 0 and not chunk.closed:
            chunk.closed = True
            task = asyncio.create_task(self._write(chunk))
            self._writes.add(task)

    async def _write(self, chunk: OpenChunk) -> None:
        assert self._window is not None
        try:
            await asyncio.to_thread(self.journal.write, chunk.result())
            self.stats.chunks_written += 1
        except Exception as exc:  # noqa: BLE001 - a journal that cannot be written stops the run
            self._stop(exc)
        finally:
            self._window.release()
            self._writes.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._check_finished()
