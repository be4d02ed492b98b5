"""How a shell command reaches a machine: one interface, two transports.

A :class:`Transport` starts a command on one machine's pooled connection and
returns a :class:`Process`: read its output, wait for its exit, kill it. Two
transports implement it, as ``ssh host CMD`` and as the persistent executor:

- :mod:`ecshell.ssh.channel`: one SSH channel per command;
- :mod:`ecshell.ssh.executor`: frames to an executor started on the machine.

:class:`ecshell.commands.Shell` drives a Process the same way whichever
transport started it; :meth:`ecshell.engine.Attempt.start` chooses the
transport for each machine (``c.EcShell.executor``) and handles what both
share: connecting, replacing a dead connection once, Ctrl-C before the start.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from typing import Any, Callable, NamedTuple, Optional, Protocol

from ..errors import ErrorKind

#: How often a worker blocked on a quiet channel looks at its cancel flag (seconds).
POLL = 0.2
#: Every tracked command runs with this variable set to a fresh token in its environment
#: (never in its text: the shell must see exactly the operator's command), so that its
#: processes can be found on the machine to be killed.
RUN_VARIABLE = "ECSHELL_RUN"
NOT_STARTED = "interrupted before the command started; it was not run"
#: Seconds a kill of a timed-out or interrupted command may take.
KILL_TIMEOUT = 2.0
#: Input up to this size is sent before the output is read; more is fed from a thread.
INLINE_INPUT = 256 * 1024


class Request(NamedTuple):
    """What to start: the shell string (exactly what ``ssh host CMD`` sends), its ECSHELL_RUN token, its stdin, and how."""

    command: str
    token: Optional[str] = None
    input: Optional[bytes] = None
    pty: bool = False
    shortcut: bool = True


class Exit(NamedTuple):
    """How a command ended: its exit code, or None if a signal killed it (``signal``: its name, ``TERM``)."""

    code: Optional[int]
    signal: Optional[str] = None


class Cancel(Protocol):
    """A cancel flag: a ``threading.Event``, or what answers the same (``adapters.timeout``'s deadline)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float, /) -> bool: ...

    def set(self) -> None: ...


class Stopped(Exception):
    """Raised by :func:`next_chunk` and :class:`Process`: ``kind`` is TIMEOUT or INTERRUPTED."""

    def __init__(self, kind: ErrorKind):
        super().__init__(kind.value)
        self.kind = kind


class Silent(Exception):
    """The machine stopped answering on a live connection (a new session got no answer in time): it is dead."""


class Lost(Exception):
    """The command was sent, and then its connection or executor died: it is never re-sent."""


class Broken(Exception):
    """The command could not be sent, so nothing ran.

    With ``reconnect`` the connection itself broke (even if its thread has not
    said so yet): it is replaced, once. Without, only the way to the machine
    changed (an executor that died): the transport is chosen again.
    """

    def __init__(self, message: str, reconnect: bool = True):
        super().__init__(message)
        self.reconnect = reconnect


class Process:
    """A command started on a machine."""

    #: When the command could be sent (``time.monotonic()``): its timeout counts from here.
    sent_at: float
    #: What the Result's ``detail`` gets (the run token, the process group, ...).
    detail: dict
    #: Which path runs it, for the Result's ``via``: ``channel``, ``executor`` or ``shortcut``.
    via: str

    def read(self, deadline: Optional[float], cancel: Cancel) -> bytes:
        """The next output (stdout and stderr combined), ``b""`` at EOF.

        Raises :class:`Stopped` when ``cancel`` is set or ``deadline`` passes
        first, :class:`Lost` when the connection dies under the command.
        """
        raise NotImplementedError

    def wait(self, deadline: Optional[float], cancel: Cancel) -> Exit:
        """The exit, once the output reached EOF; raises like :meth:`read`."""
        raise NotImplementedError

    def kill(self, output: Callable[[bytes], None]) -> str:
        """Kill the command on the machine; a note for the result ("" if nothing could be tried).

        Output that still arrives meanwhile goes to ``output``.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Let go of what the process holds (its channel, its slot on the executor)."""


class Transport:
    """Starts commands over one pooled connection."""

    def start(self, request: Request) -> Process:
        """Start ``request``; raises :class:`Broken` if the connection broke before it was sent."""
        raise NotImplementedError


def next_chunk(channel: Any, deadline: Optional[float] = None, cancel: Optional[Cancel] = None) -> bytes:
    """The next bytes from ``channel`` (``b""`` at EOF), never waiting past ``deadline``.

    ``deadline`` is a ``time.monotonic()`` value or None; ``cancel`` an Event
    looked at every POLL seconds while the channel is quiet. Raises
    :class:`Stopped` when the one is set or the other passes first.
    """
    while True:
        if cancel is not None and cancel.is_set():
            raise Stopped(ErrorKind.INTERRUPTED)
        wait = POLL
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Stopped(ErrorKind.TIMEOUT)
            wait = min(wait, left)
        channel.settimeout(wait)
        try:
            return channel.recv(65536)
        except socket.timeout:
            continue


def stopped(deadline: Optional[float], cancel: Cancel) -> None:
    """Raise :class:`Stopped` if ``cancel`` is set or ``deadline`` has passed."""
    if cancel.is_set():
        raise Stopped(ErrorKind.INTERRUPTED)
    if deadline is not None and time.monotonic() >= deadline:
        raise Stopped(ErrorKind.TIMEOUT)


_KILL_SCRIPT = r"""ECSHELL_KILL=1; exec 2>/dev/null
rank={rank}; total={total}; skip={skip}; why=
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
  p=$(grep -ls -e '{pattern}' /proc/[0-9]*/environ /proc/[0-9]*/cmdline | cut -d/ -f3 | sort -u)
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


def kill_script(token: str, rank: int = -1, total: int = 0, skip: int = 0) -> str:
    """A POSIX sh script that TERMs a command's processes and their process groups, KILLs them a second later.

    It prints the pids it TERMed (none: nothing was left to kill), then
    ``unsure`` if it could not tell the command's session from others.
    First the processes carrying ``ECSHELL_RUN=token``, in their environment
    (set by sshd's env request, the executor, or an ``export`` before the
    command) or their command line (the shell that exported it). The
    pattern's bracket keeps the search from finding itself: its command line
    holds ``=[x]yz...``, which the regex does not match.

    Else, with ``rank`` >= 0 (the channel path, where sshd may not have
    passed the token): the command's session. sshd starts every channel's
    command as a session leader whose parent is the connection's sshd
    process, so the sessions under that parent, ordered by start, are the
    connection's running commands in the order they were sent; ``rank`` is
    this command's place among ``total`` of them. A different count means it
    cannot tell, and nothing is killed. Skipped: the script's own session,
    the executor's (pid ``skip``), sftp-server, and other kill scripts (their
    command line holds ECSHELL_KILL). An empty search is tried again for half
    a second: the shell may not have started when a Ctrl-C comes. Finding
    processes needs Linux's /proc.
    """
    pattern = f"{RUN_VARIABLE}=[{token[0]}]{token[1:]}"
    return _KILL_SCRIPT.format(pattern=pattern, rank=rank, total=total, skip=skip)


def run_token() -> str:
    """A fresh value for ECSHELL_RUN: unique per command run."""
    return secrets.token_hex(8)


def send_input(send: Callable[[bytes], None], finish: Callable[[], None], data: Optional[bytes]) -> None:
    """Give a command its stdin: ``send(data)`` then ``finish()`` (EOF).

    Up to :data:`INLINE_INPUT` bytes go at once; more are fed from a thread,
    so that the command's output is read meanwhile (a command that writes
    before it has read all its input would otherwise wait on us forever).
    Input the command did not wait for is dropped, as ssh drops it: a command
    that already exited has closed its channel, and its exit is the result
    (a connection that went is found by the read that follows).
    """
    def feed() -> None:
        try:
            if data is not None:
                send(data)
            finish()
        except (OSError, EOFError):
            pass  # the command exited without reading everything, or its connection went

    if data is None or len(data) <= INLINE_INPUT:
        feed()
        return
    threading.Thread(target=feed, name="ecshell-stdin", daemon=True).start()
