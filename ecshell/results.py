"""What came back from a broadcast: one Result per machine, a ResultSet of them.

>>> rs = web.run("cat /etc/hostname")          # doctest: +SKIP
>>> rs.ok, rs.failed                           # doctest: +SKIP
>>> for output, machines in rs.groups():       # doctest: +SKIP
...     print(machines, output)

A Result never raises for the host's own failure: ``error`` is ``None`` or
one :class:`ErrorKind`, and ``ok`` is true only when it is ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

from .errors import ErrorKind
from .hostset import fold
from .machineset import MachineSet
from .output import decode

if TYPE_CHECKING:
    from .commands import Command
    from .machine import Machine
    from .output import OutputBuffer

#: What :meth:`ResultSet.groups` can fold by.
FOLDS = ("output", "output+status")


class Result:
    """One machine's answer: exact output bytes, exit code, and the error kind if any.

    Attributes:

    - ``machine``: the :class:`~ecshell.machine.Machine` it came from (``name`` is its name);
    - ``command``: the :class:`~ecshell.commands.Command` that ran there;
    - ``exit_code``: the command's exit status, or None (it did not run, or a signal ended it);
    - ``error``: None for success, else an :class:`ErrorKind` (``exit``, ``timeout``, ...);
    - ``message``: what went wrong, in words (empty for a plain non-zero exit);
    - ``duration``: seconds from the start of this machine's run to its result;
    - ``reconnected``: True when a dead pooled connection was replaced on the way;
    - ``detail``: more, per command (``path`` and ``size`` of a transfer, a state step's ``markers``, ...);
    - ``signal``: the signal that killed the command (``"TERM"``), else None;
    - ``via``: which path ran it: ``channel`` (one SSH channel, as ``ssh host CMD``), ``executor``
      (the login shell, started by the executor), ``shortcut`` (the executor exec'd the program
      itself: no startup files ran), ``sftp`` (a transfer), ``tree`` or ``ssm`` (a fan-out
      transport), or None (it never started).

    Output is read through ``output_bytes`` (exact), ``output`` (decoded
    for reading) and ``output_path`` (the file it spilled to, if it did).
    """

    __slots__ = (
        "machine", "command", "exit_code", "error", "message", "duration",
        "reconnected", "detail", "signal", "via", "_buffer",
    )

    machine: Machine
    command: Command
    exit_code: int | None
    error: ErrorKind | None
    message: str
    duration: float
    reconnected: bool
    detail: dict[str, Any]
    #: The signal that killed the command, as sshd names it (``"TERM"``, ``"KILL"``), else None.
    signal: str | None
    #: Which path ran the command: ``channel``, ``executor``, ``shortcut``, ``sftp``, ``tree``, ``ssm``, or None.
    via: str | None
    _buffer: OutputBuffer

    def __init__(self, machine: Machine, command: Command, buffer: OutputBuffer, exit_code: int | None = None,
                 error: ErrorKind | str | None = None, message: str = "", duration: float = 0.0,
                 reconnected: bool = False, detail: dict[str, Any] | None = None,
                 signal: str | None = None, via: str | None = None) -> None:
        self.machine = machine
        self.command = command
        self._buffer = buffer
        self.exit_code = exit_code
        self.error = ErrorKind(error) if error is not None else None
        self.message = message
        self.duration = duration
        self.reconnected = reconnected
        self.detail = detail or {}
        self.signal = signal
        self.via = via

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def name(self) -> str:
        return self.machine.name

    @property
    def output_bytes(self) -> bytes:
        """Combined stdout+stderr, exactly as the machine sent it."""
        return self._buffer.getvalue()

    @property
    def output(self) -> str:
        """The output decoded for reading; invalid UTF-8 shows as U+FFFD."""
        return decode(self._buffer.getvalue())

    @property
    def output_size(self) -> int:
        return len(self._buffer)

    def output_head(self, limit: int) -> bytes:
        """The first ``limit`` bytes of the output, without reading a spilled file whole."""
        return self._buffer.head(limit)

    def replace_output(self, buffer: OutputBuffer) -> None:
        """Put ``buffer`` in place of the output: for a command that turns what the machine sent into text."""
        self._buffer = buffer

    @property
    def output_path(self) -> str | None:
        """The file holding the output when it outgrew the memory bound, else None."""
        return self._buffer.path

    @property
    def status(self) -> str:
        """A short label: ``ok``, ``exit 3``, ``timeout``, ..."""
        if self.error is None:
            return "ok"
        if self.error is ErrorKind.EXIT:
            if self.exit_code is None:
                if self.signal:
                    return f"exit (SIG{self.signal})"
                return "exit (signal)" if not self.message else f"exit ({self.message})"
            return f"exit {self.exit_code}"
        return self.error.value

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        size = len(self._buffer)
        extra = f" {self.message!r}" if self.message and self.error not in (None, ErrorKind.EXIT) else ""
        return (f"<Result {self.machine.name} {self.status}{extra} "
                f"{size} bytes {self.duration:.3f}s>")

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        from .shell.display import render_result
        p.text(render_result(self))


class Group(tuple[str, MachineSet]):
    """One fold of a ResultSet: unpacks as ``(output, machines)``; see :meth:`ResultSet.groups`."""

    #: The results folded here, in machine order.
    results: list[Result]

    def __new__(cls, results: list[Result]) -> Group:
        group = super().__new__(cls, (results[0].output, MachineSet((r.machine for r in results), sort=True)))
        group.results = results
        return group

    @property
    def output(self) -> str:
        """The output the machines share, decoded for reading."""
        return self[0]

    @property
    def machines(self) -> MachineSet:
        return self[1]

    @property
    def status(self) -> str:
        """The status of the first result (``ok``, ``exit 3``, ...)."""
        return self.results[0].status

    @property
    def message(self) -> str:
        return self.results[0].message

    def __repr__(self) -> str:
        return f"<Group {self.machines} ({len(self.results)}) {self.status}>"


class ResultSet(Mapping[str, Result]):
    """Results by machine name, in machine order; ``ok`` and ``failed`` computed once.

    ``command`` is the Command that ran; ``interrupted`` is True when Ctrl-C
    stopped the broadcast before every machine finished.
    """

    def __init__(self, results: Iterable[Result], command: Command | None = None,
                 interrupted: bool = False) -> None:
        self._results = {r.machine.name: r for r in results}
        self.command = command
        self.interrupted = interrupted
        self._ok: ResultSet | None = None
        self._failed: ResultSet | None = None

    def __getitem__(self, key: int | str | Machine) -> Result:
        if isinstance(key, int):
            return list(self._results.values())[key]
        name = cast(str, getattr(key, "name", key))
        try:
            return self._results[name]
        except KeyError:
            raise KeyError(f"no result for {name!r}; results are for {fold(self._results) or '(none)'}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def results(self) -> list[Result]:
        return list(self._results.values())

    def _split(self) -> tuple[ResultSet, ResultSet]:
        ok = [r for r in self._results.values() if r.ok]
        bad = [r for r in self._results.values() if not r.ok]
        return ResultSet(ok, self.command), ResultSet(bad, self.command, self.interrupted)

    @property
    def ok(self) -> ResultSet:
        if self._ok is None:
            self._ok, self._failed = self._split()
        return self._ok

    @property
    def failed(self) -> ResultSet:
        if self._failed is None:
            self._ok, self._failed = self._split()
        return self._failed

    @property
    def all_ok(self) -> bool:
        return all(r.ok for r in self._results.values())

    @property
    def machines(self) -> MachineSet:
        return MachineSet(r.machine for r in self._results.values())

    def groups(self, by: str = "output") -> list[Group]:
        """Identical answers folded: ``[(output, MachineSet)]``, largest group first.

        ``by="output"``: the hosts whose output bytes are identical.
        ``by="output+status"``: identical output *and* the same status
        (``ok``, ``exit 3``, ``timeout``, ...; a failure other than ``exit``
        also needs the same message): what the text and HTML views show.

        Each group unpacks as ``(output, machines)`` and also has ``.results``
        (in machine order), ``.status`` and ``.message`` (those of its first
        result). Ties in size list ``ok`` before failures, then by first
        appearance. A spilled output is compared by its digest, never loaded.
        """
        if by not in FOLDS:
            raise ValueError(f"groups(by=...) folds by one of {', '.join(map(repr, FOLDS))}, not {by!r}")
        folded: dict[object, list[Result]] = {}
        for r in self._results.values():
            key: object = r._buffer.fingerprint()
            if by == "output+status":
                key = (key, r.status, r.message if r.error not in (None, ErrorKind.EXIT) else None)
            folded.setdefault(key, []).append(r)
        ordered = sorted(folded.values(), key=lambda rs: (-len(rs), not rs[0].ok))
        return [Group(members) for members in ordered]

    def by_error(self) -> dict[ErrorKind, ResultSet]:
        """``{ErrorKind: ResultSet}`` for the failed results."""
        kinds: dict[ErrorKind, list[Result]] = {}
        for r in self._results.values():
            if r.error is not None:
                kinds.setdefault(r.error, []).append(r)
        return {k: ResultSet(v, self.command) for k, v in kinds.items()}

    def __repr__(self) -> str:
        ok = len(self.ok)
        bad = len(self.failed)
        cut = " interrupted" if self.interrupted else ""
        return f"<ResultSet {fold(self._results)} ok={ok} failed={bad}{cut}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        from .shell.display import render_resultset
        p.text(render_resultset(self))

    def _repr_html_(self) -> str:
        from .shell.htmlview import render_resultset_html
        return render_resultset_html(self)
