"""The engine on its own (real ORT session over the tiny model): scheduling, failures, pooling."""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest

from service.engine.cpus import available_cpus
from service.engine.encodings import to_bits, to_int8
from service.engine.errors import DeadlineExceeded, InferenceFailed, InputTooLong, InvalidDimensions, Overloaded
from service.engine.manifest import Manifest
from service.engine.model import EmbedOptions, EmbeddingModel, ModelSettings
from service.engine.repository import EngineSettings
from service.engine.pooling import l2_normalize, pool, truncate_dimensions
from service.engine.policy import BatchPolicy
from service.engine.backends import BackendSettings
from service.engine.tokenizer import TokenizedText
from tests.conftest import TINY

TEXTS = [
    "short",
    "a somewhat longer sentence about embeddings and batching",
    "the quick brown fox jumps over the lazy dog " * 6,
    "numbers 1 2 3 and symbols !?",
    "another short one",
    "x " * 120,
]


def load(model_repo: Path, mode: str = "hybrid", workers: int = 2, lone_threads: int = 0,
         **policy: int) -> EmbeddingModel:
    folder = model_repo / TINY
    lone = BackendSettings(intra_op_threads=lone_threads, allow_spinning=True,
                           stop_spinning_between_calls=True) if lone_threads else None
    model = EmbeddingModel(folder, Manifest.read(folder), ModelSettings(
        workers=workers, session=BackendSettings(intra_op_threads=1), policy=BatchPolicy(mode=mode, **policy),
        lone_session=lone))
    model.start()
    model.warm_up()
    return model


@pytest.fixture
def model(model_repo: Path):
    m = load(model_repo)
    yield m
    m.close()


def test_policies_agree_with_each_other(model_repo: Path) -> None:
    """Every policy computes the same vectors (up to int8 per-batch activation scaling)."""
    results = {}
    for mode in ("sequence", "batch", "hybrid"):
        m = load(model_repo, mode)
        try:
            results[mode] = asyncio.run(m.embed(TEXTS)).vectors
            assert m.scheduler.stats.sequences >= len(TEXTS)
        finally:
            m.close()
    for mode in ("batch", "hybrid"):
        cosine = (results[mode] * results["sequence"]).sum(axis=1)
        assert cosine.min() > 0.99, (mode, cosine)


def test_sequence_policy_never_pads(model_repo: Path) -> None:
    m = load(model_repo, "sequence")
    try:
        asyncio.run(m.embed(TEXTS))
        stats = m.scheduler.stats
        assert stats.padded_tokens == stats.tokens
        assert set(stats.batch_sizes) == {1}
    finally:
        m.close()


def test_batch_policy_groups_similar_lengths_under_the_budget(model_repo: Path) -> None:
    m = load(model_repo, "batch", workers=1, max_batch=4, max_batch_tokens=10_000)
    try:
        asyncio.run(m.embed(["same length text"] * 16))
        assert max(m.scheduler.stats.batch_sizes) == 4
    finally:
        m.close()


def test_concurrent_requests_each_get_their_own_vectors(model: EmbeddingModel) -> None:
    async def run() -> list[np.ndarray]:
        return [r.vectors for r in await asyncio.gather(*(model.embed([t]) for t in TEXTS * 3))]

    alone = asyncio.run(model.embed(TEXTS)).vectors
    together = np.vstack(asyncio.run(run()))
    cosine = (together * np.vstack([alone] * 3)).sum(axis=1)
    assert cosine.min() > 0.99


def test_a_failing_batch_fails_only_its_own_requests(model_repo: Path) -> None:
    m = load(model_repo, "sequence")
    real_run = m.text.run
    poison = m.text.tokenizer.encode(["poison pill"])[0].ids.tolist()

    def flaky(seqs: Sequence[TokenizedText]) -> np.ndarray:
        if any(s.ids.tolist() == poison for s in seqs):
            raise RuntimeError("simulated ORT failure")
        return real_run(seqs)

    m.scheduler._run_call = flaky
    try:
        async def run() -> list[object]:
            return await asyncio.gather(*(m.embed([t]) for t in ["fine one", "poison pill", "fine two"]),
                                        return_exceptions=True)

        ok1, bad, ok2 = asyncio.run(run())
        assert isinstance(bad, InferenceFailed)
        assert ok1.vectors.shape == (1, m.manifest.dimensions)
        assert ok2.vectors.shape == (1, m.manifest.dimensions)
        # The workers live on.
        assert asyncio.run(m.embed(["after the failure"])).vectors.shape[0] == 1
        assert m.scheduler.stats.failed_calls == 1
    finally:
        m.close()


def test_lone_calls_use_every_thread_and_give_identical_vectors(model_repo: Path) -> None:
    m = load(model_repo, "sequence", lone_threads=2)
    try:
        assert m.text.lone_session is not None
        lone = np.vstack([asyncio.run(m.embed([t])).vectors for t in TEXTS])  # one at a time: alone
        assert m.scheduler.stats.lone_calls == len(TEXTS)
        # The same sequences on the workers' one-thread session: bit for bit the same vectors,
        # so a lone call keeps the sequence policy batch-invariant.
        single = np.vstack([m.text.run(m.text.tokenizer.encode([t])) for t in TEXTS])
        assert np.array_equal(lone, single)
    finally:
        m.close()


