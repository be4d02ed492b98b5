"""Checks of what public calls are given, before anything runs.

Each refusal is an :class:`~ecshell.errors.ArgumentError` that quotes the
bad value and says what to pass instead.

>>> seconds("timeout", 2.5)
2.5
>>> file_mode(octal("0644")) == 0o644
True
>>> seconds("timeout", "5")
Traceback (most recent call last):
...
ecshell.errors.ArgumentError: timeout must be a number of seconds above 0, e.g. timeout=30; not '5' (of type str)
"""

from __future__ import annotations

import math

from .errors import ArgumentError


def _what(value: object) -> str:
    return f"{value!r} (of type {type(value).__name__})"


def seconds(name: str, value: object) -> float | None:
    """``value`` as seconds: None (no limit) or a finite number above 0."""
    if value is None:
        return None
    return required_seconds(name, value)


def required_seconds(name: str, value: object) -> float:
    """``value`` as seconds that must be given: a finite number above 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ArgumentError(f"{name} must be a number of seconds above 0, e.g. {name}=30; not {_what(value)}")
    return float(value)


def stdin_input(value: object) -> bytes | str | None:
    """``value`` as a command's stdin: None (closed at once), bytes, or str (sent as UTF-8)."""
    if value is None or isinstance(value, (bytes, str)):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise ArgumentError(f"input is what the command reads on stdin: give bytes or a str, "
                        f"e.g. input='yes\\n'; not {_what(value)}")


#: The permission bits a file mode may set (rwx for all three, setuid, setgid, sticky).
MAX_MODE = 0o7777


def file_mode(value: object) -> int | None:
    """``value`` as a file mode: None (the server's default) or an int from 0 to 0o7777."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MODE:
        shown = f"{value!r} (= {oct(value)})" if isinstance(value, int) and not isinstance(value, bool) \
            else _what(value)
        raise ArgumentError(f"mode must be permission bits from 0 to 0o7777, e.g. mode=0o644; not {shown}")
    return value


def octal(text: str) -> int:
    """A mode written in octal as people type it (``644``, ``0644``, ``0o644``), checked."""
    digits = text.strip()
    if digits[:2].lower() == "0o":
        digits = digits[2:]
    if not digits or any(c not in "01234567" for c in digits):
        raise ArgumentError(f"mode must be octal digits like 644, 0644 or 755, not {text!r}")
    mode = int(digits, 8)
    if mode > MAX_MODE:
        raise ArgumentError(f"mode {text!r} is more than 7777, the highest file mode; e.g. 644 or 755")
    return mode
