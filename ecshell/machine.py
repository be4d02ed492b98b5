"""Machine: one reachable host, and how to get its pooled SSH connection.

A Machine knows nothing about clouds: it is built from a fabric's
Prototype, and the fabric is only named, never asked, from here.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from . import diagnostics, state
from .commands import Get, Put, Shell
from .errors import ConnectError, ErrorKind
from .machineset import MachineSet
from .states import MachineState

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .commands import Command, CommandLine
    from .diagnostics import Diagnosis
    from .diagnostics import Names as DiagnosticNames
    from .engine import Engine
    from .fabrics.base import Fabric, Prototype
    from .machineset import RecipeResult
    from .results import Result
    from .ssh.connection import Connection
    from .ssh.endpoint import Endpoint
    from .state import Lock, Marker, Names


class Machine:
    """One host: ``.name .id .host .port .user .fabric .tags .state``.

    ``name`` is what the operator selects it by, ``id`` the fabric's own id
    for it, ``host``, ``port`` and ``user`` where and as whom SSH logs in,
    ``fabric`` the :class:`~ecshell.fabrics.base.Fabric` that supplied it,
    ``tags`` the fabric's labels (``role``, ...), ``state`` a
    :class:`~ecshell.states.MachineState`. ``name``, ``id``, ``host``,
    ``port``, ``tags`` (and ``user``, when the fabric knows it) are read from
    the fabric's latest :class:`~ecshell.fabrics.base.Prototype` (``prototype``).
    """

    #: Whether files reach it over SFTP (Put, Get); else through its shell (a sandbox SFTP cannot see into).
    files_over_sftp = True

    def __init__(self, prototype: Prototype, fabric: Fabric, engine: Engine) -> None:
        self.prototype = prototype
        self.fabric = fabric
        self.engine = engine
        self.state = prototype.state
        self._endpoint: Endpoint | None = None
        self._endpoint_lock = threading.Lock()
        #: What the machine last told us of its own state (markers, diagnostics): a cache only.
        self.facts: dict[str, Any] = {}

    # -- identity ----------------------------------------------------------

    @property
    def name(self) -> str:
        return self.prototype.name

    @property
    def id(self) -> str:
        return self.prototype.id

    @property
    def host(self) -> str:
        return self.prototype.host

    @property
    def port(self) -> int:
        return self.prototype.port

    @property
    def tags(self) -> dict[str, Any]:
        return self.prototype.tags

    @property
    def state(self) -> MachineState:
        """What the fabric reported, or what SSH found out since (``ready``, ``failed-init``)."""
        return self._state

    @state.setter
    def state(self, value: MachineState | str) -> None:
        self._state = MachineState(value)

    @property
    def user(self) -> str | None:
        """The login user: the fabric's, else what ssh_config says; None if that cannot be read."""
        if self.prototype.user:
            return self.prototype.user
        try:
            return self.endpoint.user
        except ConnectError:
            return None

    @property
    def launched_at(self) -> float | None:
        """When the fabric started the machine (epoch seconds), if it says."""
        return self.prototype.launched_at

    @property
    def uptime(self) -> float | None:
        """Seconds since the fabric started the machine, if it says."""
        return time.time() - self.launched_at if self.launched_at else None

    def update(self, prototype: Prototype) -> None:
        """Take a fresher prototype from the fabric (state, address, tags)."""
        if (prototype.host, prototype.port, prototype.host_keys) != (
                self.prototype.host, self.prototype.port, self.prototype.host_keys):
            self._endpoint = None
        self.prototype = prototype
        self.state = self.state.after(prototype.state)

    # -- connection ----------------------------------------------------------

    @property
    def endpoint(self) -> Endpoint:
        """Where and how to connect, resolved once (ssh_config read here)."""
        if self._endpoint is None:
            from .ssh.endpoint import endpoint_for

            with self._endpoint_lock:
                if self._endpoint is None:
                    try:
                        self._endpoint = endpoint_for(self.prototype, self.engine.settings)
                    except (ValueError, OSError) as exc:
                        raise ConnectError(ErrorKind.UNREACHABLE, f"cannot resolve {self.name}: {exc}") from None
        return self._endpoint

    def connection(self) -> Connection:
        """The pooled, authenticated connection (opened now if there is none)."""
        return self.engine.pool.get(self.endpoint)

    def close(self) -> None:
        """Close this machine's pooled connection."""
        if self._endpoint is not None:
            self.engine.pool.discard(self._endpoint)

    def shell_line(self, command: str) -> str:
        """What to send over SSH so that the shell string ``command`` runs here (a cloudlet wraps it)."""
        return command

    # -- one-machine conveniences -------------------------------------------

    def run(self, command: CommandLine, timeout: float | None = None, input: bytes | str | None = None,
            pty: bool = False) -> Result:
        """Run a shell command here; the Result (never raises for the host's failure)."""
        return self.execute(Shell(command, timeout=timeout, input=input, pty=pty))

    def put(self, local: str, remote: str, mode: int | None = None) -> Result:
        """Copy a local file here (as ``MachineSet.put`` does); the Result."""
        return self.execute(Put(local, remote, mode))

    def get(self, remote: str, local: str) -> Result:
        """Copy ``remote`` from here to ``local/<machine name>/``; the Result."""
        return self.execute(Get(remote, local))

    def execute(self, command: Command) -> Result:
        """Run a Command here, through the broadcast engine (so Ctrl-C kills it remotely)."""
        return self.engine.broadcast([self], command)[self.name]

    # -- state that lives on the machine (ecshell.state, ecshell.diagnostics) ---

    def mark(self, *names: Names, note: str = "") -> Result:
        """Set markers here (one round trip); the Result."""
        return state.mark(MachineSet([self]), *names, note=note)[self.name]

    def unmark(self, *names: Names) -> Result:
        return state.unmark(MachineSet([self]), *names)[self.name]

    def markers(self) -> dict[str, Marker]:
        """``{marker: Marker}`` read from the machine now; Marker is the set-at time, with ``.by``."""
        return state.machine_markers(self)

    def lock(self, name: str, timeout: float | None = 30.0, note: str = "") -> Lock:
        """``with machine.lock("deploy", timeout=30):`` a marker created atomically, as a lock."""
        return state.Lock(MachineSet([self]), name, timeout=timeout, note=note)

    def locks(self) -> dict[str, Marker]:
        """``{lock name: Marker}``: the locks held here now, and by whom."""
        return {k[len(state.LOCK_PREFIX):]: v for k, v in self.markers().items() if k.startswith(state.LOCK_PREFIX)}

    def break_lock(self, name: str) -> Marker | None:
        """Remove lock ``name`` whoever holds it (logged); the holder's Marker, or None if it was free."""
        return state.break_lock(self, name)

    def diagnose(self, *names: DiagnosticNames, timeout: float | None = None) -> dict[str, Diagnosis]:
        """Run diagnostics here in one round trip: ``{name: Diagnosis}``."""
        found = diagnostics.diagnose(MachineSet([self]), *names, timeout=timeout)
        mine = found[self.name]
        if mine is None:
            result = found.results[self.name]
            raise state.StateError(f"could not diagnose {self.name}: {result.status} {result.message}".rstrip(),
                                   result)
        return mine

    def apply(self, recipe: Command | str | Iterable[Command | str]) -> RecipeResult:
        """Run a recipe (a list of Commands) here, stopping at the first failure."""
        return MachineSet([self]).apply(recipe)

    def __repr__(self) -> str:
        return f"<Machine {self.name} {self.id} {self.user or ''}@{self.host}:{self.port} {self.state}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))
