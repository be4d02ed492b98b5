"""State that lives on the machines: markers, and markers used as locks.

>>> web.mark("configured")                       # doctest: +SKIP
>>> web.markers()                                # doctest: +SKIP
{'web-0': {'configured': Marker(1764151995.0, by='ops@desk pid 4242')}, ...}
>>> cluster.select(marker="configured")          # doctest: +SKIP
>>> with cluster.machine("web-0").lock("deploy", timeout=30):   # doctest: +SKIP
...     web.run("./deploy")

A marker is a file ``<state dir>/markers/<name>`` on the machine, holding
``at=`` (the machine's clock, epoch seconds), ``by=`` (who set it: user@host
and pid of the controlling shell), ``note=`` and ``token=`` lines. The state
directory is ``$ECSHELL_STATE_DIR`` when the machine sets it (LocalFabric
machines do), else ``c.EcShell.state_dir`` (``~/.ecshell-state``). A file is
written under a dot-name first, then renamed into place (``mark``) or
hard-linked (``claim``): ``link(2)`` fails when the name exists, so an
exclusive marker is created atomically with its whole content, and a marker
doubles as a lock. Locks are the markers named ``lock.<name>``.

Every state operation is one Command, so it costs one round trip per
machine, and every one ends by listing the machine's markers: the controller
keeps only what it last saw (``machine.facts``), and a new shell reads it all
again from the machines. Values from the controller (who, notes) cross the
wire base64-encoded; marker names are restricted to a shell-safe alphabet.
What comes back is framed the same way: a marker file's contents follow its
record as base64, so no file can hold a line that reads as a record.
"""

from __future__ import annotations

import base64
import datetime
import getpass
import logging
import os
import re
import secrets
import shlex
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from .commands import Command, Shell
from .errors import ArgumentError, EcShellError, ErrorKind, SelectionError

if TYPE_CHECKING:
    from types import ModuleType

    from .engine import Attempt
    from .machine import Machine
    from .machineset import MachineSet
    from .results import Result, ResultSet

    #: Marker names as mark() and unmark() take them: one per argument, or one list of them.
    Names: TypeAlias = str | list[str] | tuple[str, ...] | set[str]

log = logging.getLogger("ecshell")

#: Marker names: letters, digits and ``_ . : @ + -``, not starting with a dot.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,199}")
#: The prefix that makes a marker a lock.
LOCK_PREFIX = "lock."
RECORD = "\x1e"

_V = TypeVar("_V")


class StateError(EcShellError):
    """A machine could not be asked about its state (unreachable, no state directory, ...).

    ``result`` is the machine's Result that says why, when there is one.
    """

    def __init__(self, message: str, result: Result | None = None) -> None:
        super().__init__(message)
        self.result = result


class LockHeld(StateError):
    """``lock()`` waited its timeout and the lock is still someone else's.

    ``machine`` is a Machine where it is held, ``name`` the lock's name and
    ``holder`` its Marker there (who took it, and when).
    """

    def __init__(self, message: str, machine: Machine | None = None, name: str | None = None,
                 holder: Marker | None = None, result: Result | None = None) -> None:
        super().__init__(message, result)
        self.machine, self.name, self.holder = machine, name, holder


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ArgumentError(f"marker names are letters, digits and _ . : @ + - (not starting with a dot), "
                            f"e.g. 'configured' or 'app:v2'; not {name!r}")
    return name


