"""Diagnostics: named checks run together on each machine, folded in next to its markers.

>>> from ecshell import register_diagnostic, service
>>> register_diagnostic("app", "curl -fsS localhost:8080/health", healthy=lambda v: v == "ok")  # doctest: +SKIP
>>> web.diagnose()                       # every registered check, one round trip per machine  # doctest: +SKIP
{'web-0': {'disk': Diagnosis(disk ok {'path': '/', 'use_pct': 41, ...}), 'load': ..., 'memory': ...}, ...}
>>> web.diagnose("disk", service("nginx"))                                              # doctest: +SKIP

A diagnostic is a shell snippet, a parser for its output, and a test of
health. All the snippets asked for run in one script (one round trip per
machine), each in its own subshell so one failing cannot stop the others;
the same script lists the machine's markers, and both land in
``machine.facts`` (``"diagnostics"`` and ``"markers"``). Built in: ``disk``,
``load``, ``memory``, and ``service(name)`` for any service.
"""

from __future__ import annotations

import base64
import shlex
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias, cast, overload

from .commands import Command, Shell
from .errors import ArgumentError, ErrorKind
from .state import LISTING, PREAMBLE, PerMachine, parse_listing, records, remember, state_dir_expr, unbase64, whoami

if TYPE_CHECKING:
    from .engine import Attempt
    from .machineset import MachineSet
    from .results import Result


class Diagnostic:
    """A named check: ``script`` (sh), ``parse(text) -> value``, ``healthy(value) -> bool``."""

    def __init__(self, name: str, script: str, parse: Callable[[str], Any] | None = None,
                 healthy: Callable[[Any], object] | None = None, help: str = "") -> None:
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ArgumentError(f"a diagnostic needs a name without spaces, e.g. 'disk', not {name!r}")
        if not isinstance(script, str) or not script.strip():
            raise ArgumentError(f"diagnostic {name!r} needs a shell snippet, e.g. 'df -P /'")
        self.name, self.script, self.parse, self.healthy, self.help = name, script, parse, healthy, help

    def judge(self, text: str, exit_code: int) -> Diagnosis:
        value: Any = text.strip()
        if self.parse is not None:
            try:
                value = self.parse(text)
            except Exception as exc:  # an operator's parser: its failure is this check's result
                return Diagnosis(self.name, False, None, text, exit_code, f"could not parse the output: {exc!r}")
        ok = exit_code == 0
        if ok and self.healthy is not None:
            try:
                ok = bool(self.healthy(value))
            except Exception as exc:
                return Diagnosis(self.name, False, value, text, exit_code, f"health test failed: {exc!r}")
        return Diagnosis(self.name, ok, value, text, exit_code)

    def __repr__(self) -> str:
        return f"Diagnostic({self.name!r})"


if TYPE_CHECKING:
    #: The checks diagnose() takes: names, Diagnostics, one per argument or one list of them.
    Names: TypeAlias = str | Diagnostic | list[str | Diagnostic] | tuple[str | Diagnostic, ...]


class Diagnosis:
    """One check's outcome on one machine: ``ok``, ``value`` (parsed), ``output``, ``exit_code``.

    ``message`` says why the parser or the health test failed, when one did.
    """

    __slots__ = ("name", "ok", "value", "output", "exit_code", "message")

    name: str
    ok: bool
    value: Any
    output: str
    exit_code: int
    message: str

    def __init__(self, name: str, ok: bool, value: Any, output: str, exit_code: int, message: str = "") -> None:
        self.name, self.ok, self.value, self.output, self.exit_code, self.message = (
            name, ok, value, output, exit_code, message)

    def __repr__(self) -> str:
        return f"Diagnosis({self.name} {'ok' if self.ok else 'BAD'} {self.value!r})"


def _df(text: str) -> dict[str, Any]:
    fields = text.strip().splitlines()[-1].split()
    size, used, avail = (int(x) for x in fields[1:4])
    return {"path": fields[5], "size_kb": size, "used_kb": used, "avail_kb": avail,
            "use_pct": int(fields[4].rstrip("%"))}


def _load(text: str) -> dict[str, Any]:
    one, five, fifteen, cores = text.split()[:4]
    return {"1m": float(one), "5m": float(five), "15m": float(fifteen), "cores": int(cores)}


def _memory(text: str) -> dict[str, Any]:
    values = dict(line.split() for line in text.strip().splitlines())
    total, available = int(values["MemTotal"]), int(values["MemAvailable"])
    return {"total_kb": total, "available_kb": available,
            "used_pct": round(100 * (total - available) / total, 1) if total else 0.0}


def disk(path: str = "/", max_use_pct: float = 90) -> Diagnostic:
    """Use of the file system holding ``path``; unhealthy above ``max_use_pct``."""
    return Diagnostic("disk" if path == "/" else f"disk:{path}", f"df -Pk {shlex.quote(path)}", _df,
                      lambda v: v["use_pct"] <= max_use_pct, "file system use")


def load(per_core: float = 2.0) -> Diagnostic:
    """Load averages and cores; unhealthy when the 1-minute load passes ``per_core`` per core."""
    return Diagnostic("load", "read a b c rest < /proc/loadavg; echo $a $b $c $(nproc 2>/dev/null || echo 1)",
                      _load, lambda v: v["1m"] <= per_core * max(1, v["cores"]), "load averages")


def memory(max_used_pct: float = 95) -> Diagnostic:
    """Memory in use (MemTotal - MemAvailable); unhealthy above ``max_used_pct``."""
    return Diagnostic("memory", "awk '/^(MemTotal|MemAvailable):/ {sub(\":\", \"\", $1); print $1, $2}' /proc/meminfo",
                      _memory, lambda v: v["used_pct"] <= max_used_pct, "memory use")


