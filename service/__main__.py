"""`python -m service`: serve REST and gRPC (flags: `python -m service --help`)."""
from __future__ import annotations

import asyncio
import logging
import sys

from .config import load_settings
from .server import serve


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings = load_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
