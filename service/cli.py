"""`ortembed`: one command for everything the project does.

    ortembed serve [flags]        the server (REST and gRPC); `ortembed serve --help` lists every flag
    ortembed export SOURCE ...    a Hugging Face / sentence-transformers / CLIP checkpoint to a model folder
    ortembed auth ...             API keys, Bearer tokens and Basic users
    ortembed embed INPUT ...      embed a whole file over gRPC, on one server or many
    ortembed --version

The `python -m service` (serve, auth, embed) and `python -m export` forms stay.
"""
from __future__ import annotations

import importlib.metadata
import sys
from typing import Callable, Sequence


def version() -> str:
    try:
        return importlib.metadata.version("ortembed")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _serve(argv: list[str]) -> int:
    from .__main__ import main
    return main(argv)


def _export(argv: list[str]) -> int:
    from export.__main__ import main
    return main(argv)


def _auth(argv: list[str]) -> int:
    from .auth.cli import main
    return main(argv)


def _embed(argv: list[str]) -> int:
    from .bulk.cli import main
    return main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {"serve": _serve, "export": _export, "auth": _auth, "embed": _embed}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["--version"], ["-V"]):
        import onnxruntime

        print(f"ortembed {version()} (onnxruntime {onnxruntime.__version__}, python {sys.version.split()[0]})")
        return 0
    if not args or args[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"ortembed: unknown command [{args[0]}]; one of: {', '.join(COMMANDS)} (see `ortembed --help`)",
              file=sys.stderr)
        return 2
    return command(args[1:])


if __name__ == "__main__":
    sys.exit(main())
