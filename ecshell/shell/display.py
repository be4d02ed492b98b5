"""Folded rendering of results, as ClusterShell's clubak does it.

Identical answers read as one block under a header of folded host names and
a count; failures are listed by kind with their messages. Remote output is
escaped (terminal control sequences made visible, HTML escaped) before it
reaches a screen. :mod:`ecshell.shell.htmlview` draws the same folds for Jupyter.
"""

from ..errors import ErrorKind
from ..hostset import fold
from ..output import decode, printable

#: Output longer than this many bytes is cut *for display only*; the Result keeps all.
DISPLAY_LIMIT = 64 * 1024

_COLORS = {"ok": "32", "exit": "33", "fail": "31", "header": "1;36"}


def _paint(text, role, color):
    if not color:
        return text
    return f"\x1b[{_COLORS[role]}m{text}\x1b[0m"


def shown_output(result, escape=printable):
    data = result.output_head(DISPLAY_LIMIT + 1)
    text = escape(decode(data[:DISPLAY_LIMIT]))
    if len(data) > DISPLAY_LIMIT:
        where = f" (all of it in r.output_bytes, on disk at {result.output_path})" if result.output_path else " (all of it in r.output_bytes)"
        text += escape(f"\n... {result.output_size - DISPLAY_LIMIT} more bytes not shown{where}")
    return text


def split(resultset):
    """The folds the views show as output, and the failures they list by kind and message.

    Both come from ``resultset.groups(by="output+status")``: a connection-level
    failure (timeout, unreachable, ...) that printed nothing has no output
    to show, only its reason; one that printed something is shown both ways.
    """
    shown, failures = [], {}
    for group in resultset.groups(by="output+status"):
        first = group.results[0]
        if first.ok or first.error is ErrorKind.EXIT or first.output_size:
            shown.append(group)
        if not first.ok and first.error is not ErrorKind.EXIT:
            failures.setdefault((first.error.value, first.message), []).extend(group.machines.names)
    return shown, sorted(failures.items())


def render_result(result, color=False):
    role = "ok" if result.ok else ("exit" if result.error == "exit" else "fail")
    head = f"{result.machine.name}: {_paint(result.status, role, color)}"
    if result.message and result.error not in (None, "exit"):
        head += f" ({printable(result.message)})"
    out = shown_output(result)
    return head + ("\n" + out.rstrip("\n") if out else "")


def render_resultset(resultset, color=False):
    lines = []
    shown, failures = split(resultset)
    for group in shown:
        first = group.results[0]
        role = "ok" if first.ok else ("exit" if first.error == "exit" else "fail")
        status = _paint(first.status, role, color)
        lines.append(_paint(f"---------------- {group.machines} ({len(group.results)})", "header", color)
                     + f" {status}")
        body = shown_output(first).rstrip("\n")
        if body:
            lines.append(body)
    if failures:
        lines.append(_paint("failed:", "fail", color))
        for (kind, message), names in failures:
            detail = f": {printable(message)}" if message else ""
            lines.append(f"  {_paint(kind, 'fail', color)} {fold(names)} ({len(names)}){detail}")
    if resultset.interrupted:
        lines.append("(interrupted: results shown are those that arrived)")
    summary = f"{len(resultset.ok)} ok, {len(resultset.failed)} failed"
    if resultset.command is not None:
        summary += f" -- {printable(command_text(resultset))}"
    lines.append(summary)
    return "\n".join(lines)


def command_text(resultset):
    """The command as the summary shows it: a %%on cell by its first line and length."""
    command = str(resultset.command).strip()
    if "\n" in command:
        command = command.splitlines()[0] + f" ... ({len(command.splitlines())} lines)"
    return command
