"""StaticFabric: machines that already exist.

>>> from ecshell import Cluster, StaticFabric
>>> hosts = Cluster(StaticFabric(["h0", "h1", "ops@127.0.0.1:2222"],
...                              ssh_config="~/.ssh/config"))      # doctest: +SKIP

Each entry is a name resolved through the ssh_config file (HostName, User,
Port, ...) by OpenSSH's own ``ssh -G``, the way ``ssh NAME`` would, or an
explicit ``user@host:port`` (given to ssh as ``-l``/``-p``, so that ``Match
user`` sees it). Every name is resolved when the fabric first lists its
machines, the ``ssh -G`` calls side by side; a name ssh cannot resolve (a
config ssh refuses) still becomes a machine, whose every command reports
``unreachable`` with ssh's own message. Launching is not available;
everything else is. Host keys follow the operator's known_hosts and
StrictHostKeyChecking.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from traitlets import List, Unicode

from ..ssh.endpoint import parse_target
from ..ssh.options import lookup_many
from ..errors import ArgumentError
from .base import RUNNING, Fabric, Prototype

if TYPE_CHECKING:
    from ..states import MachineState


class StaticFabric(Fabric):
    """A fixed list of existing hosts."""

    kind = "static"

    hosts = List(Unicode(), help="""Hosts: names from ssh_config, or user@host:port.
        Each becomes a machine named after the entry (without user and port).""").tag(config=True)

    ssh_config = Unicode("~/.ssh/config", help="""ssh_config file the names are resolved
        through, by OpenSSH's `ssh -G` (your own ~/.ssh/config: as `ssh NAME` reads it,
        with /etc/ssh/ssh_config; another file: `ssh -F FILE`). Empty: none.""").tag(config=True)

    def __init__(self, hosts: str | Iterable[str] | None = None, **kwargs: Any) -> None:
        if hosts is not None:
            if isinstance(hosts, str):
                hosts = hosts.replace(",", " ").split()
            kwargs["hosts"] = list(hosts)
        super().__init__(**kwargs)
        self._prototypes: list[Prototype] | None = None

    def _build(self) -> list[Prototype]:
        prototypes: list[Prototype] = []
        seen: set[tuple[str, int | None]] = set()
        targets = []
        for entry in self.hosts:
            try:
                targets.append(parse_target(entry))
            except ValueError:
                raise ArgumentError(f"cannot read host {entry!r}: write a name from ssh_config, "
                                    "or user@host:port like ops@10.0.0.5:2222") from None
        answers = lookup_many([(alias, user, port) for user, alias, port in targets], self.ssh_config)
        for entry, (user, alias, port), options in zip(self.hosts, targets, answers):
            # A name ssh refused keeps its own name and port here; connecting reports why.
            host = options.get("hostname") if not isinstance(options, ValueError) else None
            resolved_port = options.get("port") if not isinstance(options, ValueError) else None
            name = alias if (alias, port) not in seen and alias not in {p.name for p in prototypes} \
                else f"{alias}-{port}"
            seen.add((alias, port))
            prototypes.append(Prototype(
                id=entry, name=name, host=host or alias,
                port=int(port or resolved_port or 22),
                # Only a user the entry names: ssh_config's User is ssh's to apply (Match user sees -l).
                user=user, alias=alias, state=RUNNING,
                ssh_config=self.ssh_config,
            ))
        return prototypes

    def discover(self) -> list[Prototype]:
        if self._prototypes is None:
            self._prototypes = self._build()
        return list(self._prototypes)

    def states(self, ids: Sequence[str]) -> dict[str, MachineState]:
        # An existing host is assumed up; the SSH no-op of the readiness check tells.
        return {i: RUNNING for i in ids}
