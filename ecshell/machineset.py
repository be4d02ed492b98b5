"""MachineSet: a selection of machines, and broadcasts over it.

>>> web = cluster["web-*"]                           # doctest: +SKIP
>>> web["web-[0-1]"], web.select(role="web")         # doctest: +SKIP
>>> rs = web.run("uptime", timeout=10)               # doctest: +SKIP
>>> web.put("app.tar.gz", "/srv/app.tar.gz")         # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

from . import arguments, diagnostics, state
from .commands import Command, Get, Put, Shell, as_command
from .errors import ArgumentError, SelectionError
from .fanout.routes import check_transport
from .hostset import fold, match, natural_key

if TYPE_CHECKING:
    from .commands import CommandLine
    from .diagnostics import Diagnosis
    from .engine import Engine
    from .machine import Machine
    from .results import Result, ResultSet
    from .state import Lock, Marker, PerMachine
    from .states import MachineState


class MachineSet(Sequence["Machine"]):
    """An ordered set of machines (no duplicates), selectable and broadcastable."""

    def __init__(self, machines: Iterable[Machine] = (), sort: bool = False) -> None:
        unique: dict[str, Machine] = {}
        for machine in machines:
            unique.setdefault(machine.name, machine)
        items = list(unique.values())
        if sort:
            items.sort(key=lambda m: natural_key(m.name))
        self._machines = items

    @classmethod
    def of(cls, machines: Machine | Iterable[Machine]) -> MachineSet:
        """``machines`` as a MachineSet: a MachineSet, any iterable of machines, or one Machine."""
        if isinstance(machines, MachineSet):
            return machines
        return cls(machines) if isinstance(machines, Iterable) else cls([machines])

    # -- sequence and set behaviour -------------------------------------------

    def __len__(self) -> int:
        return len(self._machines)

    def __iter__(self) -> Iterator[Machine]:
        return iter(self._machines)

    @overload
    def __getitem__(self, key: int) -> Machine: ...
    @overload
    def __getitem__(self, key: slice | str) -> MachineSet: ...

    def __getitem__(self, key: int | slice | str) -> Machine | MachineSet:
        if isinstance(key, int):
            return self._machines[key]
        if isinstance(key, slice):
            return MachineSet(self._machines[key])
        if isinstance(key, str):
            return self.pattern(key)
        raise ArgumentError(f"select machines with a name pattern like 'web-*' or 'web-[0-3]', not {key!r}")

    def __contains__(self, item: object) -> bool:
        name = getattr(item, "name", item)
        return any(m.name == name for m in self._machines)

    def __or__(self, other: Iterable[Machine]) -> MachineSet:
        return MachineSet(list(self) + list(other), sort=True)

    def __and__(self, other: Iterable[Machine]) -> MachineSet:
        names = set(MachineSet(other).names)
        return MachineSet(m for m in self if m.name in names)

    def __sub__(self, other: Iterable[Machine]) -> MachineSet:
        names = set(MachineSet(other).names)
        return MachineSet(m for m in self if m.name not in names)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MachineSet):
            return self.names == other.names
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self._machines]

    # -- selection ----------------------------------------------------------

    def pattern(self, pattern: str) -> MachineSet:
        """Machines whose names match a glob (``web-*``) or a range (``web-[0-3]``)."""
        if not self._machines:
            raise SelectionError(f"no machines to select {pattern!r} from; launch some first, e.g. cluster.launch(3)")
        wanted = set(match(self.names, pattern))
        return MachineSet(m for m in self._machines if m.name in wanted)

    def select(self, **tags: Any) -> MachineSet:
        """Machines whose tags match every ``key=value`` given (values may be globs).

        ``marker="configured"`` selects by a marker read from the machines now
        (a glob; ``"!name"`` for machines without it).
        """
        if "marker" in tags:
            return MachineSet(state.select_marker(self, tags.pop("marker"))).select(**tags)
        if not tags:
            return MachineSet(self._machines)
        chosen = [m for m in self._machines
                  if all(k in m.tags and fnmatch.fnmatchcase(str(m.tags[k]), str(v)) for k, v in tags.items())]
        if not chosen:
            known = sorted({f"{k}={v}" for m in self._machines for k, v in m.tags.items()})
            wanted = ", ".join(f"{k}={v}" for k, v in tags.items())
            raise SelectionError(f"no machine has {wanted}; tags in use: {', '.join(known) or '(none)'}")
        return MachineSet(chosen)

    def in_state(self, *states: MachineState | str) -> MachineSet:
        return MachineSet(m for m in self._machines if m.state in states)

    def reachable(self) -> MachineSet:
        """The machines running as far as their fabric knows (``running`` or ``ready``)."""
        return MachineSet(m for m in self._machines if m.state.reachable)

    # -- broadcast ------------------------------------------------------------

    def _engine(self) -> Engine:
        if not self._machines:
            raise SelectionError("the selection is empty: nothing to run on. "
                                 "List machines with cluster.machines, or launch some with cluster.launch(3)")
        return self._machines[0].engine

    def execute(self, command: Command, on_output: Callable[[Machine, bytes], object] | None = None,
                on_result: Callable[[Result], object] | None = None,
                total_timeout: float | None = None, transport: str | None = None) -> ResultSet:
        """Run a Command object on every machine; a ResultSet.

        ``transport``: ``"direct"``, ``"tree"`` or ``"ssm"`` (None: each machine's own; see
        :mod:`ecshell.fanout.routes`).
        """
        total_timeout = arguments.seconds("total_timeout", total_timeout)
        return self._engine().broadcast(self._machines, command, on_output=on_output,
                                        on_result=on_result, total_timeout=total_timeout,
                                        transport=check_transport(transport))

    def run(self, command: CommandLine, timeout: float | None = None, input: bytes | str | None = None,
            pty: bool = False, on_output: Callable[[Machine, bytes], object] | None = None,
            on_result: Callable[[Result], object] | None = None,
            total_timeout: float | None = None, transport: str | None = None) -> ResultSet:
        """Run a shell command on every machine at once; a ResultSet.

        ``timeout`` is per host (seconds, from when a worker takes the host),
        ``total_timeout`` for the whole broadcast. ``on_output(machine, bytes)``
        is called from worker threads as output arrives; ``on_result(result)``
        as each host finishes. ``input`` (bytes, or str sent as UTF-8) is the
        command's stdin; without it stdin is closed at once. ``transport``
        (``"direct"``, ``"tree"``, ``"ssm"``) overrides what carries it.
        """
        return self.execute(Shell(command, timeout=timeout, input=input, pty=pty),  # Shell checks both
                            on_output=on_output, on_result=on_result, total_timeout=total_timeout,
                            transport=transport)

    def put(self, local: str, remote: str, mode: int | None = None) -> ResultSet:
        """Copy a local file to every machine (SFTP on the pooled connections).

        ``mode``: permission bits to set (an int up to 0o7777, e.g. 0o755); None
        leaves the server's default.
        """
        return self.execute(Put(local, remote, mode))

    def get(self, remote: str, local: str) -> ResultSet:
        """Copy ``remote`` from every machine to ``local/<machine name>/``."""
        return self.execute(Get(remote, local))

    # -- state that lives on the machines (ecshell.state, ecshell.diagnostics) ---

    def mark(self, *names: state.Names, note: str = "") -> ResultSet:
        """Set markers on every machine, one round trip each; a ResultSet."""
        return state.mark(self, *names, note=note)

    def unmark(self, *names: state.Names) -> ResultSet:
        return state.unmark(self, *names)

    def markers(self) -> PerMachine[dict[str, Marker]]:
        """``{machine name: {marker: Marker}}`` read now; None for a machine that did not answer."""
        return state.markers(self)

    def lock(self, name: str, timeout: float | None = 30.0, note: str = "") -> Lock:
        """``with web.lock("deploy"):`` the lock on every machine, all or nothing."""
        return state.Lock(self, name, timeout=timeout, note=note)

    def locks(self) -> PerMachine[dict[str, Marker]]:
        """``{machine name: {lock: Marker}}``: the locks held now, and by whom."""
        return state.locks(self)

    def diagnose(self, *names: diagnostics.Names, timeout: float | None = None) -> PerMachine[dict[str, Diagnosis]]:
        """Run diagnostics on every machine, one round trip each: ``{machine name: {name: Diagnosis}}``."""
        return diagnostics.diagnose(self, *names, timeout=timeout)

    def apply(self, recipe: Command | str | Iterable[Command | str]) -> RecipeResult:
        """Run ``recipe`` (Commands or shell strings) step by step; a machine that fails a step stops there."""
        if isinstance(recipe, (Command, str)):
            recipe = [recipe]
        steps = [as_command(step) for step in recipe]
        current: MachineSet = self
        done: list[ResultSet] = []
        failed: dict[str, Result] = {}
        for step in steps:
            if not current:
                break
            results = current.execute(step)
            done.append(results)
            for result in results.failed.results():
                failed[result.name] = result
            current = current - results.failed.machines
        return RecipeResult(self, done, failed)

    def close(self) -> None:
        for machine in self._machines:
            machine.close()

    def __repr__(self) -> str:
        return f"<MachineSet {fold(self.names) or '(empty)'} ({len(self)})>"

    def __str__(self) -> str:
        return fold(self.names)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


class RecipeResult:
    """What a recipe did: one ResultSet per step run; ``ok`` machines; ``failed`` {name: Result}."""

    def __init__(self, machines: Iterable[Machine], steps: list[ResultSet], failed: dict[str, Result]) -> None:
        self.steps = steps
        self.failed = failed
        self.ok = MachineSet(m for m in machines if m.name not in failed)

    @property
    def all_ok(self) -> bool:
        return not self.failed

    def __repr__(self) -> str:
        bad = f" failed={fold(self.failed)}" if self.failed else ""
        return f"<RecipeResult steps={len(self.steps)} ok={len(self.ok)}{bad}>"