def whoami() -> str:
    """Who sets a marker from this shell: ``user@host pid N``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def _oneline(text: object) -> str:
    return " ".join(str(text).split())


class Marker(float):
    """A marker as read from a machine: a float (its set-at time) with ``by``, ``note``, ``token``.

    ``web.markers()`` promises ``{machine: {marker: set-at time}}``; a Marker
    is that time, and says who set it too.
    """

    #: Who set it: ``user@host pid N`` of the shell that did.
    by: str
    note: str
    #: The setter's secret for a lock, so that only it releases it.
    token: str
    name: str

    def __new__(cls, at: float, by: str = "", note: str = "", token: str = "", name: str = "") -> Marker:
        self = super().__new__(cls, at)
        self.by, self.note, self.token, self.name = by, note, token, name
        return self

    @property
    def at(self) -> float:
        return float(self)

    @property
    def when(self) -> str:
        return datetime.datetime.fromtimestamp(float(self)).strftime("%Y-%m-%d %H:%M:%S")

    def holder_gone(self) -> bool | None:
        """True when the setter was a shell on this host whose pid no longer runs; else None (cannot tell)."""
        match = re.fullmatch(r"\S+@(\S+) pid (\d+)", self.by)
        if not match or match.group(1) != socket.gethostname():
            return None
        return not os.path.exists(f"/proc/{match.group(2)}")

    def __repr__(self) -> str:
        note = f", note={self.note!r}" if self.note else ""
        return f"Marker({float(self)!r}, by={self.by!r}{note})"

    def describe(self, now: float | None = None) -> str:
        since = f" ({age((now or time.time()) - float(self))} ago)"
        return f"set {self.when}{since} by {self.by or 'unknown'}" + (f": {self.note}" if self.note else "")


def age(seconds: float) -> str:
    """A duration as a person says it: ``45s``, ``12m``, ``3h05m``."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# -- the machine-side script ----------------------------------------------------

def _b64(text: object) -> str:
    return base64.b64encode(_oneline(text).encode()).decode()


def state_dir_expr(settings: object) -> str:
    """Shell expression for the state directory on the machine."""
    default = getattr(settings, "state_dir", None) or "~/.ecshell-state"
    if default == "~":
        fallback = '"$HOME"'
    elif default.startswith("~/"):
        fallback = '"$HOME"/' + shlex.quote(default[2:])
    else:
        fallback = shlex.quote(default)
    return f'S="${{ECSHELL_STATE_DIR:-}}"; [ -n "$S" ] || S={fallback}; D="$S/markers"'


PREAMBLE = """\
{state_dir}
mkdir -p "$D" 2>/dev/null || {{ printf '\\036ERR cannot create the state directory %s\\n' "$D"; exit 70; }}
B=$(printf %s '{by}' | base64 -d) || {{ printf '\\036ERR base64 is missing on this machine\\n'; exit 71; }}
t="$D/.new.$$"
_mk() {{ printf 'at=%s\\nby=%s\\nnote=%s\\ntoken=%s\\n' \\
    "$(date +%s)" "$B" "$(printf %s "$1" | base64 -d)" "$2" > "$t"; }}
_op() {{ printf '\\036OP %s %s\\n' "$1" "$2"; }}
"""

# A file's contents cross as base64 lines after its record, so no contents can read as a record;
# names outside the marker alphabet (a newline, a \036) are not markers and are left out.
LISTING = """\
printf '\\036NOW %s\\n' "$(date +%s)"
for f in "$D"/*; do [ -f "$f" ] || continue; case ${f##*/} in *[!A-Za-z0-9_.:@+-]*) continue;; esac
printf '\\036M %s\\n' "${f##*/}"; { base64 < "$f"; } 2>/dev/null; done
exit 0
"""


