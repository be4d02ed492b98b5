"""StaticFabric: machines that already exist.

>>> from ecshell import Cluster, StaticFabric
>>> hosts = Cluster(StaticFabric(["h0", "h1", "ops@127.0.0.1:2222"],
...                              ssh_config="~/.ssh/config"))      # doctest: +SKIP

Each entry is a name resolved through the ssh_config file (HostName, User,
Port, ...) the way ``ssh NAME`` would, or an explicit ``user@host:port``.
Launching is not available; everything else is. Host keys follow the
operator's known_hosts and StrictHostKeyChecking.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from traitlets import List, Unicode

from ..ssh.endpoint import parse_target, ssh_config_lookup
from ..errors import ArgumentError
from .base import RUNNING, Fabric, Prototype

if TYPE_CHECKING:
    from ..states import MachineState


class StaticFabric(Fabric):
    """A fixed list of existing hosts."""

    kind = "static"

    hosts = List(Unicode(), help="""Hosts: names from ssh_config, or user@host:port.
        Each becomes a machine named after the entry (without user and port).""").tag(config=True)

    ssh_config = Unicode("~/.ssh/config", help="ssh_config file the names are resolved through.").tag(config=True)

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
        for entry in self.hosts:
            try:
                user, alias, port = parse_target(entry)
            except ValueError:
                raise ArgumentError(f"cannot read host {entry!r}: write a name from ssh_config, "
                                    "or user@host:port like ops@10.0.0.5:2222") from None
            options = ssh_config_lookup(alias, self.ssh_config)
            name = alias if (alias, port) not in seen and alias not in {p.name for p in prototypes} \
                else f"{alias}-{port}"
            seen.add((alias, port))
            prototypes.append(Prototype(
                id=entry, name=name, host=options.get("hostname", alias),
                port=int(port or options.get("port", 22)),
                user=user or options.get("user"), alias=alias, state=RUNNING,
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
