"""The errors a user causes and can fix, as opposed to bugs.

Whatever the user controls (config values, input files, the state of a run folder they point at) fails
with a :class:`UserError` whose message names the key or file and says what to do. The CLI prints it as
one line, ``climb-hpc: error: ...``, and exits 2; a task that raises one is not retried (the same input
fails the same way). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can fix; the message says which key or file, and what to do."""


class ConfigError(UserError, ValueError):
    """A config value is wrong; the message says which and what to do."""


class InputError(UserError):
    """An input file is unreadable, damaged or inconsistent; the message names it and where."""


def one_line(message: str) -> str:
    """A message on one line (multi-line details joined with '; ')."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    return "; ".join(parts)