def test_lone_session_is_not_used_while_another_call_runs(model_repo: Path) -> None:
    m = load(model_repo, "sequence", lone_threads=2)
    release = threading.Event()
    running = threading.Event()
    first_ids = m.text.tokenizer.encode(["the first caller"])[0].ids.tolist()

    def holding(run: Callable[[Sequence[TokenizedText]], np.ndarray]) -> Callable[[Sequence[TokenizedText]], np.ndarray]:
        def held(seqs: Sequence[TokenizedText]) -> np.ndarray:
            if any(s.ids.tolist() == first_ids for s in seqs):  # the first caller's call waits
                running.set()
                release.wait(10)
            return run(seqs)
        return held

    m.scheduler._run_lone = holding(m.scheduler._run_lone)
    m.scheduler._run_call = holding(m.scheduler._run_call)

    async def interleaved_round() -> None:
        """A call that starts alone, and a second caller arriving while it runs."""
        running.clear()
        release.clear()
        first = asyncio.ensure_future(m.embed(["the first caller"]))
        await asyncio.get_running_loop().run_in_executor(None, running.wait, 10)
        second = await m.embed(["the second caller, while the first is computing"])
        assert second.vectors.shape[0] == 1
        release.set()
        await first

    try:
        stats = m.scheduler.stats
        asyncio.run(interleaved_round())
        assert stats.lone_calls == 1  # the second ran on the one-thread session
        assert stats.calls == 2
        # Once idle again, the next call is lone again.
        asyncio.run(m.embed(["idle again"]))
        assert stats.lone_calls == 2
        # A request of several sequences keeps the workers busy together: only its last sequence
        # can run lone (taken from an empty queue once the other worker is done).
        asyncio.run(m.embed(TEXTS * 4))
        assert stats.lone_calls <= 2 + 1
        # Callers that keep interleaving: after a few rounds a call that starts alone no longer
        # goes lone (it would only fight the next caller's call for the cores)...
        rounds = 0
        while True:
            before = stats.lone_calls
            asyncio.run(interleaved_round())
            rounds += 1
            if stats.lone_calls == before:
                break
            assert rounds < 20, "lone calls never stopped"
        assert rounds >= 3
        # ... and once calls are alone again, within a few calls they go lone again.
        before = stats.lone_calls
        asyncio.run(m.embed(["alone, right after a run of interleaved callers"]))
        assert stats.lone_calls == before
        for _ in range(5):
            asyncio.run(m.embed(["alone again"]))
            if stats.lone_calls > before:
                break
        assert stats.lone_calls == before + 1
    finally:
        release.set()
        m.close()


def test_results_finished_while_the_loop_is_busy_share_one_wakeup(model_repo: Path) -> None:
    m = load(model_repo, "sequence")
    try:
        async def run() -> list[np.ndarray]:
            pending = [asyncio.ensure_future(m.embed([t])) for t in TEXTS]
            await asyncio.sleep(0)  # every request is queued
            time.sleep(1.0)  # the loop is busy while the workers finish every call
            return [r.vectors for r in await asyncio.gather(*pending)]

        before = m.scheduler.stats.loop_wakeups
        vectors = asyncio.run(run())
        assert m.scheduler.stats.calls >= len(TEXTS)
        # One wake-up (or two: the first may land before the others finish) for six results.
        assert m.scheduler.stats.loop_wakeups - before <= 2
        # And each request still got its own vector.
        alone = np.vstack([m.text.run(m.text.tokenizer.encode([t])) for t in TEXTS])
        assert np.allclose(np.vstack(vectors), alone, atol=1e-6)
    finally:
        m.close()


def test_lone_session_layout() -> None:
    cpus = available_cpus()
    auto = EngineSettings()
    assert auto.lone_layout(intra=1) == (cpus if cpus > 1 else 0)
    assert auto.lone_layout(intra=cpus) == 0  # the workers' session already has every CPU
    assert EngineSettings(lone_threads=1).lone_layout(intra=1) == 0  # off
    assert EngineSettings(lone_threads=0).lone_layout(intra=1) == 0
    assert EngineSettings(lone_threads=4).lone_layout(intra=1) == 4


def test_expired_work_is_dropped_not_computed(model_repo: Path) -> None:
    m = load(model_repo, "sequence", workers=1)
    fast = m.scheduler._run_call

    def slow(seqs: Sequence[TokenizedText]) -> np.ndarray:
        time.sleep(0.3)  # slower than the queue's measured speed promised
        return fast(seqs)

    try:
        asyncio.run(m.embed(TEXTS))  # the queue learns how fast calls are
        m.scheduler._run_call = slow

        async def run() -> None:
            blocker = asyncio.ensure_future(m.embed(["keep the worker busy"]))
            await asyncio.sleep(0.01)
            with pytest.raises(DeadlineExceeded):  # admitted (the queue looked fast), then expired
                await m.embed(["too late"] * 50, EmbedOptions(deadline=time.monotonic() + 0.1))
            await blocker

        asyncio.run(run())
        assert m.scheduler.stats.dropped_sequences >= 49
        assert m.scheduler.stats.sequences <= len(TEXTS) + 2  # the late ones were not computed
    finally:
        m.close()


