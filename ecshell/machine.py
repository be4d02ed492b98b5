"""Machine: one reachable host, and how to get its pooled SSH connection.

A Machine knows nothing about clouds: it is built from a fabric's
Prototype, and the fabric is only named, never asked, from here.
"""

import threading
import time

from . import diagnostics, state
from .commands import Shell
from .errors import ConnectError, ErrorKind
from .machineset import MachineSet
from .states import MachineState


class Machine:
    """One host: ``.name .id .host .port .user .fabric .tags .state``."""

    def __init__(self, prototype, fabric, engine):
        self.prototype = prototype
        self.fabric = fabric
        self.engine = engine
        self.state = prototype.state
        self._endpoint = None
        self._endpoint_lock = threading.Lock()
        #: What the machine last told us of its own state (markers, diagnostics): a cache only.
        self.facts = {}

    # -- identity ----------------------------------------------------------

    name = property(lambda self: self.prototype.name)
    id = property(lambda self: self.prototype.id)
    host = property(lambda self: self.prototype.host)
    port = property(lambda self: self.prototype.port)
    tags = property(lambda self: self.prototype.tags)

    @property
    def state(self) -> MachineState:
        """What the fabric reported, or what SSH found out since (``ready``, ``failed-init``)."""
        return self._state

    @state.setter
    def state(self, value):
        self._state = MachineState(value)

    @property
    def user(self):
        if self.prototype.user:
            return self.prototype.user
        try:
            return self.endpoint.user
        except ConnectError:
            return None

    @property
    def launched_at(self):
        return self.prototype.launched_at

    @property
    def uptime(self):
        """Seconds since the fabric started the machine, if it says."""
        return time.time() - self.launched_at if self.launched_at else None

    def update(self, prototype):
        """Take a fresher prototype from the fabric (state, address, tags)."""
        if (prototype.host, prototype.port, prototype.host_keys) != (
                self.prototype.host, self.prototype.port, self.prototype.host_keys):
            self._endpoint = None
        self.prototype = prototype
        self.state = self.state.after(prototype.state)

    # -- connection ----------------------------------------------------------

    @property
    def endpoint(self):
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

    def connection(self):
        """The pooled, authenticated connection (opened now if there is none)."""
        return self.engine.pool.get(self.endpoint)

    def close(self):
        """Close this machine's pooled connection."""
        if self._endpoint is not None:
            self.engine.pool.discard(self._endpoint)

    # -- one-machine conveniences -------------------------------------------

    def run(self, command, timeout=None, input=None, pty=False):
        """Run a shell command here; the Result (never raises for the host's failure)."""
        return self.execute(Shell(command, timeout=timeout, input=input, pty=pty))

    def execute(self, command):
        """Run a Command here, through the broadcast engine (so Ctrl-C kills it remotely)."""
        return self.engine.broadcast([self], command)[self.name]

    # -- state that lives on the machine (ecshell.state, ecshell.diagnostics) ---

    def mark(self, *names, note=""):
        """Set markers here (one round trip); the Result."""
        return state.mark(MachineSet([self]), *names, note=note)[self.name]

    def unmark(self, *names):
        return state.unmark(MachineSet([self]), *names)[self.name]

    def markers(self):
        """``{marker: Marker}`` read from the machine now; Marker is the set-at time, with ``.by``."""
        return state.machine_markers(self)

    def lock(self, name, timeout=30.0, note=""):
        """``with machine.lock("deploy", timeout=30):`` a marker created atomically, as a lock."""
        return state.Lock(MachineSet([self]), name, timeout=timeout, note=note)

    def locks(self):
        """``{lock name: Marker}``: the locks held here now, and by whom."""
        return {k[len(state.LOCK_PREFIX):]: v for k, v in self.markers().items() if k.startswith(state.LOCK_PREFIX)}

    def break_lock(self, name):
        """Remove lock ``name`` whoever holds it (logged); the holder's Marker, or None if it was free."""
        return state.break_lock(self, name)

    def diagnose(self, *names, timeout=None):
        """Run diagnostics here in one round trip: ``{name: Diagnosis}``."""
        found = diagnostics.diagnose(MachineSet([self]), *names, timeout=timeout)
        if found[self.name] is None:
            result = found.results[self.name]
            raise state.StateError(f"could not diagnose {self.name}: {result.status} {result.message}".rstrip(),
                                   result)
        return found[self.name]

    def apply(self, recipe):
        """Run a recipe (a list of Commands) here, stopping at the first failure."""
        return MachineSet([self]).apply(recipe)

    def __repr__(self):
        return f"<Machine {self.name} {self.id} {self.user or ''}@{self.host}:{self.port} {self.state}>"

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))
