"""The bulk command (`python -m service embed`) against real servers over the tiny model: two
servers with one killed and restarted mid-run, round_robin over one target name, an interrupted
run that resumes without re-embedding, and the input and output formats with bad rows."""
from __future__ import annotations

import base64
import contextlib
import csv
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from service.bulk.cli import main
from service.client import EmbeddingsClient
from tests.conftest import TINY
from tests.server import REPO_ROOT, ServerProcess
from tests.test_auth import make_credentials
from tests.test_grpc import metric, wait_for

WORDS = "the quick brown fox jumps over a lazy dog while bulk embedding runs on many replicas".split()
SEQUENCES = "ortembed_sequences_total"
QUICK_STOP = ("--drain-seconds", "0")  # no drain window when a test stops its servers
PREFLIGHT = 1  # each run first embeds one short text with its options (a wrong option stops it there)


def sentence(i: int, words: int = 40) -> str:
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(words)) + f" line {i}"


def write_jsonl(path: Path, count: int, words: int = 40) -> list[dict[str, Any]]:
    rows = [{"id": f"doc-{i}", "text": sentence(i, words)} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "service", "embed", *args, "--model", TINY, "--quiet"]


def _default_sigint() -> None:
    # A test run started in the background by a non-interactive shell (`.ci/run &`) inherits
    # SIGINT ignored, and Python then never raises KeyboardInterrupt: Ctrl-C must work here.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cli(*args), cwd=REPO_ROOT, stderr=subprocess.PIPE, preexec_fn=_default_sigint)


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode(errors="replace")


def chunks(journal: Path) -> int:
    return len(list(journal.glob("chunk-*.npz")))


def wait_for_chunks(journal: Path, count: int, proc: subprocess.Popen[bytes]) -> None:
    wait_for(lambda: chunks(journal) >= count or proc.poll() is not None, f"{count} journal chunks")
    assert proc.poll() is None, f"the run ended before it could be interrupted: {finish(proc)}"


@contextlib.contextmanager
def server_paused(server: ServerProcess) -> Iterator[None]:
    """The server frozen (SIGSTOP) for the block: requests in flight stay unanswered."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.proc.send_signal(signal.SIGCONT)


def outputs(out: Path) -> tuple[np.ndarray, list[Any], list[dict[str, Any]]]:
    base = out.with_suffix("")
    ids = [json.loads(line) for line in base.with_name(base.name + ".ids.jsonl").read_text().splitlines()]
    failures = [json.loads(line) for line in base.with_name(base.name + ".failures.jsonl").read_text().splitlines()]
    return np.load(out), ids, failures


def assert_alone(target: str, texts: list[str], vectors: np.ndarray, **options: Any) -> None:
    """Each vector is the one the server gives its text alone."""
    with EmbeddingsClient(target) as client:
        for text, vector in zip(texts, vectors):
            np.testing.assert_allclose(client.embed([text], model=TINY, **options)[0], vector, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def pair(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two servers on one gRPC port of two loopback addresses (127.0.0.1 and 127.0.0.2)."""
    data = tmp_path_factory.mktemp("bulk-servers")
    a = ServerProcess(model_repo, data / "a", "--only-models", TINY, *QUICK_STOP, grpc=True)
    b = ServerProcess(model_repo, data / "b", "--only-models", TINY, "--grpc-host", "127.0.0.2", *QUICK_STOP, grpc=True)
    b.grpc_port = a.grpc_port
    with a, b:
        yield a, b


def test_two_servers_one_killed_and_restarted(pair: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    a, b = pair
    rows = write_jsonl(tmp_path / "in.jsonl", 4000)
    out, report = tmp_path / "out.npy", tmp_path / "report.json"
    proc = start(str(tmp_path / "in.jsonl"), "--out", str(out), "--chunk-rows", "128", "--report", str(report),
                 "--target", f"127.0.0.1:{a.grpc_port}", "--target", f"127.0.0.2:{b.grpc_port}")
    wait_for_chunks(tmp_path / "out.journal", 1, proc)
    a.kill()  # requests are in flight on both servers
    # The client is frozen while A restarts, so that work is surely left for the new A.
    proc.send_signal(signal.SIGSTOP)
    try:
        a.stop()
        a.start()
    finally:
        proc.send_signal(signal.SIGCONT)
    code, err = finish(proc)
    assert code == 0, err
    vectors, ids, failures = outputs(out)
    assert ids == [r["id"] for r in rows] and failures == []  # every line once, in order
    assert vectors.shape == (len(rows), 64) and vectors.dtype == np.float32
    summary = json.loads(report.read_text())
    assert summary["stream_failures"] >= 1 and summary["retries"] >= 1, summary
    assert metric(a, SEQUENCES, model=TINY) > 0, "the restarted server got no work"
    sample = list(range(0, len(rows), 20)) + [len(rows) - 1]
    assert_alone(f"127.0.0.2:{b.grpc_port}", [rows[i]["text"] for i in sample], vectors[sample])
    assert not (tmp_path / "out.journal").exists()


def test_round_robin_over_one_target(pair: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    a, b = pair
    before = [metric(s, SEQUENCES, model=TINY) for s in pair]
    rows = write_jsonl(tmp_path / "in.jsonl", 600, words=10)
    target = f"ipv4:127.0.0.1:{a.grpc_port},127.0.0.2:{b.grpc_port}"  # what a DNS name with two A records gives
    code, err = finish(start(str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out"), "--target", target,
                             "--batch-size", "8"))
    assert code == 0, err
    vectors, ids, _ = outputs(tmp_path / "out.npy")
    assert ids == [r["id"] for r in rows] and len(vectors) == len(rows)
    served = [metric(s, SEQUENCES, model=TINY) - was for s, was in zip(pair, before)]
    assert min(served) > 0 and sum(served) == len(rows) + PREFLIGHT, served
    # The dns:/// form resolves the name itself (here to 127.0.0.1 only).
    code, err = finish(start(str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "dns"), "--target",
                             f"dns:///localhost:{a.grpc_port}"))
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "dns.npy"), vectors)