def test_a_backlog_that_cannot_meet_the_deadline_is_refused_at_once(model_repo: Path) -> None:
    m = load(model_repo, "sequence", workers=1)
    try:
        async def run() -> None:
            await m.embed(TEXTS)  # the queue learns how fast calls are
            backlog = asyncio.ensure_future(m.embed(["a passage that keeps the worker busy " * 20] * 400))
            while m.scheduler.queued < 300:
                await asyncio.sleep(0.001)
            with pytest.raises(Overloaded, match="longer than the request's deadline allows"):
                await m.embed(["cannot make it"], EmbedOptions(deadline=time.monotonic() + 0.05))
            await backlog

        asyncio.run(run())
        assert m.scheduler.stats.rejected_requests == 1
    finally:
        m.close()


def test_transports_take_turns_so_a_flood_on_one_cannot_starve_the_other(model_repo: Path) -> None:
    m = load(model_repo, "sequence", workers=1)
    try:
        async def run() -> tuple[bool, int]:
            flood = asyncio.ensure_future(m.embed(["flooding over REST " * 10] * 300, EmbedOptions(lane="rest")))
            while m.scheduler.queued < 250:
                await asyncio.sleep(0.001)
            await m.embed(["one gRPC call"], EmbedOptions(lane="grpc"))
            still_flooding, left = not flood.done(), m.scheduler.queued
            await flood
            return still_flooding, left

        still_flooding, left = asyncio.run(run())
        assert still_flooding and left > 200  # served in its turn, not behind 300 REST sequences
    finally:
        m.close()


def test_full_queue_refuses_at_once(model_repo: Path) -> None:
    m = load(model_repo, "sequence", workers=1, max_queue=10)
    fast = m.scheduler._run_call
    m.scheduler._run_call = lambda seqs: time.sleep(0.05) or fast(seqs)  # the queue cannot drain meanwhile
    try:
        async def run() -> None:
            first = asyncio.ensure_future(m.embed(["fill the queue " * 30] * 10))
            await asyncio.sleep(0)
            with pytest.raises(Overloaded):
                await m.embed(["one too many"] * 5)
            await first

        asyncio.run(run())
        assert m.scheduler.stats.rejected_requests == 1
    finally:
        m.close()


def test_truncation_and_its_refusal(model: EmbeddingModel) -> None:
    limit = model.manifest.max_tokens
    long_text = "token " * (limit * 3)
    assert asyncio.run(model.embed([long_text])).prompt_tokens == limit
    with pytest.raises(InputTooLong) as info:
        asyncio.run(model.embed([long_text], EmbedOptions(truncate=False)))
    assert "Please reduce your prompt; or completion length." in info.value.message


def test_dimensions_validation(model: EmbeddingModel) -> None:
    with pytest.raises(InvalidDimensions):
        asyncio.run(model.embed(["x"], EmbedOptions(dimensions=model.manifest.dimensions + 1)))


def test_mean_pooling_ignores_padding() -> None:
    hidden = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    pooled = pool(hidden, np.array([5, 2]), "mean")
    np.testing.assert_allclose(pooled[0], hidden[0].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(pooled[1], hidden[1, :2].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(pool(hidden, np.array([5, 2]), "cls"), hidden[:, 0])
    np.testing.assert_allclose(pool(hidden, np.array([5, 2]), "last"), hidden[[0, 1], [4, 1]])


def test_normalize_and_matryoshka() -> None:
    v = l2_normalize(np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(v[0], [3 / 13, 4 / 13, 12 / 13], rtol=1e-6)
    assert not np.isnan(v).any()
    t = truncate_dimensions(v[:1], 2)
    np.testing.assert_allclose(t, [[0.6, 0.8]], rtol=1e-6)


def test_byte_and_bit_encodings() -> None:
    v = np.array([[1.0, -1.0, 0.5, -0.004, 0.0, 0.3, -0.2, 0.9, 0.1, -0.1, 0, 0, 0, 0, 0, 0.7]], dtype=np.float32)
    np.testing.assert_array_equal(to_int8(v)[0, :4], [127, -127, 64, -1])
    bits = to_bits(v)
    assert bits.dtype == np.int8 and bits.shape == (1, 2)
    # 1 0 1 0 0 1 0 1 -> 0b10100101 = 165 -> int8 -91 ; 1 0 0 0 0 0 0 1 -> 0b10000001 -> -127
    np.testing.assert_array_equal(bits[0], [-91, -127])


def test_available_cpus_honours_cgroup_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == available_cpus(tmp_path / "none")
