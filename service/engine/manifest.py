"""The model manifest: what `export/` writes next to a model and the server reads back.

The manifest is the contract between the exporter and the server. The server trusts nothing
else about a model folder: no Hugging Face config, no network.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..fsutil import atomic_write

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


# Pillow's (and transformers' PILImageResampling) filter numbers, by name: index = number.
RESAMPLE_FILTERS = ("nearest", "lanczos", "bilinear", "bicubic", "box", "hamming")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageFidelity:
    """Agreement of the served image tower with the full-precision reference, measured at export."""

    reference: str
    images: int
    mean_cosine: float
    min_cosine: float
    batch_invariance_min_cosine: float | None = None
    # Largest difference between the engine's pixel tensors and the checkpoint's image processor.
    pixel_max_abs_diff: float | None = None


@dataclass(frozen=True)
class VisionConfig:
    """The image tower of a CLIP-style model: its graph (pixels in, the projected embedding out)
    and the preprocessing of its images, field for field as the checkpoint's
    preprocessor_config.json says, with transformers' CLIPImageProcessor semantics."""

    model_file: str = "vision.onnx"
    input_name: str = "pixel_values"
    output_name: str = "image_embeds"
    normalize: bool = True  # L2-normalise the graph's output
    do_convert_rgb: bool = True
    do_resize: bool = True
    # One resize rule: the shortest edge to N pixels (aspect kept, CLIP), or exactly height x width (SigLIP).
    resize_shortest_edge: int | None = 224
    resize_height: int | None = None
    resize_width: int | None = None
    resample: str = "bicubic"  # one of RESAMPLE_FILTERS
    do_center_crop: bool = True
    crop_height: int | None = 224
    crop_width: int | None = 224
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    recipe: str = "fp32"
    quantization: dict[str, Any] = field(default_factory=dict)
    fidelity: ImageFidelity | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the pixel tensor the graph takes."""
        if self.do_center_crop:
            return int(self.crop_height or 0), int(self.crop_width or 0)
        return int(self.resize_height or 0), int(self.resize_width or 0)

    def check(self) -> None:
        """Refuse what the engine's preprocessing cannot do exactly; the error names the field."""
        def fail(name: str, why: str) -> None:
            raise ManifestError(f"vision.{name}: {why}")

        for name in ("model_file", "input_name", "output_name"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                fail(name, "must be a non-empty string")
        if self.resample not in RESAMPLE_FILTERS:
            fail("resample", f"unknown filter {self.resample!r}; supported: {list(RESAMPLE_FILTERS)}")
        exact = self.resize_height is not None or self.resize_width is not None
        if self.do_resize and exact == (self.resize_shortest_edge is not None):
            fail("resize_shortest_edge", "give either resize_shortest_edge or resize_height and resize_width")
        sizes = {"resize_shortest_edge": self.resize_shortest_edge, "resize_height": self.resize_height,
                 "resize_width": self.resize_width, "crop_height": self.crop_height, "crop_width": self.crop_width}
        for name, size in sizes.items():
            if size is not None and (type(size) is not int or size < 1):
                fail(name, f"must be a positive integer, not {size!r}")
        if self.do_center_crop and (self.crop_height is None or self.crop_width is None):
            fail("crop_height", "do_center_crop needs crop_height and crop_width")
        if not self.do_center_crop and not (self.do_resize and exact and self.resize_height and self.resize_width):
            fail("do_center_crop", "without a centre crop or an exact height x width resize, images keep their "
                                   "own sizes; the tower needs one fixed input size")
        if self.do_rescale and not (math.isfinite(self.rescale_factor) and self.rescale_factor > 0):
            fail("rescale_factor", f"must be a positive number, not {self.rescale_factor!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                fail(name, f"must be three finite numbers (R, G, B), not {list(values)}")
        if self.do_normalize and not all(v != 0 for v in self.std):
            fail("std", "must not hold a zero")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "VisionConfig":
        values = dict(data)
        for name in ("mean", "std"):
            if name in values:
                values[name] = tuple(float(v) for v in values[name])
        if "rescale_factor" in values:
            values["rescale_factor"] = float(values["rescale_factor"])
        if values.get("fidelity"):
            values["fidelity"] = ImageFidelity(**values["fidelity"])
        vision = cls(**values)
        vision.check()
        return vision


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
    # Other names the model answers to, e.g. its Hugging Face id "sentence-transformers/all-MiniLM-L6-v2".
    aliases: tuple[str, ...] = ()
    # Which backend runs the graphs (engine/backends): "onnxruntime" or "openvino".
    backend: str = "onnxruntime"
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

    @property
    def modalities(self) -> list[str]:
        """["text"], ["image"] or ["text", "image"]."""
        return [kind for kind, ok in (("text", self.accepts_text), ("image", self.accepts_images)) if ok]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = list(self.inputs)
        data["aliases"] = list(self.aliases)
        if self.matryoshka_dimensions is not None:
            data["matryoshka_dimensions"] = list(self.matryoshka_dimensions)
        return data

    def write(self, folder: Path) -> None:
        atomic_write(folder / MANIFEST_FILE, (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        try:
            version = int(data.get("format_version", FORMAT_VERSION))
            if version != FORMAT_VERSION:
                raise ManifestError(f"unsupported manifest format_version {version}")
            kwargs = dict(data)
            kwargs["inputs"] = tuple(kwargs.get("inputs", cls.inputs))
            kwargs["aliases"] = tuple(str(alias) for alias in kwargs.get("aliases") or ())
            if kwargs.get("matryoshka_dimensions") is not None:
                kwargs["matryoshka_dimensions"] = tuple(int(d) for d in kwargs["matryoshka_dimensions"])
            if kwargs.get("fidelity"):
                kwargs["fidelity"] = Fidelity(**kwargs["fidelity"])
            if kwargs.get("vision"):
                kwargs["vision"] = VisionConfig.from_json(kwargs["vision"])
            manifest = cls(**kwargs)
            manifest._check()
        except ManifestError:
            raise
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise ManifestError(f"invalid manifest: {exc}") from exc
        return manifest

    def _check(self) -> None:
        if self.pooling not in ("mean", "cls", "last"):
            raise ManifestError(f"unknown pooling {self.pooling!r}")
        if self.accepts_images and self.vision is None:
            raise ManifestError(f"modality {self.modality!r} needs a [vision] block (the image tower)")
        for name in ("name", "model_file", "tokenizer_file", "output", "backend"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ManifestError(f"{name} must be a non-empty string")
        if int(self.dimensions) != self.dimensions or self.dimensions < 1 or self.max_tokens < 1:
            raise ManifestError("dimensions and max_tokens must be positive integers")
        unknown_prompts = set(self.prompts) - set(PROMPT_INPUT_TYPES)
        if unknown_prompts:
            raise ManifestError(f"prompts for unknown input types {sorted(unknown_prompts)}")

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
