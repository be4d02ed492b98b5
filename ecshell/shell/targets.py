"""Targets as the shell takes them: ``all``, names, globs, ranges, tags, markers, outcomes.

>>> resolve(cluster, "web-[0-2]")          # doctest: +SKIP
<MachineSet web-[0-2] (3)>
>>> resolve(cluster, "role=db")            # doctest: +SKIP
>>> resolve(cluster, "failed")             # the hosts where the last broadcast failed   # doctest: +SKIP

A target is one word:

- ``all`` -- every machine;
- ``ok`` / ``failed`` -- the machines where the last broadcast in
  ``cluster.history`` succeeded / failed;
- ``key=value[,key=value]`` -- tags (all must match; values may be globs);
  ``marker=NAME`` selects machines carrying that marker;
- anything else -- names, globs and ranges as ClusterShell writes them:
  ``web-0``, ``web-*``, ``web-[0-3,7]``, ``web-1*,db-0``.

Parsing is done here, never with ``eval``; every mistake raises
:class:`~ecshell.errors.SelectionError` naming what does exist.
"""

import re

from ..cloudlets.manager import MARKER_PREFIX as CLOUDLET_MARKER
from ..cloudlets.runtime import USER_NAME
from ..errors import SelectionError
from ..hostset import fold

#: Words with a meaning of their own; a machine cannot be selected by these names.
KEYWORDS = ("all", "ok", "failed")

_TAG = re.compile(r"([A-Za-z_][\w.:-]*)=(.*)")


def parse(text):
    """``(kind, value)`` for a target word: ``("all", None)``, ``("outcome", "failed")``,
    ``("tags", {"role": "db"})``, ``("marker", "configured")`` or ``("pattern", "web-*")``."""
    text = (text or "").strip()
    if not text:
        raise SelectionError("empty target: give 'all', a name, a glob like 'web-*', "
                             "a range like 'web-[0-3]', a tag like 'role=db' or 'failed'")
    if text == "all":
        return "all", None
    if text in ("ok", "failed"):
        return "outcome", text
    if "=" in text and "[" not in text:
        tags = {}
        for piece in text.split(","):
            found = _TAG.fullmatch(piece.strip())
            if not found or not found.group(2):
                raise SelectionError(f"cannot read {piece.strip()!r} in target {text!r}: "
                                     "write tags as key=value, e.g. role=db or role=web,zone=a")
            tags[found.group(1)] = found.group(2)
        if "marker" in tags:
            if len(tags) > 1:
                raise SelectionError(f"target {text!r}: select by marker alone (marker=NAME), "
                                     "then narrow with Python: cluster.select(marker=...).select(role=...)")
            return "marker", tags["marker"]
        return "tags", tags
    return "pattern", text


def last_outcome(cluster, which):
    """The machines (still known) where the last broadcast ended ``ok`` or ``failed``."""
    from ..machineset import MachineSet

    history = getattr(cluster, "history", None)
    if not history:
        raise SelectionError(f"'{which}' means the machines where the last broadcast {which == 'ok' and 'succeeded' or 'failed'}, "
                             "but nothing has been broadcast yet: run %on all CMD first")
    last = history[-1]
    chosen = last.ok if which == "ok" else last.failed
    known = set(cluster.machines.names)
    machines = MachineSet(r.machine for r in chosen.results() if r.machine.name in known)
    if not machines:
        if which == "failed":
            raise SelectionError(f"the last broadcast ({last.command}) failed nowhere: "
                                 f"all {len(last)} machines ok")
        raise SelectionError(f"the last broadcast ({last.command}) succeeded nowhere; "
                             f"it failed on {fold(last.failed)}")
    return machines


def select_marker(machines, marker):
    """Machines carrying ``marker``, through MachineSet's marker support when it exists."""
    if not hasattr(machines, "markers"):
        raise SelectionError(f"cannot select marker={marker}: this ecshell has no machine markers yet "
                             "(MachineSet.markers); select by name, glob, range or tag instead")
    return machines.select(marker=marker)


def resolve(cluster, text):
    """The MachineSet a target word selects in ``cluster``; raises SelectionError if none."""
    kind, value = parse(text)
    machines = cluster.machines
    if kind == "outcome":
        return last_outcome(cluster, value)
    if not machines:
        raise SelectionError(f"target {text!r}: there are no machines yet; launch some with %launch 3")
    if kind == "all":
        return machines
    if kind == "tags":
        return machines.select(**value)
    if kind == "marker":
        chosen = select_marker(machines, value)
        if not chosen:
            raise SelectionError(f"no machine carries marker {value!r}; machines are: {fold(machines.names)}")
        return chosen
    chosen = cluster[value] if "cloudlet:" in value else machines[value]
    if not chosen:
        raise SelectionError(f"target {text!r} selects no machine; machines are: {fold(machines.names)}")
    return chosen


def candidates(cluster, markers=()):
    """Target words worth offering to tab completion, most specific last."""
    names = cluster.machines.names
    words = list(KEYWORDS)
    prefixes = sorted({n.rsplit("-", 1)[0] for n in names if "-" in n})
    words += [f"{p}-*" for p in prefixes]
    tags = sorted({f"{k}={v}" for m in cluster.machines for k, v in m.tags.items()})
    words += tags
    words += [f"marker={m}" for m in sorted(set(markers))]
    words += names
    # A cloudlet's marker on its host names its user (ecshell.cloudlets): read from markers already known.
    users = sorted({u for m in markers if m.startswith(CLOUDLET_MARKER)
                    and USER_NAME.fullmatch(u := m[len(CLOUDLET_MARKER):])})
    if users:
        words += ["cloudlet:*"] + [f"cloudlet:{u}" for u in users]
    return words
