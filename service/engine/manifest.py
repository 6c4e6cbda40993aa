"""The model manifest: what `export/` writes next to a model and the server reads back.

The manifest is the contract between the exporter and the server. The server trusts nothing
else about a model folder: no Hugging Face config, no network.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1

Pooling = Literal["mean", "cls", "last"]
Modality = Literal["text", "image", "text+image"]
# The Elasticsearch input types a prompt can be attached to.
PROMPT_INPUT_TYPES = ("search", "ingest", "classification", "clustering")


class ManifestError(ValueError):
    """A manifest is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class Fidelity:
    """Agreement of the served graph with the full-precision reference, measured at export."""

    reference: str
    sentences: int
    mean_cosine: float
    min_cosine: float
    # Optional, recorded by recipes that measure them.
    top10_overlap: float | None = None
    batch_invariance_min_cosine: float | None = None


@dataclass(frozen=True)
class VisionConfig:
    """Pre-processing of the image tower (CLIP-style models), from the preprocessor config."""

    model_file: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_shortest_edge: int
    rescale_factor: float = 1 / 255
    input_name: str = "pixel_values"
    output_name: str = "image_embeds"


@dataclass(frozen=True)
class Manifest:
    name: str
    dimensions: int
    max_tokens: int
    pooling: Pooling
    normalize: bool
    architecture: str = "bert"
    modality: Modality = "text"
    model_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    # Names of the graph's inputs the engine must feed, in any order.
    inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    # Name of the graph output: a token-level "last_hidden_state" (pooled by the engine) or an
    # already pooled sentence-level output such as "text_embeds".
    output: str = "last_hidden_state"
    output_is_pooled: bool = False
    # None: any size from 1 to `dimensions` may be asked for (OpenAI behaviour);
    # a list: only these sizes (Matryoshka-trained models); empty list: no truncation at all.
    matryoshka_dimensions: tuple[int, ...] | None = None
    # Prompt prepended per Elasticsearch input type ("search" -> "query: ").
    prompts: dict[str, str] = field(default_factory=dict)
    similarity: str = "cosine"
    recipe: str = "dynamic-int8"
    # The inference library the graph was exported and gated for (service/engine/backends), and
    # its inference precision hint (OpenVINO: "bf16"; None: the graph's own precision).
    backend: str = "onnxruntime"
    precision: str | None = None
    quantization: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    onnxruntime_version: str = ""
    fidelity: Fidelity | None = None
    vision: VisionConfig | None = None
    format_version: int = FORMAT_VERSION

    # ----------------------------------------------------------------------------------------
    def allows_dimensions(self, size: int) -> bool:
        if size < 1 or size > self.dimensions:
            return False
        if self.matryoshka_dimensions is None:
            return True
        return size in self.matryoshka_dimensions or size == self.dimensions

    @property
    def accepts_text(self) -> bool:
        return self.modality in ("text", "text+image")

    @property
    def accepts_images(self) -> bool:
        return self.modality in ("image", "text+image")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = list(self.inputs)
        if self.matryoshka_dimensions is not None:
            data["matryoshka_dimensions"] = list(self.matryoshka_dimensions)
        return data

    def write(self, folder: Path) -> None:
        path = folder / MANIFEST_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        try:
            version = int(data.get("format_version", FORMAT_VERSION))
            if version != FORMAT_VERSION:
                raise ManifestError(f"unsupported manifest format_version {version}")
            kwargs = dict(data)
            kwargs["inputs"] = tuple(kwargs.get("inputs", cls.inputs))
            if kwargs.get("matryoshka_dimensions") is not None:
                kwargs["matryoshka_dimensions"] = tuple(int(d) for d in kwargs["matryoshka_dimensions"])
            if kwargs.get("fidelity"):
                kwargs["fidelity"] = Fidelity(**kwargs["fidelity"])
            if kwargs.get("vision"):
                vision = dict(kwargs["vision"])
                vision["mean"] = tuple(vision["mean"])
                vision["std"] = tuple(vision["std"])
                kwargs["vision"] = VisionConfig(**vision)
            manifest = cls(**kwargs)
        except (TypeError, KeyError, ValueError) as exc:
            raise ManifestError(f"invalid manifest: {exc}") from exc
        if manifest.pooling not in ("mean", "cls", "last"):
            raise ManifestError(f"unknown pooling {manifest.pooling!r}")
        if manifest.dimensions < 1 or manifest.max_tokens < 1:
            raise ManifestError("dimensions and max_tokens must be positive")
        unknown_prompts = set(manifest.prompts) - set(PROMPT_INPUT_TYPES)
        if unknown_prompts:
            raise ManifestError(f"prompts for unknown input types {sorted(unknown_prompts)}")
        return manifest

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        path = folder / MANIFEST_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ManifestError(f"{path} is missing") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path} is unreadable: {exc}") from exc
        if not isinstance(data, dict):
            raise ManifestError(f"{path} is not a JSON object")
        return cls.from_json(data)
