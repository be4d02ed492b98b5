"""Whose log records reach the terminal: ecshell's, and its libraries' only when asked.

paramiko logs every transport error (a host that hangs before its banner,
a connection reset) with a full traceback through ``paramiko.transport``.
With no handler configured, Python's last-resort handler prints those on
stderr, in the middle of the operator's screen, although the host's
failure is already its Result. So the libraries' loggers get a handler
that drops their records (an application that configures logging still
receives them: they propagate), and ``c.EcShell.log_level = "DEBUG"`` (or
``%config EcShell.log_level = 'DEBUG'``) shows everything on stderr.

>>> show("DEBUG")     # ecshell's and paramiko's records, from DEBUG up
>>> show("WARNING")   # the default: ecshell's warnings only
"""

from __future__ import annotations

import logging
import sys

#: The libraries whose records are ecshell's to show.
LIBRARIES = ("paramiko",)
#: ecshell's own logger.
OWN = "ecshell"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT = "WARNING"

_dropped = logging.NullHandler()
_shown = logging.StreamHandler(sys.stderr)
_shown.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))


def quiet_libraries() -> None:
    """Keep the libraries' records off the terminal unless :func:`show` asks for them."""
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        if _dropped not in logger.handlers:
            logger.addHandler(_dropped)


def show(level: str) -> None:
    """Show ecshell's and its libraries' records from ``level`` up on stderr (``DEFAULT``: ecshell's warnings only)."""
    quiet_libraries()
    for name in (OWN, *LIBRARIES):
        logger = logging.getLogger(name)
        if level == DEFAULT:
            if _shown in logger.handlers:
                logger.removeHandler(_shown)
            logger.setLevel(logging.NOTSET)
            continue
        logger.setLevel(level)
        if _shown not in logger.handlers:
            logger.addHandler(_shown)
    _shown.stream = sys.stderr  # the stderr of now (IPython and tests replace it)
