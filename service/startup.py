"""Why the server cannot start: one exception every start-up check raises, printed as one clear
line (no traceback) by `python -m service`, which then exits with status 2."""
from __future__ import annotations


class StartupError(RuntimeError):
    """A setting, file or port that makes serving impossible; the message says which and why."""