def test_an_interrupted_run_resumes_without_re_embedding(pair: tuple[ServerProcess, ServerProcess],
                                                          tmp_path: Path) -> None:
    server = pair[0]
    source = tmp_path / "in.jsonl"
    rows = write_jsonl(source, 3000)
    out, journal, report = tmp_path / "out.npy", tmp_path / "out.journal", tmp_path / "report.json"
    # One request of 10 rows in flight at a time: Ctrl-C surely lands mid-run.
    args = (str(source), "--out", str(out), "--chunk-rows", "100", "--target", f"127.0.0.1:{server.grpc_port}",
            "--report", str(report), "--batch-size", "10", "--streams", "1", "--depth", "1")
    first = start(*args)
    wait_for_chunks(journal, 2, first)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    code, err = finish(first)
    assert code == 130, err
    # Another input, or other options, are refused while the journal is there.
    original = source.read_bytes()
    source.write_bytes(original + b'{"id": "late", "text": "added later"}\n')
    code, err = finish(start(*args))
    assert code == 1 and "input file changed" in err and "--restart" in err, err
    source.write_bytes(original)
    code, err = finish(start(*args, "--dimensions", "8"))
    assert code == 1 and "other options" in err, err
    second = start(*args)
    wait_for_chunks(journal, chunks(journal) + 2, second)
    with server_paused(server):
        second.send_signal(signal.SIGKILL)
        second.wait(timeout=60)
    done = chunks(journal)
    for path in journal.glob("chunk-*.npz"):  # killed at any moment, every chunk file is whole
        with np.load(path) as saved:
            assert len(saved["rows"]) == len(saved["vectors"]) == 100
    wait_for(lambda: metric(server, "ortembed_queue_items", model=TINY) == 0, "the queue to drain")
    before = metric(server, SEQUENCES, model=TINY)
    code, err = finish(start(*args))
    assert code == 0, err
    summary = json.loads(report.read_text())
    assert summary["from_journal"] == done * 100 and summary["embedded_now"] == len(rows) - done * 100, summary
    # The server computed the rows that were not in the journal and no journalled chunk again.
    # The killed run's one request in flight (10 rows) may still be computed after `before` was
    # read: the server notices the vanished caller only after it resumes (CI saw 1 extra row).
    extra = metric(server, SEQUENCES, model=TINY) - before - (len(rows) - done * 100 + PREFLIGHT)
    assert 0 <= extra <= 10, extra
    vectors, ids, failures = outputs(out)
    assert ids == [r["id"] for r in rows] and failures == [] and len(vectors) == len(rows)
    sample = list(range(0, len(rows), 37))
    assert_alone(f"127.0.0.1:{server.grpc_port}", [rows[i]["text"] for i in sample], vectors[sample])


def png(path: Path) -> Path:
    Image.new("RGB", (4, 4), (200, 10, 10)).save(path)
    return path


