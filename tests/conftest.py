"""Shared fixtures: a model repository with tiny models the tests export themselves, and the
real server running over it (plus the default model when `make models` has built it)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.server import DEFAULT_MODEL_DIR, ServerProcess
from tests.tiny_models import export_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY = "tiny"
TINY_E5 = "tiny-e5"  # same shape, with E5-style prompts per input type


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/: two tiny int8 models exported by the real pipeline, and the default model."""
    root = tmp_path_factory.mktemp("models")
    export_tiny_model(root, TINY, seed=0)
    export_tiny_model(root, TINY_E5, seed=1, prompts={"query": "query: ", "passage": "passage: "})
    if (DEFAULT_MODEL_DIR / "model.onnx").is_file():
        (root / DEFAULT_MODEL_DIR.name).symlink_to(DEFAULT_MODEL_DIR, target_is_directory=True)
    return root


CLIP = "tiny-clip"


@pytest.fixture(scope="session")
def clip_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random CLIP exported once by the real pipeline: (the model folder, the transformers
    folder it came from, kept for comparisons with torch)."""
    from tests.tiny_clip import export_tiny_clip

    source = tmp_path_factory.mktemp("clip-src") / "tiny-clip-src"
    folder = export_tiny_clip(tmp_path_factory.mktemp("clip-models"), CLIP, seed=1, source_dir=source)
    return folder, source


@pytest.fixture(scope="session")
def has_default_model(model_repo: Path) -> bool:
    return (model_repo / DEFAULT_MODEL_DIR.name / "model.onnx").is_file()


@pytest.fixture(scope="session")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The real server, open (no credentials), REST and gRPC, shared by the whole session."""
    with ServerProcess(model_repo, tmp_path_factory.mktemp("data"), grpc=True) as proc:
        yield proc


@pytest.fixture
def default_model(has_default_model: bool) -> str:
    if not has_default_model:
        pytest.skip("the default model is not built (make models)")
    return DEFAULT_MODEL_DIR.name
