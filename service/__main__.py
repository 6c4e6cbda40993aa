"""`python -m service`: serve REST and gRPC (flags: `python -m service --help`);
`python -m service auth ...`: manage credentials (`python -m service auth --help`);
`python -m service embed ...`: embed a file over gRPC (`python -m service embed --help`)."""
from __future__ import annotations

import asyncio
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["auth"]:
        from .auth.cli import main as auth_main

        return auth_main(argv[1:])
    if argv[:1] == ["embed"]:  # a gRPC client: none of the server's imports
        from .bulk.cli import main as embed_main

        return embed_main(argv[1:])
    from . import logs
    from .server import serve
    from .settings_cli import load_settings, unknown_variables
    from .startup import StartupError

    settings = load_settings(argv)
    stop_logging = logs.configure(settings.log_level, settings.log_format, settings.access_log)
    code = 1
    try:
        for name in unknown_variables(dict(os.environ)):
            logging.getLogger("ortembed").warning("environment variable %s is not an ortembed setting (a typo?); "
                                                  "ignored", name)
        try:
            asyncio.run(serve(settings))
            code = 0
        except StartupError as exc:
            logging.getLogger("ortembed").critical("cannot start: %s", exc)
            if stop_logging():  # the log line first, then the plain message last
                print(f"ortembed: cannot start: {exc}", file=sys.stderr)
            code = 2
    finally:
        if not stop_logging():
            os._exit(code)  # the log output is blocked: Python's own shutdown would wait on it for ever
    return code


if __name__ == "__main__":
    sys.exit(main())
