"""Cloudlet: one user's sandbox on a host machine, usable wherever a Machine is.

>>> alice = cluster.cloudlet("alice")             # doctest: +SKIP
>>> alice.run("uname -n").output                  # doctest: +SKIP
'alice\\n'
>>> alice.put("notes.txt", "~/notes.txt"); alice.mark("configured")   # doctest: +SKIP
>>> alice.save(); alice.move(cluster.machine("node-2")); alice.release()   # doctest: +SKIP

A Cloudlet is a :class:`~ecshell.machine.Machine` named ``cloudlet:<user>``
that reaches its host over the host's pooled connection and runs every
shell string inside the sandbox (:func:`~ecshell.cloudlets.runtime.enter_line`);
files go in and out through the sandbox's own shell, since SFTP on the
host cannot see into its mount namespace. Markers set on it live inside the
sandbox (in its state layer), so they travel with it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..machine import Machine
from ..states import MachineState
from .runtime import check_user, enter_line

if TYPE_CHECKING:
    from ..ssh.endpoint import Endpoint
    from .manager import Cloudlets
    from .stores import Saved

#: Names of cloudlets as machines: ``cloudlet:alice``.
PREFIX = "cloudlet:"


class Cloudlet(Machine):
    """``user``'s sandbox on the machine ``host``; ``.save()``, ``.release()``, ``.move(machine)``.

    ``owner`` is the user's name, ``machine`` the host Machine; as a Machine
    it is named ``cloudlet:<owner>``, reached at its host's address, and
    logged into as root (root inside the sandbox only).

    ``started_at`` is when the sandbox started on its host (the host's
    clock); ``notice`` says what placing it found (restored from a save,
    changes lost with a host that is gone), or is empty.
    """

    files_over_sftp = False

    def __init__(self, user: str, host: Machine, manager: Cloudlets, started_at: float | None = None,
                 notice: str = "") -> None:
        #: Whose it is (the user name); ``machine`` is the host machine it runs on.
        self.owner = check_user(user)
        self.machine = host
        self.manager = manager
        self.started_at = started_at
        self.notice = notice
        prototype = dataclasses.replace(host.prototype, name=PREFIX + user, id=f"{host.id}/{PREFIX}{user}",
                                        tags={**host.tags, "cloudlet": user, "host": host.name},
                                        launched_at=started_at)
        super().__init__(prototype, host.fabric, host.engine)

    @property
    def state(self) -> MachineState:
        """Its host's state (a cloudlet runs while its host does)."""
        return self.machine.state

    @state.setter
    def state(self, value: MachineState | str) -> None:
        pass  # set by Machine.__init__; the host's is the one that counts

    @property
    def endpoint(self) -> Endpoint:
        return self.machine.endpoint

    def close(self) -> None:
        """Nothing to close: the pooled connection is its host's."""

    def shell_line(self, command: str) -> str:
        return enter_line(self.owner, command, self.engine.settings)

    # -- what a cloudlet adds to a machine -------------------------------------

    def save(self) -> Saved:
        """Write the state layer to the store now; the :class:`~ecshell.cloudlets.stores.Saved` record."""
        return self.manager.save(self)

    def release(self) -> Saved:
        """Save, stop the sandbox and free its slot on the host; the Saved record."""
        return self.manager.release(self)

    def move(self, machine: Machine) -> Cloudlet:
        """Save, stop, and start it on ``machine`` with its state; the Cloudlet there."""
        return self.manager.move(self, machine)

    def __repr__(self) -> str:
        return f"<Cloudlet {self.owner} on {self.machine.name} ({self.machine.host}:{self.machine.port})>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))
