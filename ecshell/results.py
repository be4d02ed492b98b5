"""What came back from a broadcast: one Result per machine, a ResultSet of them.

>>> rs = web.run("cat /etc/hostname")          # doctest: +SKIP
>>> rs.ok, rs.failed                           # doctest: +SKIP
>>> for output, machines in rs.groups():       # doctest: +SKIP
...     print(machines, output)

A Result never raises for the host's own failure: ``error`` is ``None`` or
one :class:`ErrorKind`, and ``ok`` is true only when it is ``None``.
"""

from collections.abc import Mapping

from .errors import ErrorKind
from .hostset import fold
from .machineset import MachineSet
from .output import decode

#: What :meth:`ResultSet.groups` can fold by.
FOLDS = ("output", "output+status")


class Result:
    """One machine's answer: exact output bytes, exit code, and the error kind if any."""

    __slots__ = (
        "machine", "command", "exit_code", "error", "message", "duration",
        "reconnected", "detail", "_buffer",
    )

    def __init__(self, machine, command, buffer, exit_code=None, error=None,
                 message="", duration=0.0, reconnected=False, detail=None):
        self.machine = machine
        self.command = command
        self._buffer = buffer
        self.exit_code = exit_code
        self.error = ErrorKind(error) if error is not None else None
        self.message = message
        self.duration = duration
        self.reconnected = reconnected
        self.detail = detail or {}

    @property
    def ok(self):
        return self.error is None

    @property
    def failed(self):
        return self.error is not None

    @property
    def name(self):
        return self.machine.name

    @property
    def output_bytes(self):
        """Combined stdout+stderr, exactly as the machine sent it."""
        return self._buffer.getvalue()

    @property
    def output(self):
        """The output decoded for reading; invalid UTF-8 shows as U+FFFD."""
        return decode(self._buffer.getvalue())

    @property
    def output_size(self):
        return len(self._buffer)

    def output_head(self, limit):
        """The first ``limit`` bytes of the output, without reading a spilled file whole."""
        return self._buffer.head(limit)

    def replace_output(self, buffer):
        """Put ``buffer`` in place of the output: for a command that turns what the machine sent into text."""
        self._buffer = buffer

    @property
    def output_path(self):
        """The file holding the output when it outgrew the memory bound, else None."""
        return self._buffer.path

    @property
    def status(self):
        """A short label: ``ok``, ``exit 3``, ``timeout``, ..."""
        if self.error is None:
            return "ok"
        if self.error is ErrorKind.EXIT:
            if self.exit_code is None:
                return "exit (signal)" if not self.message else f"exit ({self.message})"
            return f"exit {self.exit_code}"
        return self.error.value

    def __bool__(self):
        return self.ok

    def __repr__(self):
        size = len(self._buffer)
        extra = f" {self.message!r}" if self.message and self.error not in (None, ErrorKind.EXIT) else ""
        return (f"<Result {self.machine.name} {self.status}{extra} "
                f"{size} bytes {self.duration:.3f}s>")

    def _repr_pretty_(self, p, cycle):
        from .shell.display import render_result
        p.text(render_result(self))


class Group(tuple):
    """One fold of a ResultSet: unpacks as ``(output, machines)``; see :meth:`ResultSet.groups`."""

    def __new__(cls, results):
        group = super().__new__(cls, (results[0].output, MachineSet((r.machine for r in results), sort=True)))
        group.results = results
        return group

    output = property(lambda self: self[0])
    machines = property(lambda self: self[1])
    status = property(lambda self: self.results[0].status)
    message = property(lambda self: self.results[0].message)

    def __repr__(self):
        return f"<Group {self.machines} ({len(self.results)}) {self.status}>"


class ResultSet(Mapping):
    """Results by machine name, in machine order; ``ok`` and ``failed`` computed once."""

    def __init__(self, results, command=None, interrupted=False):
        self._results = {r.machine.name: r for r in results}
        self.command = command
        self.interrupted = interrupted
        self._ok = None
        self._failed = None

    def __getitem__(self, key):
        if isinstance(key, int):
            return list(self._results.values())[key]
        name = getattr(key, "name", key)
        try:
            return self._results[name]
        except KeyError:
            raise KeyError(f"no result for {name!r}; results are for {fold(self._results) or '(none)'}") from None

    def __iter__(self):
        return iter(self._results)

    def __len__(self):
        return len(self._results)

    def results(self):
        return list(self._results.values())

    def _split(self):
        ok = [r for r in self._results.values() if r.ok]
        bad = [r for r in self._results.values() if not r.ok]
        self._ok = ResultSet(ok, self.command)
        self._failed = ResultSet(bad, self.command, self.interrupted)

    @property
    def ok(self):
        if self._ok is None:
            self._split()
        return self._ok

    @property
    def failed(self):
        if self._failed is None:
            self._split()
        return self._failed

    @property
    def all_ok(self):
        return all(r.ok for r in self._results.values())

    @property
    def machines(self):
        return MachineSet(r.machine for r in self._results.values())

    def groups(self, by="output"):
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
        folded = {}
        for r in self._results.values():
            key = r._buffer.fingerprint()
            if by == "output+status":
                key = (key, r.status, r.message if r.error not in (None, ErrorKind.EXIT) else None)
            folded.setdefault(key, []).append(r)
        ordered = sorted(folded.values(), key=lambda rs: (-len(rs), not rs[0].ok))
        return [Group(members) for members in ordered]

    def by_error(self):
        """``{ErrorKind: ResultSet}`` for the failed results."""
        kinds = {}
        for r in self._results.values():
            if r.error is not None:
                kinds.setdefault(r.error, []).append(r)
        return {k: ResultSet(v, self.command) for k, v in kinds.items()}

    def __repr__(self):
        ok = len(self.ok)
        bad = len(self.failed)
        cut = " interrupted" if self.interrupted else ""
        return f"<ResultSet {fold(self._results)} ok={ok} failed={bad}{cut}>"

    def _repr_pretty_(self, p, cycle):
        from .shell.display import render_resultset
        p.text(render_resultset(self))

    def _repr_html_(self):
        from .shell.display import render_resultset_html
        return render_resultset_html(self)
