"""One SSH channel per command, as ``ssh host CMD`` does it.

sshd runs the request's command, exactly as given, with the user's login
shell ``-c``; stdout and stderr are combined on the channel in arrival
order. The command's ECSHELL_RUN token travels in an SSH ``env`` request,
which sshd honours only where its ``AcceptEnv`` allows (LocalFabric's
machines do; see README, "Killing a command").

A command is killed by a second channel, which TERMs (then KILLs) its
processes, found by their token where sshd passed it, else as the session
sshd started for the command's channel (:data:`KILL_SCRIPT`). The SSH
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
                        next_chunk, send_input, stopped)


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
        return kill_run(self.connection, self)

    def close(self) -> None:
        self.connection.forget(self.channel)
        self.channel.close()


#: Runs on a new channel of the command's connection; prints the pids it TERMed.
#: First the processes whose environment carries the token (where sshd accepted
#: the env request); else the command's session: sshd starts every channel's
#: command as a session leader whose parent is the connection's sshd process, so
#: the sessions under that parent, ordered by start, are the connection's running
#: commands in the order they were sent (the client passes this command's rank
#: and their number; a different count means it cannot tell, and nothing is
#: killed). Skipped: this script's own session, the executor's, sftp-server, and
#: other kill scripts (their command line holds ECSHELL_KILL). An empty search is
#: tried again for half a second: the shell may not have started when a Ctrl-C comes.
KILL_SCRIPT = r"""ECSHELL_KILL=1; exec 2>/dev/null
t={token}; rank={rank}; total={total}; skip={skip}; why=
sessions() {{
  for d in /proc/[0-9]*; do q=${{d#/proc/}}
    read -r s < "$d/stat" || continue; set -- ${{s##*")"}}
    [ "$2" = "$up" ] && [ "$4" = "$q" ] && [ "$q" != "$me" ] && [ "$q" != "$skip" ] || continue
    read -r c < "$d/comm"; case $c in sftp-server|sshd|sshd-session) continue; esac
    grep -qs ECSHELL_KILL "$d/cmdline" && continue
    echo "${{20}} $q"
  done | sort -n -k1,1 -k2,2 | cut -d' ' -f2
}}
find() {{
  p=$(grep -ls -e "ECSHELL_RUN=$t" /proc/[0-9]*/environ | cut -d/ -f3 | sort -u)
  [ -n "$p" ] || [ "$rank" -lt 0 ] && return
  read -r s < /proc/$$/stat; set -- ${{s##*")"}}; me=$4
  read -r s < "/proc/$me/stat"; set -- ${{s##*")"}}; up=$2
  set -- $(sessions)
  if [ $# -ne "$total" ]; then why=unsure; return; fi
  why=; shift "$rank"; l=$1
  p=$(for d in /proc/[0-9]*; do read -r s < "$d/stat" || continue; set -- ${{s##*")"}}
    [ "$4" = "$l" ] && echo "${{d#/proc/}}"; done)
}}
n=0; while :; do find; [ -n "$p" ] || [ $n -ge 5 ] && break; n=$((n+1)); sleep 0.1; done
for q in $p; do kill -TERM -$q $q; done
(sleep 1; for q in $p; do kill -KILL -$q $q; done) >/dev/null 2>&1 </dev/null &
echo $p $why
"""


def kill_run(connection, process: ChannelProcess) -> str:
    """TERM the processes of ``process`` (and their process groups), KILL them a second later.

    Returns a note for the result. One kill at a time per connection, so that
    no other kill script is among the sessions counted (see :data:`KILL_SCRIPT`).
    """
    with connection.kill_lock:
        with connection.commands_lock:
            running = [p for p in connection.commands if not p.channel.exit_status_ready()]
        rank = running.index(process) if process in running else -1
        executor = peek(connection)
        skip = executor.pid if executor is not None and executor.pid else 0
        script = KILL_SCRIPT.format(token=process.token, rank=rank, total=len(running), skip=int(skip))
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
