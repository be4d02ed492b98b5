"""One SSH channel per command, as ``ssh host CMD`` does it.

sshd runs the request's wire string with the user's login shell ``-c``;
stdout and stderr are combined on the channel in arrival order. A command
is killed by a second channel that TERMs (then KILLs) the processes that
carry its ECSHELL_RUN token: that costs nothing on the wire while the
command runs, and works for root too (OpenSSH refuses the SSH ``signal``
request for root sessions). Finding them needs Linux's /proc.
"""

from __future__ import annotations

import socket
import time
from typing import Callable, Optional

import paramiko

from ..errors import ConnectError, ErrorKind
from .transport import (KILL_TIMEOUT, POLL, RUN_VARIABLE, Broken, Exit, Lost, Process, Request, Silent, Transport,
                        kill_script, next_chunk, send_input, stopped)


class ChannelTransport(Transport):
    """Opens a new session on the connection for every command."""

    def __init__(self, connection, timeout: float):
        self.connection = connection
        self.timeout = timeout

    def open(self):
        """A new session channel; :class:`Broken` if the connection is gone, :class:`Silent` if it says nothing."""
        started = time.monotonic()
        try:
            return self.connection.open_session(timeout=self.timeout)
        except paramiko.ChannelException as exc:  # the server answered: no (MaxSessions, ...)
            raise ConnectError(ErrorKind.UNREACHABLE, f"the server refused a new session: {exc}") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if self.connection.alive and time.monotonic() - started >= self.timeout:
                raise Silent(f"no answer to a new session within {round(self.timeout, 1):g}s") from None
            # Anything else means the transport broke, even if its thread has not said so yet.
            raise Broken(str(exc)) from None

    def start(self, request: Request) -> "ChannelProcess":
        channel = self.open()
        try:
            channel.set_combine_stderr(True)
            if request.pty:
                channel.get_pty(term="xterm", width=200, height=50)
            channel.exec_command(request.wire())
            sent_at = time.monotonic()
            send_input(channel.sendall, channel.shutdown_write, request.input)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            channel.close()
            if not self.connection.alive:
                raise ConnectError(ErrorKind.LOST, f"connection lost before the command started ({exc}); "
                                   "it was not run") from None
            raise ConnectError(ErrorKind.UNREACHABLE, f"the server refused the command: {exc}") from None
        return ChannelProcess(self.connection, channel, request.token, sent_at)


class ChannelProcess(Process):
    def __init__(self, connection, channel, token: Optional[str], sent_at: float):
        self.connection = connection
        self.channel = channel
        self.token = token
        self.sent_at = sent_at
        self.detail = {"run": token}

    def read(self, deadline, cancel) -> bytes:
        return next_chunk(self.channel, deadline, cancel)

    def wait(self, deadline, cancel) -> Exit:
        # EOF came; the exit status arrives just before or after the channel closes.
        channel = self.channel
        while not channel.status_event.wait(POLL):
            if not self.connection.alive or channel.closed:
                break
            stopped(deadline, cancel)
        if channel.exit_status_ready() and channel.exit_status != -1:
            return Exit(channel.exit_status)
        if not self.connection.alive:
            where = f" (its processes carry {RUN_VARIABLE}={self.token})" if self.token else ""
            raise Lost(f"connection lost while the command ran (after {time.monotonic() - self.sent_at:.1f}s); "
                       f"it was not re-run and may or may not have finished{where}")
        # No status: a signal killed it; sshd said which in an exit-signal request (see connection.py).
        return Exit(None, getattr(channel, "exit_signal", None))

    def kill(self, output: Callable[[bytes], None]) -> str:
        if self.token is None or not self.connection.alive:
            return ""
        return kill_run(self.connection, self.token)

    def close(self) -> None:
        self.channel.close()


def kill_run(connection, token: str) -> str:
    """TERM every process carrying ECSHELL_RUN=token (and its process group), KILL a second later.

    Returns a note for the result. Runs :func:`kill_script` on a new channel
    of the same connection.
    """
    script = kill_script(token)
    try:
        channel = connection.open_session(timeout=KILL_TIMEOUT)
        try:
            channel.settimeout(KILL_TIMEOUT)
            channel.exec_command(script)
            channel.shutdown_write()
            out = b""
            while True:
                data = channel.recv(4096)
                if not data:
                    break
                out += data
        finally:
            channel.close()
    except (paramiko.SSHException, EOFError, OSError, socket.timeout) as exc:
        return f"could not kill it on the machine: {exc}"
    if not out.split():
        return "nothing left to kill on the machine"
    return "killed on the machine"
