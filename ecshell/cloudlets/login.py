"""An interactive shell on a machine (a cloudlet included) over its pooled SSH connection, on this terminal.

>>> login(cluster.cloudlet("alice"))          # doctest: +SKIP
root@alice:~# exit

The local terminal is put in raw mode while the remote shell runs on a PTY
of its own (sized like the terminal, resized with it), and given back as it
was, whatever happens; the shell's exit status is returned.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from ..engine import Attempt

if TYPE_CHECKING:
    from ..machine import Machine

#: The command a login runs: the login shell of the machine's (or sandbox's) root, else sh.
LOGIN_COMMAND = 'exec "$(getent passwd "$(id -un)" | cut -d: -f7 | grep . || echo /bin/sh)" -l'


def _size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
        return size.columns, size.lines
    except OSError:
        return 80, 24


def login(machine: Machine, command: str = LOGIN_COMMAND, stdin: int | None = None,
          stdout: int | None = None) -> int:
    """Run ``command`` (a login shell) on ``machine`` with a PTY, wired to this terminal; its exit status."""
    import termios
    import tty

    stdin = sys.stdin.fileno() if stdin is None else stdin
    stdout = sys.stdout.fileno() if stdout is None else stdout
    attempt = Attempt(machine, machine.engine, threading.Event())
    _, channel = attempt.open_channel()
    width, height = _size(stdout)
    channel.get_pty(term=os.environ.get("TERM", "xterm"), width=width, height=height)
    channel.exec_command(machine.shell_line(command))
    saved: Any = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    resized = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGWINCH, lambda *_: resized.set())
    try:
        if saved is not None:
            tty.setraw(stdin)
        while True:
            if resized.is_set():
                resized.clear()
                channel.resize_pty(*_size(stdout))
            ready, _, _ = select.select([channel, stdin], [], [], 0.2)
            if channel in ready:
                data = channel.recv(65536)
                if not data:
                    break
                os.write(stdout, data)
            if stdin in ready:
                data = os.read(stdin, 65536)
                if not data:
                    channel.shutdown_write()
                    continue
                channel.sendall(data)
        return channel.recv_exit_status()
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)
        channel.close()
