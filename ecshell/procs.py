"""Processes on this machine, read from Linux's /proc: who is whose child, and what each runs.

>>> import os
>>> os.getpid() in descendants(os.getppid(), children_map())
True
>>> cmdline(2**22 + 1)                # above Linux's highest pid: no such process
b''

LocalFabric uses them to stop an sshd together with every session under it,
and to recognise its own sshd by command line before signalling a pid; the
tests and benchmarks use them to find the processes a machine runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping


def cmdline(pid: int) -> bytes:
    """The command line of ``pid`` as bytes, arguments joined by spaces; b"" when there is no such process."""
    # sshd rewrites its process title ("sshd: /usr/sbin/sshd -D -f ... [listener]"),
    # so the arguments may no longer be NUL-separated: compare as one string.
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ")
    except OSError:
        return b""


def children_map() -> dict[int, list[int]]:
    """``{ppid: [pid, ...]}`` for every process, read from /proc once."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(b")") + 2:].split()
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def descendants(pid: int, tree: Mapping[int, Iterable[int]]) -> list[int]:
    """Every pid below ``pid`` in ``tree`` (a :func:`children_map`): children, theirs, and so on."""
    found, stack = [], list(tree.get(pid, ()))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(tree.get(child, ()))
    return found


def with_environment(name: str, value: str) -> list[int]:
    """Pids of the processes whose environment sets ``name=value`` (those this user may read)."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environment = f.read()
        except OSError:
            continue
        if wanted in environment.split(b"\0"):
            found.append(int(entry))
    return found
