"""Which transport carries a broadcast to each machine.

In order: the ``transport=`` of the call (``run("uptime", transport="tree")``);
the machine's fabric (``Ec2Fabric(transport="ssm")``); the tree, for a
machine that ``c.EcShell.gateways`` or ``c.EcShell.topology_file`` routes
through gateways; else ``direct`` (the controller's own pooled SSH). Only a
plain shell command can go through a fan-out transport: files, markers,
readiness checks and diagnostics always go direct.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from ..errors import ArgumentError

if TYPE_CHECKING:
    from ..machine import Machine

DIRECT, TREE, SSM = "direct", "tree", "ssm"
TRANSPORTS = (DIRECT, TREE, SSM)


def check_transport(transport: Optional[str]) -> Optional[str]:
    """``transport`` if it names one (or is None); else ArgumentError."""
    if transport is not None and transport not in TRANSPORTS:
        raise ArgumentError(f"transport is one of {', '.join(map(repr, TRANSPORTS))}, not {transport!r}; "
                            "e.g. run('uptime', transport='direct')")
    return transport


def route(machine: Machine, command: Any, transport: Optional[str], tree: set[str]) -> str:
    """The transport name for ``machine``: ``direct``, ``tree`` or ``ssm``; ``tree``: the names the tree routes."""
    if not getattr(command, "via_fanout", False):
        if transport not in (None, DIRECT):
            raise ArgumentError(f"{command!r} goes over the controller's own SSH connections only; "
                                f"transport={transport!r} carries plain shell commands (run, %on)")
        return DIRECT
    if transport is not None:
        return transport
    if getattr(machine.fabric, "transport", DIRECT) == SSM:
        return SSM
    if machine.name in tree:
        return TREE
    return DIRECT