def test_jsonl_ids_kept_and_bad_rows_reported(server: ServerProcess, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{server.grpc_port}"
    data_uri = "data:image/png;base64," + base64.b64encode(png(tmp_path / "red.png").read_bytes()).decode()
    lines = [json.dumps({"id": "a", "text": "first"}), json.dumps({"id": 7, "text": "an integer id"}),
             json.dumps({"text": "no id: the row number is the id"}), "{not json",
             json.dumps({"id": "long", "text": "x" * 100_001}),  # over the server's --max-input-chars
             "", json.dumps({"id": "empty", "text": ""}), json.dumps({"id": "neither"}),
             json.dumps({"id": "img", "image": "red.png"}), json.dumps({"id": "uri", "image": data_uri}),
             json.dumps({"id": "gone", "image": "missing.png"}), json.dumps({"id": "last", "text": "the end"})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.npy"
    argv = [str(tmp_path / "in.jsonl"), "--out", str(out), "--model", TINY, "--target", target, "--batch-size", "4"]
    assert main(argv) == 3  # finished, some rows failed
    assert "5 vectors of 11 rows (0 from an earlier run), 6 failed" in capsys.readouterr().err
    vectors, ids, failures = outputs(out)
    assert ids == ["a", 7, 2, "empty", "last"]
    assert_alone(target, ["first", "an integer id", "no id: the row number is the id", "", "the end"], vectors)
    codes = {f["id"]: (f["row"], f["code"]) for f in failures}
    assert codes == {3: (3, "INVALID_INPUT"), "long": (4, "INVALID_ARGUMENT"), "neither": (6, "INVALID_INPUT"),
                     "img": (7, "INVALID_ARGUMENT"), "uri": (8, "INVALID_ARGUMENT"), "gone": (9, "INVALID_INPUT")}
    messages = {f["id"]: f["message"] for f in failures}
    assert "100001 characters" in messages["long"] and "image" in messages["img"] and "line 4" in messages[3]
    # A finished output is not overwritten without --restart; int8 with --restart.
    assert main(argv) == 1 and "--restart" in capsys.readouterr().err
    assert main([*argv, "--restart", "--element-type", "int8", "--quiet"]) == 3
    int8, _, _ = outputs(out)
    with EmbeddingsClient(target) as client:
        np.testing.assert_array_equal(int8[:1], client.embed(["first"], model=TINY, element_type="int8"))


def test_csv_with_named_columns(server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{server.grpc_port}"
    texts = ["plain", "with, a comma", 'with "quotes"', "two\nlines", ""]
    with (tmp_path / "in.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["doc", "body", "other"])
        writer.writerows([[f"c{i}", text, "ignored"] for i, text in enumerate(texts)])
    out = tmp_path / "vectors"
    assert main([str(tmp_path / "in.csv"), "--out", str(out), "--model", TINY, "--target", target, "--quiet",
                 "--id-field", "doc", "--text-field", "body", "--dimensions", "8"]) == 0
    vectors, ids, failures = outputs(tmp_path / "vectors.npy")
    assert ids == [f"c{i}" for i in range(len(texts))] and failures == [] and vectors.shape == (len(texts), 8)
    assert_alone(target, texts, vectors, dimensions=8)
    assert main([str(tmp_path / "in.csv"), "--out", str(tmp_path / "x"), "--model", TINY, "--target", target,
                 "--quiet", "--text-field", "nope", "--image-field", "nope"]) == 1
    # Options the server refuses stop the run before any row is sent.
    assert main([str(tmp_path / "in.csv"), "--out", str(tmp_path / "y"), "--model", TINY, "--target", target,
                 "--quiet", "--text-field", "body", "--dimensions", "100000"]) == 1
    assert main([str(tmp_path / "in.csv"), "--out", str(tmp_path / "y"), "--model", "no-such-model", "--target",
                 target, "--quiet", "--text-field", "body", "--restart"]) == 1
    err = capsys.readouterr().err
    assert "no [nope] or [nope] column" in err and "refuses this run's options: INVALID_ARGUMENT" in err
    assert "[no-such-model] not found" in err
    assert not (tmp_path / "y.journal").exists()  # a run refused at the start leaves no journal behind


def test_parquet_in_and_out(server: ServerProcess, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow")
    import pyarrow.parquet as pq

    target = f"127.0.0.1:{server.grpc_port}"
    texts = [sentence(i, 12) for i in range(50)]
    pq.write_table(pa.table({"id": list(range(100, 150)), "text": texts}), tmp_path / "in.parquet", row_group_size=16)
    out = tmp_path / "out.parquet"
    assert main([str(tmp_path / "in.parquet"), "--out", str(out), "--model", TINY, "--target", target, "--quiet",
                 "--batch-size", "7", "--chunk-rows", "20"]) == 0
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [str(i) for i in range(100, 150)]
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert vectors.shape == (50, 64)
    assert_alone(target, texts[::7], vectors[::7])


def test_credentials(model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    secrets_ = make_credentials(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", 40, words=5)
    with ServerProcess(model_repo, tmp_path, "--only-models", TINY, *QUICK_STOP, grpc=True) as proc:
        argv = [str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out"), "--model", TINY, "--quiet",
                "--target", f"127.0.0.1:{proc.grpc_port}"]
        assert main([*argv, "--api-key", "wrong"]) == 1
        assert "credentials refused (--api-key / --authorization): UNAUTHENTICATED" in capsys.readouterr().err
        assert main([*argv, "--authorization", f"ApiKey {secrets_.encoded}"]) == 0
        monkeypatch.setenv("ORTEMBED_API_KEY", secrets_.token)  # kept out of the process list
        assert main([*argv, "--restart"]) == 0
    assert len(np.load(tmp_path / "out.npy")) == 40
