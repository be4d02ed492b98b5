"""What every fabric offers, and the plain data it hands out.

A fabric is a source of machines. It knows how to launch, list, stop and
terminate them and what state it believes they are in; it knows nothing
about SSH sessions. What it hands out is a :class:`Prototype`: plain data
from which the cluster builds a :class:`ecshell.machine.Machine`.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, Optional

from traitlets import Integer, Unicode, validate
from traitlets.config import Configurable

from ..errors import ArgumentError, NotSupported
from ..hostset import check_name
from ..states import MachineState

#: The states a fabric reports; the cluster adds ``ready`` and ``failed-init``.
PENDING, RUNNING, STOPPED, TERMINATED = (MachineState.PENDING, MachineState.RUNNING, MachineState.STOPPED,
                                         MachineState.TERMINATED)


@dataclasses.dataclass
class Prototype:
    """Everything needed to reach one machine, and nothing about how it was made.

    ``id`` is the fabric's own name for the machine (unique in that fabric),
    ``name`` the one the operator selects it by; ``host`` and ``port`` are
    where SSH connects, ``user`` whom it logs in as (None: what ssh_config
    says); ``tags`` are the fabric's labels (``role``, ...) that
    ``select(role="web")`` matches; ``state`` what the fabric believes.
    """

    id: str
    name: str
    host: str
    port: int = 22
    user: Optional[str] = None
    identity_files: list[str] = dataclasses.field(default_factory=list)
    #: Host keys known out of band ("ssh-ed25519 AAAA..."), pinned: only these are accepted.
    host_keys: list[str] = dataclasses.field(default_factory=list)
    tags: dict[str, Any] = dataclasses.field(default_factory=dict)
    state: MachineState = RUNNING
    #: The name this host is looked up by in ssh_config / known_hosts, when it differs from host.
    alias: Optional[str] = None
    proxy_jump: Optional[str] = None
    #: ssh_config file to resolve ``alias`` through, when not the cluster's default.
    ssh_config: Optional[str] = None
    strict_host_key_checking: Optional[str] = None
    known_hosts_files: list[str] = dataclasses.field(default_factory=list)
    identities_only: bool = False
    launched_at: Optional[float] = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


class Fabric(Configurable):
    """Base of the fabrics. Subclasses implement what they support."""

    name = Unicode(help="Name of this fabric in a cluster (shown in %cluster); defaults to its kind.").tag(config=True)

    max_launch = Integer(100, help="""Most machines one launch call starts; a larger
        count is refused before anything starts (launch in several calls, or raise
        this). Number of machines.""").tag(config=True)

    kind = "fabric"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.name:
            self.name = self.kind

    @validate("max_launch")
    def _check_max_launch(self, proposal: Any) -> int:
        if proposal.value < 1:
            raise ArgumentError(f"max_launch must be at least 1, not {proposal.value}; "
                                f"e.g. c.{type(self).__name__}.max_launch = 20")
        return proposal.value

    def check_launch_count(self, count: object) -> int:
        """``count`` if this fabric launches that many in one call; else ArgumentError naming the limit."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ArgumentError(f"count must be a positive whole number, not {count!r}; e.g. cluster.launch(3)")
        if count > self.max_launch:
            cls = type(self).__name__
            raise ArgumentError(
                f"{cls} {self.name!r} launches at most {self.max_launch} machines in one call "
                f"(its max_launch), not {count}: launch fewer, or raise the limit with "
                f"c.{cls}.max_launch = {count} ({cls}(max_launch={count}), "
                f"or cluster.fabrics[{self.name!r}].max_launch = {count})")
        return count

    def launch(self, count: int, name: str, **options: Any) -> list[Prototype]:
        """Start ``count`` machines named ``name-<i>``; return their prototypes."""
        raise NotSupported(f"{type(self).__name__} cannot launch machines; attach a LocalFabric or an Ec2Fabric for that")

    def free_names(self, prefix: str, count: int) -> list[str]:
        """``count`` names ``prefix-<i>`` none of this fabric's machines has yet, lowest ``i`` first."""
        taken = {p.name for p in self.discover()}
        names: list[str] = []
        index = 0
        while len(names) < count:
            candidate = f"{prefix}-{index}"
            index += 1
            if candidate not in taken:
                names.append(check_name(candidate))
        return names

    def discover(self) -> list[Prototype]:
        """Prototypes of every machine this fabric has now (states refreshed)."""
        raise NotImplementedError

    def stop(self, ids: Sequence[str]) -> None:
        raise NotSupported(f"{type(self).__name__} cannot stop machines")

    def start(self, ids: Sequence[str]) -> list[Prototype]:
        raise NotSupported(f"{type(self).__name__} cannot start machines")

    def terminate(self, ids: Sequence[str]) -> None:
        raise NotSupported(f"{type(self).__name__} cannot terminate machines")

    def states(self, ids: Sequence[str]) -> dict[str, MachineState]:
        """``{id: state}`` as the fabric sees it now."""
        return {p.id: p.state for p in self.discover() if p.id in set(ids)}

    def close(self) -> None:
        """Release what the fabric holds (clients, sessions); machines keep running."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