def service(name: str) -> Diagnostic:
    """Whether service ``name`` is up: systemd says active, or a process of that name runs."""
    quoted = shlex.quote(name)
    script = (f"if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet {quoted} 2>/dev/null; "
              f"then echo active; elif pgrep -x {quoted} >/dev/null 2>&1; then echo running; "
              f"else echo down; exit 3; fi")
    return Diagnostic(f"service:{name}", script, None, lambda v: v in ("active", "running"), f"service {name} up")


_registry: dict[str, Diagnostic] = {}
_registry_lock = threading.Lock()


@overload
def register_diagnostic(name: Diagnostic) -> Diagnostic: ...
@overload
def register_diagnostic(name: str, script: str, parse: Callable[[str], Any] | None = None,
                        healthy: Callable[[Any], object] | None = None, help: str = "") -> Diagnostic: ...

def register_diagnostic(name: str | Diagnostic, script: str | None = None,
                        parse: Callable[[str], Any] | None = None, healthy: Callable[[Any], object] | None = None,
                        help: str = "") -> Diagnostic:
    """Add a named check that ``diagnose()`` runs by default (a Diagnostic, or its parts)."""
    diagnostic = name if isinstance(name, Diagnostic) else Diagnostic(
        name, script, parse, healthy, help)  # type: ignore[arg-type]  # Diagnostic refuses a missing script
    with _registry_lock:
        _registry[diagnostic.name] = diagnostic
    return diagnostic


def unregister_diagnostic(name: str | Diagnostic) -> None:
    with _registry_lock:
        _registry.pop(cast(str, getattr(name, "name", name)), None)


def registered() -> dict[str, Diagnostic]:
    with _registry_lock:
        return dict(_registry)


for _builtin in (disk(), load(), memory()):
    register_diagnostic(_builtin)


def _resolve(names: tuple[Names, ...]) -> list[Diagnostic]:
    if len(names) == 1 and isinstance(names[0], (list, tuple)):
        names = tuple(names[0])
    known = registered()
    if not names:
        return list(known.values())
    chosen = []
    for item in names:
        if isinstance(item, Diagnostic):
            chosen.append(item)
        elif isinstance(item, str) and item in known:
            chosen.append(known[item])
        elif isinstance(item, str) and item.startswith("service:"):
            chosen.append(service(item[len("service:"):]))
        else:
            raise ArgumentError(f"no diagnostic named {item!r}; registered: {', '.join(sorted(known))}, "
                                "or service('name'), or register_diagnostic(name, script)")
    return chosen


class Diagnose(Command):
    """Run several diagnostics and list the markers, in one round trip; ``detail["diagnostics"]``."""

    def __init__(self, diagnostics: Iterable[Diagnostic], timeout: float | None = None) -> None:
        self.diagnostics = list(diagnostics)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Diagnose({', '.join(d.name for d in self.diagnostics)})"

    def script(self, settings: object) -> str:
        lines = [PREAMBLE.format(state_dir=state_dir_expr(settings),
                                 by=base64.b64encode(whoami().encode()).decode())]
        for index, diagnostic in enumerate(self.diagnostics):
            code = base64.b64encode(diagnostic.script.encode()).decode()
            # the snippet crosses as base64 and runs in its own sh, so nothing in it can break this script
            lines.append(f"o=$(printf %s '{code}' | base64 -d | sh 2>&1); c=$?; "
                         f"printf '\\036DIAG {index} %s\\n' $c; printf '%s\\n' \"$o\" | base64")
        lines.append(LISTING)
        return "\n".join(lines)

    def execute(self, attempt: Attempt) -> Result:
        quiet = attempt.fork()
        quiet.on_output = None
        result = Shell(self.script(attempt.settings), timeout=self.timeout).execute(quiet)
        result.command = self
        text = result.output
        outcomes = {}
        for kind, rest, body in records(text):
            index, _, status = rest.partition(" ")
            if kind == "DIAG" and index.isdecimal() and int(index) < len(self.diagnostics):
                diagnostic, raw = self.diagnostics[int(index)], unbase64(body)
                code = int(status) if status.isdecimal() else -1
                outcomes[diagnostic.name] = diagnostic.judge(raw[:-1] if raw.endswith("\n") else raw, code)
        _, markers, now, error, _ = parse_listing(text)
        if error is not None and result.ok:
            result.error, result.message = ErrorKind.EXIT, error
        if result.ok and now is None:
            result.error = ErrorKind.EXIT
            result.message = "the machine's shell did not run the diagnostics script (is its login shell POSIX sh?)"
        result.detail = dict(result.detail, diagnostics=outcomes, markers=markers, now=now)
        if result.ok:
            remember(attempt.machine, markers=markers, diagnostics=outcomes)
            text = "".join(f"{d.name:<12} {'ok ' if d.ok else 'BAD'} {d.value!r}"
                           f"{' ' + d.message if d.message else ''}\n" for d in outcomes.values())
            attempt.retell(result, text)
        return result


def diagnose(machines: MachineSet, *names: Names, timeout: float | None = None) -> PerMachine[dict[str, Diagnosis]]:
    """``{machine name: {diagnostic name: Diagnosis}}``, one round trip per machine; None where unreachable.

    ``timeout``: seconds for all the checks on one machine; past it they are killed there.
    """
    results = machines.execute(Diagnose(_resolve(names), timeout=timeout))
    return PerMachine({r.name: (r.detail.get("diagnostics") if r.ok else None) for r in results.results()},
                      results)
