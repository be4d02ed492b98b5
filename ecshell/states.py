"""The states a machine goes through, one enum for fabrics, the cluster and the shell.

A fabric reports ``pending``, ``running``, ``stopped`` or ``terminated``;
the cluster adds what only SSH can tell: ``ready`` (a no-op over SSH
worked) and ``failed-init`` (it never did before the deadline).

>>> MachineState.READY == "ready", MachineState.READY.reachable
(True, True)
>>> MachineState.READY.after("running")     # a fabric's "running" does not undo "ready"
<MachineState.READY: 'ready'>
"""

import enum


class MachineState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    READY = "ready"
    FAILED_INIT = "failed-init"
    STOPPED = "stopped"
    TERMINATED = "terminated"

    @property
    def reachable(self) -> bool:
        """Running as far as the fabric knows, so worth an SSH connection."""
        return self in _REACHABLE

    @property
    def billed(self) -> bool:
        """Started and not stopped: a machine in this state costs money."""
        return self in _BILLED

    def after(self, reported: str) -> "MachineState":
        """The state once a fabric reports ``reported``: its ``running`` keeps what SSH found out."""
        reported = MachineState(reported)
        if reported is MachineState.RUNNING and self in (MachineState.READY, MachineState.FAILED_INIT):
            return self
        return reported


_REACHABLE = frozenset({MachineState.RUNNING, MachineState.READY})
_BILLED = frozenset({MachineState.PENDING, MachineState.RUNNING, MachineState.READY, MachineState.FAILED_INIT})
