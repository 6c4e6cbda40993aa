"""The benchmark corpus: ../shared/data/corpus.jsonl beside the repository (JSON lines with "text" and "kind")."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO_ROOT.parent / "shared" / "data" / "corpus.jsonl"


def shown(path: object) -> str:
    """A path as a report may print it: relative to the repository (or to site-packages), never
    a path of the machine that ran the benchmark."""
    text = str(path)
    resolved = Path(text).resolve()
    for base, prefix in ((REPO_ROOT, ""), (REPO_ROOT.parent / "shared", "../shared/")):
        if resolved.is_relative_to(base):
            return prefix + str(resolved.relative_to(base))
    marker = "site-packages/"
    return text[text.index(marker):] if marker in text else Path(text).name


class CorpusError(SystemExit):
    """A missing or unreadable corpus ends the run with a clear message (exit status 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"bench: {message}")


@dataclass(frozen=True)
class Corpus:
    path: Path
    texts: tuple[str, ...]
    kinds: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def queries(self) -> list[str]:
        """The short search queries (kind "query"): the latency scenario's inputs."""
        return [t for t, k in zip(self.texts, self.kinds) if k == "query"]

    def subset(self, count: int) -> "Corpus":
        """A deterministic subset of `count` texts keeping each kind's share (quick runs)."""
        if count >= len(self):
            return self
        by_kind: dict[str, list[int]] = {}
        for index, kind in enumerate(self.kinds):
            by_kind.setdefault(kind, []).append(index)
        chosen: list[int] = []
        for indices in by_kind.values():
            want = max(1, round(count * len(indices) / len(self)))
            step = len(indices) / want
            chosen += [indices[int(i * step)] for i in range(want)]
        chosen = sorted(chosen)[:count]
        return Corpus(self.path, tuple(self.texts[i] for i in chosen), tuple(self.kinds[i] for i in chosen))


def load_corpus(path: Path) -> Corpus:
    if not path.is_file():
        raise CorpusError(
            f"corpus not found: {path}\n"
            "  The benchmark reads the shared corpus (JSON lines with a \"text\" field), by default\n"
            f"  {DEFAULT_CORPUS}. Pass --corpus PATH to use another file."
        )
    texts: list[str] = []
    kinds: list[str] = []
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    text = row["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise CorpusError(f"{path}:{number}: not a JSON object with a \"text\" field ({exc})") from None
                if not isinstance(text, str):
                    raise CorpusError(f"{path}:{number}: \"text\" is not a string")
                texts.append(text)
                kinds.append(str(row.get("kind", "text")))
    except OSError as exc:
        raise CorpusError(f"cannot read the corpus {path}: {exc}") from None
    if not texts:
        raise CorpusError(f"the corpus {path} holds no texts")
    return Corpus(path, tuple(texts), tuple(kinds))