class Op:
    """One state operation inside a StateCommand's script. ``status`` values are per op."""

    def __init__(self, kind: str, name: str, note: str = "", token: str = "", unless: str | None = None,
                 only_if_ok: bool = False) -> None:
        self.kind, self.name, self.note, self.token = kind, check_name(name), note, token
        self.unless = check_name(unless) if unless else None
        self.only_if_ok = only_if_ok

    def script(self, index: int) -> str:
        f = f'"$D"/{shlex.quote(self.name)}'
        # mv and ln put a file *into* a directory of that name: refuse, rather than succeed wrongly
        if self.kind == "mark":
            body = (f"if [ -d {f} ]; then r=failed; else _mk '{_b64(self.note)}' {shlex.quote(self.token)}; "
                    f"mv -f \"$t\" {f} && r=ok || r=failed; fi")
        elif self.kind == "claim":
            body = (f"if [ -d {f} ]; then r=failed; else _mk '{_b64(self.note)}' {shlex.quote(self.token)}; "
                    f"if ln \"$t\" {f} 2>/dev/null; then r=ok; else r=held; fi; rm -f \"$t\"; fi")
            if self.unless:
                body = f'if [ -e "$D"/{shlex.quote(self.unless)} ]; then r=done; else {body}; fi'
        elif self.kind == "unmark":
            if self.token:
                body = (f"if grep -qx {shlex.quote('token=' + self.token)} {f} 2>/dev/null; then rm -f {f}; r=ok; "
                        f"elif [ -e {f} ]; then r=other; else r=absent; fi")
            else:
                show = f"printf '\\036WAS %s\\n' {shlex.quote(self.name)}; {{ base64 < {f}; }} 2>/dev/null; "
                body = f"if [ -e {f} ]; then {show}rm -f {f} && r=ok || r=failed; else r=absent; fi"
        else:
            raise ArgumentError(f"unknown state operation {self.kind!r}")
        if self.only_if_ok:
            body = f'if [ "$r" = ok ]; then {body}; else r=skipped; fi'
        return f"{body}; _op {index} $r"

    def __repr__(self) -> str:
        return f"{self.kind}({self.name!r})"


def records(text: str) -> Iterator[tuple[str, str, str]]:
    """``(kind, rest of the record line, base64 body)`` for each ``\\036KIND rest`` record in a script's output."""
    kind: str | None = None
    rest = ""
    body: list[str] = []
    for line in text.split("\n"):  # not splitlines(): it splits at \x1e too
        if line.startswith(RECORD):
            if kind is not None:
                yield kind, rest, "".join(body)
            kind, _, rest = line[1:].partition(" ")
            body = []
        elif kind is not None:
            body.append(line.strip())
    if kind is not None:
        yield kind, rest, "".join(body)


def unbase64(body: str) -> str:
    try:
        return base64.b64decode(body).decode("utf-8", "replace")
    except ValueError:  # binascii.Error: cut short on the way
        return ""


def parse_listing(text: str) -> tuple[list[str | None], dict[str, Marker], float | None, str | None,
                                      dict[str, Marker]]:
    """``(ops, markers, now, error, removed)`` from a state script's output."""
    ops: dict[int, str] = {}
    markers: dict[str, dict[str, str]] = {}
    now: float | None = None
    error: str | None = None
    removed: dict[str, dict[str, str]] = {}
    for kind, rest, body in records(text):
        if kind == "OP":
            index, _, status = rest.partition(" ")
            if index.isdecimal():
                ops[int(index)] = status
        elif kind == "NOW":
            now = float(rest) if rest.strip().isdecimal() else None
        elif kind in ("M", "WAS"):
            (markers if kind == "M" else removed)[rest] = _fields(unbase64(body))
        elif kind == "ERR":
            error = rest
    return ([ops.get(i) for i in range(len(ops))] if ops else [], _markers(markers), now, error,
            _markers(removed))


