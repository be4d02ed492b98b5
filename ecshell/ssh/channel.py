"""One SSH channel per command, as ``ssh host CMD`` does it.

sshd runs the request's command, exactly as given, with the user's login
shell ``-c``; stdout and stderr are combined on the channel in arrival
order. The command's ECSHELL_RUN token travels in an SSH ``env`` request,
which sshd honours only where its ``AcceptEnv`` allows (LocalFabric's
machines do; see README, "Killing a command").

A command is killed by a second channel, which TERMs (then KILLs) its
processes, found by their token where sshd passed it, else as the session
sshd started for the command's channel (:func:`~ecshell.ssh.transport.kill_script`). The SSH
``signal`` request is not used: OpenSSH refuses it for root sessions and
forced commands. Finding processes needs Linux's /proc.
"""

from __future__ import annotations

import socket
import time
from typing import Callable, Optional

import paramiko

from ..errors import ConnectError, ErrorKind
from .executor import peek
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
            if request.token:
                channel.set_environment_variable(RUN_VARIABLE, request.token)  # no reply is asked for: no wait
            if request.pty:
                channel.get_pty(term="xterm", width=200, height=50)
            with self.connection.commands_lock:
                channel.exec_command(request.command)
                process = ChannelProcess(self.connection, channel, request.token, time.monotonic())
                self.connection.commands.append(process)
            send_input(channel.sendall, channel.shutdown_write, request.input)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.connection.forget(channel)
            channel.close()
            if not self.connection.alive:
                raise ConnectError(ErrorKind.LOST, f"connection lost before the command started ({exc}); "
                                   "it was not run") from None
            raise ConnectError(ErrorKind.UNREACHABLE, f"the server refused the command: {exc}") from None
        return process


class ChannelProcess(Process):
    via = "channel"

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
        return kill_run(self.connection, self, self.token)

    def close(self) -> None:
        self.connection.forget(self.channel)
        self.channel.close()


def kill_run(connection, process: ChannelProcess, token: str) -> str:
    """TERM the processes of ``process`` (its run ``token``), and their process groups; KILL them a second later.

    Returns a note for the result. One kill at a time per connection, so that
    no other kill script is among the sessions counted (see :func:`kill_script`).
    """
    with connection.kill_lock:
        with connection.commands_lock:
            running = [p for p in connection.commands if not p.channel.exit_status_ready()]
        rank = running.index(process) if process in running else -1
        executor = peek(connection)
        skip = executor.pid if executor is not None and executor.pid else 0
        script = kill_script(token, rank, len(running), int(skip))
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
    said = out.split()
    if said == [b"unsure"]:
        return ("not killed on the machine: it could not be told from the connection's other commands "
                f"(its sshd does not accept {RUN_VARIABLE}: see README, \"Killing a command\")")
    if not said:
        return "nothing left to kill on the machine"
    return "killed on the machine"
