"""ProxyCommand: the SSH connection carried over a local command's stdin and stdout.

>>> sock = start("exec ssh -W %s:%d bastion" % ("10.0.0.5", 22))      # doctest: +SKIP

Run as ssh runs it: ``$SHELL -c "exec COMMAND"`` (``/bin/sh`` when SHELL
is unset), its tokens already expanded (:mod:`.endpoint`). Its stdin and
stdout are one end of a socket pair; the other end is a real socket that
paramiko reads and writes. Closing that socket (the connection closing)
hangs up the command, as ssh does, and kills it if it lingers. What the
command wrote on stderr is kept (in an unnamed file, so that a chatty
command never blocks) for the message when the connection fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import threading
from typing import IO, Optional

#: Seconds a hung-up command gets to exit before it is killed.
HANGUP_GRACE = 0.5


class ProxySocket(socket.socket):
    """Our end of the socket pair, owning the command on the other end."""

    command: str = ""
    process: Optional[subprocess.Popen] = None
    stderr: Optional[IO[bytes]] = None
    said: str = ""  # the end of the command's stderr, once it is done
    _done: Optional[threading.Lock] = None

    def _stderr_tail(self) -> str:
        if self.stderr is None or self.stderr.closed:
            return self.said
        try:
            self.stderr.seek(0)
            return self.stderr.read()[-2000:].decode(errors="replace").strip()
        except (OSError, ValueError):
            return self.said

    def why(self, wait: float = HANGUP_GRACE) -> str:
        """What the command said and how it ended (given ``wait`` seconds to end), for a failed connection's message."""
        process = self.process
        if process is None:
            return ""
        try:
            status: Optional[int] = process.wait(wait)
        except subprocess.TimeoutExpired:
            status = None
        said = self._stderr_tail()
        ended = "is still running" if status is None else (
            f"exited {status}" if status >= 0 else f"was killed by signal {-status}")
        return f"ProxyCommand {self.command!r} {ended}" + (f": {said}" if said else " (it wrote nothing on stderr)")

    def close(self) -> None:
        super().close()
        # Called by paramiko's reader thread and by ours, maybe at once: the command is ended once.
        if self._done is None or not self._done.acquire(blocking=False):
            return
        process = self.process
        if process is not None:
            try:
                if process.poll() is None:
                    process.send_signal(signal.SIGHUP)  # what ssh sends its proxy command when it is done
                process.wait(HANGUP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            except ProcessLookupError:
                pass
        if self.stderr is not None:
            self.said = self._stderr_tail()
            self.stderr.close()


def start(command: str) -> ProxySocket:
    """A socket connected to ``command`` run through the shell; OSError if it cannot start."""
    ours, theirs = socket.socketpair()
    stderr = tempfile.TemporaryFile()
    try:
        process = subprocess.Popen(
            [os.environ.get("SHELL") or "/bin/sh", "-c", f"exec {command}"],
            stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=stderr,
            # Its own session: a Ctrl-C in the shell must not kill the pooled connections' proxies.
            start_new_session=True, close_fds=True)
    except BaseException:
        ours.close()
        stderr.close()
        raise
    finally:
        theirs.close()
    sock = ProxySocket(ours.family, ours.type, ours.proto, ours.detach())
    sock.command, sock.process, sock.stderr, sock._done = command, process, stderr, threading.Lock()
    return sock
