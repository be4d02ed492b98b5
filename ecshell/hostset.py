"""Host names: fold a list into ``web-[0-2,5]``, match targets against names.

>>> fold(["web-0", "web-1", "web-2", "web-5", "db-0"])
'db-0,web-[0-2,5]'
>>> match(["web-0", "web-1", "web-10", "db-0"], "web-[0-1]")
['web-0', 'web-1']
>>> match(["web-0", "web-1", "web-10", "db-0"], "web-1*,db-0")
['web-1', 'web-10', 'db-0']

Range syntax is ClusterShell's NodeSet (without its group resolver, so that
``@`` in a name is never looked up in a config file); ``*`` and ``?`` are
globs, applied after the ranges are expanded.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetParseError

from .errors import SelectionError

_GLOB = re.compile(r"[*?]")


def fold(names: Iterable[str]) -> str:
    """The compact form of ``names``: ``web-[0-2,5]``."""
    names = list(names)
    if not names:
        return ""
    try:
        return str(NodeSet.fromlist(names, resolver=RESOLVER_NOGROUP))
    except NodeSetParseError:
        return ",".join(names)


def expand(pattern: str) -> list[str]:
    """The patterns that ``web-[0-2]*,db-0`` stands for: one per range element."""
    pattern = pattern.strip()
    if not pattern:
        raise SelectionError("empty target: give a name, a glob like 'web-*' or a range like 'web-[0-3]'")
    if "[" not in pattern and "]" not in pattern:
        return [p.strip() for p in pattern.split(",") if p.strip()]
    # NodeSet does not know globs: hide them behind a placeholder while it expands.
    hidden = pattern.replace("*", "\x00").replace("?", "\x01")
    try:
        nodes = NodeSet(hidden, resolver=RESOLVER_NOGROUP)
    except NodeSetParseError as exc:
        fragment = getattr(exc, "part", None) or pattern
        raise SelectionError(
            f"bad range in target {pattern!r} near {fragment!r}: "
            "write ranges like 'web-[0-3]' or 'web-[0-3,7]'"
        ) from None
    return [n.replace("\x00", "*").replace("\x01", "?") for n in nodes]


def match(names: Iterable[str], pattern: str) -> list[str]:
    """Names (in their given order) matched by ``pattern``.

    A plain name that does not exist raises; a glob or a range selects the
    machines that exist among those it covers, and raises only if none do.
    """
    names = list(names)
    known = set(names)
    wanted: set[str] = set()
    ranged = "[" in pattern
    for piece in expand(pattern):
        if _GLOB.search(piece):
            wanted.update(fnmatch.filter(names, piece))
        elif piece in known:
            wanted.add(piece)
        elif not ranged:
            raise SelectionError(
                f"no machine named {piece!r}; machines are: {fold(names) or '(none)'}"
            )
    if not wanted:
        raise SelectionError(
            f"target {pattern!r} selects no machine; machines are: {fold(names) or '(none)'}"
        )
    return [n for n in names if n in wanted]


def natural_key(name: str) -> list[int | str]:
    """Sort key that puts web-2 before web-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
