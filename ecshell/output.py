"""Exact command output: bytes in memory up to a bound, then on disk.

>>> buf = OutputBuffer(memory_limit=4)
>>> buf.write(b"ab"); buf.write(b"\\xffcd\\n")
>>> buf.getvalue()
b'ab\\xffcd\\n'
>>> buf.spilled
True
>>> decode(buf.getvalue())
'ab\\ufffdcd\\n'

Nothing here ever truncates: past ``memory_limit`` the bytes move to a
temporary file (under ``spill_dir``) and keep growing there.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import tempfile
import threading
from typing import IO

DEFAULT_MEMORY_LIMIT = 4 * 1024 * 1024


class OutputBuffer:
    """Append-only byte store that spills to a file past ``memory_limit``.

    ``path`` is the file the bytes went to once they outgrew ``memory_limit``
    (under ``spill_dir``, or the system's temporary directory), else None.
    """

    def __init__(self, memory_limit: int = DEFAULT_MEMORY_LIMIT, spill_dir: str | None = None) -> None:
        self.memory_limit = memory_limit
        self.spill_dir = spill_dir
        self._chunks: list[bytes] = []
        self._size = 0
        self._file: IO[bytes] | None = None
        self.path: str | None = None
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            self._size += len(data)
            if self._file is None and self._size > self.memory_limit:
                self._spill()
            if self._file is not None:
                self._file.write(data)
            else:
                self._chunks.append(data)

    def _spill(self) -> None:
        if self.spill_dir:
            os.makedirs(self.spill_dir, exist_ok=True)
        fd, self.path = tempfile.mkstemp(prefix="output-", dir=self.spill_dir)
        self._file = os.fdopen(fd, "w+b")
        self._file.write(b"".join(self._chunks))
        self._chunks = []

    def close(self) -> None:
        """Flush to disk; the bytes stay readable through :meth:`getvalue`."""
        with self._lock:
            if self._file is not None:
                self._file.flush()

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def __len__(self) -> int:
        return self._size

    @property
    def memory_size(self) -> int:
        return 0 if self._file is not None else self._size

    def _in_memory(self) -> bytes | None:
        """The bytes, when they are in memory (call with the lock held); else None."""
        if self._file is not None:
            return None
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    def _flushed_path(self) -> str:
        """The spill file's path, with everything written flushed (lock held, once spilled)."""
        assert self._file is not None and self.path is not None  # _spill sets both
        self._file.flush()
        return self.path

    def getvalue(self) -> bytes:
        with self._lock:
            data = self._in_memory()
            if data is not None:
                return data
            with open(self._flushed_path(), "rb") as f:
                return f.read()

    def fingerprint(self) -> bytes | tuple[int, bytes]:
        """What identical outputs share: the bytes themselves, or for a spilled file its size and digest."""
        with self._lock:
            data = self._in_memory()
            if data is not None:
                return data
            digest = hashlib.blake2b()
            with open(self._flushed_path(), "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
            return (self._size, digest.digest())

    def head(self, limit: int) -> bytes:
        """The first ``limit`` bytes, without reading a spilled file whole."""
        with self._lock:
            if self._file is None:
                return b"".join(self._chunks)[:limit]
            with open(self._flushed_path(), "rb") as f:
                return f.read(limit)

    def discard(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                assert self.path is not None  # _spill sets it together with _file
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                self._file = None
            self._chunks = []

    def __del__(self) -> None:
        try:
            self.discard()
        except Exception:
            pass


def decode(data: bytes) -> str:
    """Bytes to text for display; invalid UTF-8 becomes U+FFFD, never an error."""
    return data.decode("utf-8", errors="replace")


class StreamDecoder:
    """Incremental UTF-8 decoding of chunks that may split a character."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


_CONTROL = re.compile(r"\r\n|[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")


def _visible(match: re.Match[str]) -> str:
    ch = match.group()
    if ch == "\r\n":
        return "\n"
    code = ord(ch)
    if code < 0x20:
        return "^" + chr(code + 0x40)
    if code == 0x7F:
        return "^?"
    return "\\x%02x" % code


def printable(text: str) -> str:
    """Escape terminal control sequences so remote output cannot drive our terminal.

    Newlines and tabs stay; every other C0/C1 control character (ESC, a lone
    CR, BEL, ...) is shown in caret or ``\\xNN`` notation, like ``cat -v``.
    """
    return _CONTROL.sub(_visible, text)
