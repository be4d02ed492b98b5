"""The folded result as HTML for Jupyter: the text view's folds, drawn for a notebook.

>>> HTML(render_resultset_html(rs))          # doctest: +SKIP

One row per fold of :func:`ecshell.shell.display.split` (so eight hosts
that timed out are one row, as in the terminal), failed rows first, marked
by a red edge, tint and status; output left-aligned in monospace whatever
the notebook's table CSS says (Jupyter right-aligns cells); remote ANSI
colours drawn (:mod:`ecshell.shell.ansi`), everything else escaped; a long
output folded into ``<details>``; each output with a copy button. The
summary names the command and says when Ctrl-C cut the broadcast short.

Styles are inline: a notebook keeps them when it drops ``<style>`` blocks
from an untrusted output, and they outrank the notebook's zebra striping.
"""

import html

from ..errors import ErrorKind
from ..hostset import fold
from ..output import printable
from . import ansi
from .display import command_text, shown_output, split

#: An output of more lines than this is folded into <details> (unless it is the only one).
LONG = 25

_CELL = "text-align:left;vertical-align:top;padding:0.2em 0.6em"
_PRE = ("text-align:left;font-family:var(--jp-code-font-family,monospace);margin:0;"
        "white-space:pre-wrap;overflow-wrap:anywhere;background:transparent")
_ROW = {"ok": "background:transparent;border-left:4px solid transparent;border-bottom:1px solid rgba(128,128,128,0.25)",
        "failed": "background:rgba(220,40,40,0.10);border-left:4px solid #d32f2f;"
                  "border-bottom:1px solid rgba(128,128,128,0.25)"}
_STATUS = {"ok": "color:#2e7d32", "failed": "color:#d32f2f;font-weight:bold"}
#: Our own script, never fed by remote text: copies the row's output as the machines sent it (decoded).
_COPY = ("navigator.clipboard&&navigator.clipboard.writeText("
         "this.closest('tr').querySelector('pre').textContent)")


def _row(outcome, machines, count, status, body):
    return (f'<tr class="ecshell-{outcome}" data-outcome="{outcome}" style="{_ROW[outcome]}">'
            f'<td style="{_CELL};white-space:nowrap"><b>{html.escape(machines)}</b>&nbsp;({count})</td>'
            f'<td style="{_CELL};white-space:nowrap;{_STATUS[outcome]}">{html.escape(status)}</td>'
            f'<td style="{_CELL}">{body}</td></tr>')


def _output_cell(group, only):
    text = shown_output(group.results[0], escape=lambda t: t).rstrip("\n")
    if not text:
        return ""
    pre = f'<pre style="{_PRE}">{ansi.to_html(text)}</pre>'
    copy = (f'<button type="button" title="copy this output" onclick="{html.escape(_COPY)}" '
            'style="float:right;font-size:smaller;margin-left:0.5em">copy</button>')
    lines = text.count("\n") + 1
    if lines <= LONG:
        return copy + pre
    first = printable(ansi.strip(text.split("\n", 1)[0]))[:80]
    return (f'<details{" open" if only else ""}><summary style="text-align:left;cursor:pointer">'
            f'{lines} lines: <code>{html.escape(first)}</code> ...</summary>{copy}{pre}</details>')


def render_resultset_html(resultset):
    shown, failures = split(resultset)
    failed_rows, ok_rows = [], []
    for group in shown:
        first = group.results[0]
        outcome = "ok" if first.ok else "failed"
        status = first.status
        if first.message and first.error not in (None, ErrorKind.EXIT):
            status += f" ({printable(first.message)})"
        row = _row(outcome, str(group.machines), len(group.results), status, _output_cell(group, len(shown) == 1))
        (ok_rows if first.ok else failed_rows).append(row)
    for (kind, message), names in failures:
        body = f'<i>{html.escape(printable(message))}</i>' if message else ""
        failed_rows.append(_row("failed", fold(names), len(names), kind, body))
    head = "".join(f'<th style="{_CELL}">{name}</th>' for name in ("machines", "status", "output"))
    summary = f"{len(resultset.ok)} ok, {len(resultset.failed)} failed"
    if resultset.command is not None:
        summary += f" &mdash; <code>{html.escape(printable(command_text(resultset)))}</code>"
    if resultset.interrupted:
        summary += (' <span style="color:#d32f2f;font-weight:bold">(interrupted: results shown '
                    'are those that arrived)</span>')
    return (f'<div class="ecshell-resultset" style="text-align:left">'
            f'<table style="border-collapse:collapse;margin:0"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(failed_rows + ok_rows)}</tbody></table>'
            f'<p style="text-align:left;margin:0.3em 0">{summary}</p></div>')