def _fields(contents: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in contents.split("\n"):
        if "=" in line:
            key, _, value = line.partition("=")
            fields.setdefault(key, value)
    return fields


def _markers(records: dict[str, dict[str, str]]) -> dict[str, Marker]:
    parsed = {}
    for name, fields in records.items():
        try:
            at = float(fields.get("at", "0") or 0)
        except ValueError:
            at = 0.0
        parsed[name] = Marker(at, fields.get("by", ""), fields.get("note", ""), fields.get("token", ""), name)
    return parsed


def render_markers(markers: Mapping[str, Marker], now: float | None = None) -> str:
    if not markers:
        return "(no markers)\n"
    width = max(len(n) for n in markers)
    return "".join(f"{name:<{width}}  {m.describe(now)}\n" for name, m in sorted(markers.items()))


class StateCommand(Command):
    """Some marker operations, then a listing of every marker: one round trip.

    The result's ``detail`` holds ``ops`` (a status per operation: ``ok``,
    ``held``, ``done``, ``absent``, ``other``, ``skipped``), ``markers``
    (``{name: Marker}``) and ``now`` (the machine's clock); its output is the
    markers, readable.
    """

    def __init__(self, ops: Iterable[Op] = (), by: str | None = None, label: str | None = None) -> None:
        self.ops = list(ops)
        self.by = by or whoami()
        self.label = label

    def __repr__(self) -> str:
        return self.label or f"StateCommand({', '.join(map(repr, self.ops)) or 'markers'})"

    def script(self, settings: object) -> str:
        lines = [PREAMBLE.format(state_dir=state_dir_expr(settings), by=_b64(self.by)), "r=ok"]
        lines += [op.script(i) for i, op in enumerate(self.ops)]
        lines.append(LISTING)
        return "\n".join(lines)

    def execute(self, attempt: Attempt) -> Result:
        shell = Shell(self.script(attempt.settings))
        quiet = attempt.fork()
        quiet.on_output = None  # the raw records are not for the operator's screen
        result = shell.execute(quiet)
        result.command = self
        text = result.output
        ops, markers, now, error, removed = parse_listing(text)
        if error is not None:
            result.message = error
            if result.error is None:
                result.error = ErrorKind.EXIT
        if result.ok and now is None:
            result.error = ErrorKind.EXIT
            result.message = "the machine's shell did not run the state script (is its login shell POSIX sh?)"
        statuses = ops + [None] * (len(self.ops) - len(ops))
        unwritten = [op.name for op, status in zip(self.ops, statuses) if status in (None, "failed")]
        if result.ok and unwritten:
            result.error = ErrorKind.EXIT
            result.message = f"could not change {', '.join(unwritten)} in the state directory (disk full? permissions?)"
        readable = text if not result.ok else render_markers(markers, now)
        attempt.retell(result, readable)
        result.detail = dict(result.detail, ops=ops, markers=markers, now=now, removed=removed)
        if result.ok:
            remember(attempt.machine, markers=markers)
        return result


def remember(machine: Machine, **facts: Any) -> None:
    """Fold what a machine just told us into ``machine.facts`` (a cache, rebuilt on demand)."""
    known = getattr(machine, "facts", None)
    if known is None:
        known = machine.facts = {}
    known.update(facts)
    known["seen_at"] = time.time()


# -- operations on machine sets ---------------------------------------------------

def _names(names: tuple[Names, ...]) -> list[str]:
    if len(names) == 1 and isinstance(names[0], (list, tuple, set)):
        names = tuple(names[0])
    if not names:
        raise ArgumentError("name at least one marker, e.g. mark('configured')")
    return [check_name(n) for n in names]


def mark(machines: MachineSet, *names: Names, note: str = "") -> ResultSet:
    """Set markers on every machine (overwriting their time and setter); a ResultSet."""
    ops = [Op("mark", n, note=note) for n in _names(names)]
    return machines.execute(StateCommand(ops, label=f"mark {' '.join(o.name for o in ops)}"))


def unmark(machines: MachineSet, *names: Names) -> ResultSet:
    ops = [Op("unmark", n) for n in _names(names)]
    return machines.execute(StateCommand(ops, label=f"unmark {' '.join(o.name for o in ops)}"))


class PerMachine(dict[str, _V | None]):
    """``{machine name: value}``; ``None`` for a machine that could not answer, ``.results`` says why."""

    def __init__(self, values: Mapping[str, _V | None], results: ResultSet) -> None:
        super().__init__(values)
        self.results = results

    @property
    def failed(self) -> ResultSet:
        return self.results.failed


def markers(machines: MachineSet) -> PerMachine[dict[str, Marker]]:
    """``{machine name: {marker: Marker}}``, read from the machines now (one round trip each)."""
    results = machines.execute(StateCommand(label="markers"))
    return PerMachine({r.name: (r.detail.get("markers") if r.ok else None) for r in results.results()}, results)


def machine_markers(machine: Machine) -> dict[str, Marker]:
    result = machine.execute(StateCommand(label="markers"))
    if not result.ok:
        raise StateError(f"could not read the markers of {machine.name}: {result.status} {result.message}".rstrip(),
                         result)
    return result.detail["markers"]


def select_marker(machines: MachineSet, wanted: str | Iterable[str]) -> list[Machine]:
    """Machines that have a marker matching ``wanted`` (a name or glob; ``!name``: that do not)."""
    import fnmatch

    patterns = [wanted] if isinstance(wanted, str) else list(wanted)
    if not patterns:
        raise ArgumentError("give a marker name, e.g. select(marker='configured')")
    # only running machines can answer; the others are left out without a connection attempt
    machines = machines.reachable()
    if not machines:
        raise SelectionError("no running machine to read markers from; start or launch some first")
    seen = markers(machines)
    chosen = []
    for machine in machines:
        have = seen.get(machine.name)
        if have is None:
            continue
        if all(_matches(have, p, fnmatch) for p in patterns):
            chosen.append(machine)
    unanswered = [n for n, v in seen.items() if v is None]
    if unanswered:
        log.warning("could not read the markers of %s; they are left out of the selection", ", ".join(unanswered))
    if not chosen:
        in_use = sorted({m for v in seen.values() if v for m in v})
        raise SelectionError(f"no machine has marker {' and '.join(patterns)}; markers in use: "
                             f"{', '.join(in_use) or '(none)'}")
    return chosen


def _matches(have: Iterable[str], pattern: str, fnmatch: ModuleType) -> bool:
    if pattern.startswith("!"):
        return not any(fnmatch.fnmatchcase(m, pattern[1:]) for m in have)
    return any(fnmatch.fnmatchcase(m, pattern) for m in have)


# -- locks ------------------------------------------------------------------------

class Lock:
    """A marker ``lock.<name>`` created atomically; ``with machine.lock("deploy", timeout=30):``.

    Acquiring tries once per round trip and waits with backoff up to
    ``timeout`` seconds (``None``: forever, ``0``: one try), then raises
    :class:`LockHeld` naming the holder and since when. Release removes the
    lock only if it is still ours (its token); a lock broken meanwhile with
    ``break_lock`` is reported, not removed from its new holder.

    On a MachineSet (``web.lock("deploy")``) the lock is all or nothing: a
    try that finds any machine's lock held gives back the ones it took
    before it waits, so two shells locking overlapping sets never deadlock.
    """

    def __init__(self, machines: MachineSet, name: str, timeout: float | None = 30.0, note: str = "") -> None:
        check_name(name)
        if timeout is not None and timeout < 0:
            raise ArgumentError(f"timeout is seconds to wait (0: try once, None: forever), not {timeout!r}")
        self.machines = machines
        if not self.machines:
            raise ArgumentError("nothing to lock: the selection is empty")
        self.name, self.timeout, self.note = name, timeout, note
        self.marker = LOCK_PREFIX + name
        self.token: str | None = None

    @property
    def held(self) -> bool:
        return self.token is not None

    @property
    def where(self) -> str:
        return str(self.machines)

    def acquire(self) -> Lock:
        if self.held:
            raise ArgumentError(f"lock {self.name!r} on {self.where} is held by this Lock already")
        token = secrets.token_hex(8)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        pause = 0.05
        while True:
            results = self.machines.execute(StateCommand([Op("claim", self.marker, self.note, token)],
                                                         label=f"lock {self.name}"))
            taken = self.machines & [r.machine for r in results.ok.results() if r.detail["ops"][0] == "ok"]
            if len(taken) == len(self.machines):
                self.token = token
                return self
            if taken:
                self._give_back(taken, token)
            failed = results.failed.results() or [
                r for r in results.results() if r.detail["ops"][0] not in ("ok", "held")]
            if failed:
                bad = failed[0]
                raise StateError(f"could not take lock {self.name!r} on {bad.name}: "
                                 f"{bad.status} {bad.message or 'the lock file could not be made'}".rstrip(), bad)
            holders = {r.name: (r.detail["markers"].get(self.marker), r.detail.get("now"))
                       for r in results.results() if r.detail["ops"][0] != "ok"}
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0 and all(h is not None for h, _ in holders.values()):
                name, (holder, _) = next(iter(holders.items()))
                raise LockHeld(self._held_message(holders), results[name].machine, self.name, holder,
                               results[name])
            time.sleep((pause if left is None else max(0.0, min(pause, left))) * (0.5 + secrets.randbelow(100) / 100))
            pause = min(pause * 1.5, 1.0)

    def _give_back(self, machines: MachineSet, token: str) -> None:
        machines.execute(StateCommand([Op("unmark", self.marker, token=token)], label=f"unlock {self.name}"))

    def _held_message(self, holders: dict[str, tuple[Marker, float | None]]) -> str:
        parts = []
        for name, (holder, now) in holders.items():
            gone = " (that process is no longer running here)" if holder.holder_gone() else ""
            parts.append(f"on {name} by {holder.by or 'unknown'} since {holder.when} "
                         f"({age((now or time.time()) - holder.at)} ago){gone}"
                         f"{': ' + holder.note if holder.note else ''}")
        waited = f"waited {self.timeout:g}s; " if self.timeout else ""
        first = next(iter(holders))
        return (f"lock {self.name!r} is held {'; '.join(parts)}. {waited}wait longer with "
                f".lock({self.name!r}, timeout=...), or if that holder is gone, break it with "
                f"cluster.machine({first!r}).break_lock({self.name!r})")

    def release(self) -> bool:
        """Remove the lock where it is still ours; False (and a warning) where someone broke it."""
        if self.token is None:  # not held
            return False
        token, self.token = self.token, None
        results = self.machines.execute(StateCommand([Op("unmark", self.marker, token=token)],
                                                     label=f"unlock {self.name}"))
        lost = {r.name: (r.detail["ops"][0] if r.ok else f"{r.status} {r.message}") for r in results.results()
                if not (r.ok and r.detail["ops"][0] == "ok")}
        for name, status in lost.items():
            log.warning("lock %r on %s was no longer ours when released (%s); it was broken meanwhile",
                        self.name, name, status)
        return not lost

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Lock {self.name} on {self.where} {'held' if self.held else 'not held'}>"


def break_lock(machine: Machine, name: str) -> Marker | None:
    """Remove lock ``name`` on ``machine`` whoever holds it; the Marker of the holder broken, or None."""
    marker = LOCK_PREFIX + check_name(name)
    result = machine.execute(StateCommand([Op("unmark", marker)], label=f"break lock {name}"))
    if not result.ok:
        raise StateError(f"could not break lock {name!r} on {machine.name}: {result.status} {result.message}",
                         result)
    holder = result.detail["removed"].get(marker)
    if holder is not None:
        log.warning("broke lock %r on %s held by %s since %s", name, machine.name, holder.by, holder.when)
    return holder


def locks(machines: MachineSet) -> PerMachine[dict[str, Marker]]:
    """``{machine name: {lock name: Marker}}`` of the locks held now."""
    seen = markers(machines)
    return PerMachine({n: ({k[len(LOCK_PREFIX):]: v for k, v in m.items() if k.startswith(LOCK_PREFIX)}
                           if m is not None else None) for n, m in seen.items()}, seen.results)
