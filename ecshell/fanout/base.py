"""What a fan-out transport is given, and how it reports each machine's Result.

>>> class Echo(Fanout):                                      # doctest: +SKIP
...     name = "echo"
...     def broadcast(self, machines, command, run):
...         for machine in machines:
...             run.output(machine, command.command.encode() + b"\\n")
...             run.finish(machine, exit_code=0)

The engine calls ``broadcast`` once per broadcast with every machine routed
to the transport, from a thread of its own. The transport reports through
the :class:`FanoutRun`: ``output`` as bytes arrive, ``finish`` once per
machine. It watches ``run.stopped()`` (Ctrl-C, or the broadcast's total
timeout): then it cancels what it started, reports what it knows, and
returns; a machine it never finished is reported ``interrupted`` (or
``timeout``) by the engine. A host's failure is a Result, never an
exception; an exception out of ``broadcast`` (the engine's API refused the
call) becomes that kind of Result for every machine it had not finished.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import ErrorKind
from ..output import OutputBuffer
from ..results import Result

if TYPE_CHECKING:
    from ..commands import Shell
    from ..machine import Machine


def command_line_only(carrier: str, command: Shell) -> Optional[str]:
    """Why ``carrier``, which passes a command line and nothing else, cannot take ``command``; None if it can."""
    if command.input is not None:
        return f"{carrier} gives a command no stdin"
    if command.pty:
        return f"{carrier} gives a command no PTY"
    return None


class Fanout:
    """A transport that carries one broadcast to many machines at once."""

    #: How an operator chooses it (``run(..., transport=name)``).
    name = "fanout"

    def refuses(self, command: Shell) -> Optional[str]:
        """Why ``command`` cannot go this way (stdin, a PTY, ...), or None if it can."""
        return None

    def routed(self, machines: list[Machine]) -> set[str]:
        """The names of ``machines`` whose broadcasts take this transport when the call does not choose."""
        return set()

    def cannot_reach(self, machines: list[Machine]) -> dict[str, str]:
        """``{name: why}`` for those of ``machines`` this transport can never reach (not an EC2 instance, ...)."""
        return {}

    def broadcast(self, machines: list[Machine], command: Shell, run: FanoutRun) -> None:
        raise NotImplementedError


class FanoutRun:
    """One broadcast as a fan-out transport sees it: the clock, the cancel flag, the results so far."""

    def __init__(self, transport: str, command: Shell, settings: Any, cancel: threading.Event,
                 on_output: Optional[Callable[[Machine, bytes], object]] = None,
                 on_result: Optional[Callable[[Result], object]] = None):
        #: The transport's name: every Result's ``via``.
        self.transport = transport
        self.command = command
        self.settings = settings
        self.cancel = cancel
        self.on_output = on_output
        self.on_result = on_result
        self.started = time.monotonic()
        timeout = command.timeout if command.timeout is not None else settings.command_timeout
        #: Seconds each machine's command may run (None: no limit).
        self.timeout: Optional[float] = timeout or None
        self.results: dict[str, Result] = {}
        self._buffers: dict[str, OutputBuffer] = {}
        self._lock = threading.Lock()

    def stopped(self) -> bool:
        """True once Ctrl-C or the total timeout stopped the broadcast."""
        return self.cancel.is_set()

    def _buffer(self, machine: Machine) -> OutputBuffer:
        buffer = self._buffers.get(machine.name)
        if buffer is None:
            buffer = self._buffers[machine.name] = OutputBuffer(self.settings.output_memory_limit,
                                                                self.settings.spill_dir)
        return buffer

    def output(self, machine: Machine, data: bytes) -> None:
        """Output of ``machine`` (stdout and stderr combined), as it arrives."""
        if not data:
            return
        with self._lock:
            self._buffer(machine).write(data)
        if self.on_output is not None:
            self.on_output(machine, data)

    def finish(self, machine: Machine, exit_code: Optional[int] = None, error: Optional[ErrorKind] = None,
               message: str = "", detail: Optional[dict] = None, signal: Optional[str] = None) -> Result:
        """The machine's Result; the first one reported for a machine counts, later ones are ignored."""
        with self._lock:
            if machine.name in self.results:
                return self.results[machine.name]
            buffer = self._buffer(machine)
            buffer.close()
            if error is None and exit_code:
                error = ErrorKind.EXIT
            result = Result(machine, self.command, buffer, exit_code, error, message,
                            time.monotonic() - self.started, False, detail, signal, self.transport)
            self.results[machine.name] = result
        if self.on_result is not None:
            self.on_result(result)
        return result

    def finished(self, machine: Machine) -> bool:
        return machine.name in self.results

    def unfinished(self, machines: list[Machine]) -> list[Machine]:
        return [m for m in machines if m.name not in self.results]
