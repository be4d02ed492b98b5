"""Tables the shell shows: the machines of a cluster, and what they cost.

>>> print(machine_table(cluster))          # doctest: +SKIP
name    fabric  id           state  address          uptime  cost    markers
web-0   local   lm-1a2b3c4d  ready  127.0.0.1:40211  0:03:12 $0.0000 configured

Cost is what the fabric says a machine-hour costs (a prototype's
``extra["hourly_cost"]``, in US dollars) times the time it has been up; it is
an estimate, not a bill. Machines that are stopped or terminated cost nothing
here.
"""

import html
import time

from ..cloudlets.manager import MARKER_PREFIX as CLOUDLET_MARKER
from ..cloudlets.runtime import USER_NAME
from ..hostset import fold
from ..output import printable


_CELL = "text-align:left;white-space:nowrap"


class Table:
    """Rows of text with a header; prints aligned in a terminal, as HTML in Jupyter."""

    def __init__(self, header, rows, footer=""):
        self.header = list(header)
        self.rows = [[str(c) for c in row] for row in rows]
        self.footer = footer

    def __str__(self):
        cells = [self.header] + self.rows
        widths = [max(len(printable(r[i])) for r in cells) for i in range(len(self.header))]
        lines = ["  ".join(printable(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
        if self.footer:
            lines.append(self.footer)
        return "\n".join(lines)

    def __repr__(self):
        return str(self)

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))

    def _repr_html_(self):
        # Left-aligned as in the terminal: Jupyter's table CSS right-aligns every cell.
        head = "".join(f'<th style="{_CELL}">{html.escape(h)}</th>' for h in self.header)
        body = "".join("<tr>" + "".join(f'<td style="{_CELL}">{html.escape(printable(c))}</td>' for c in r) + "</tr>"
                       for r in self.rows)
        foot = f'<p style="text-align:left">{html.escape(self.footer)}</p>' if self.footer else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{foot}"


def hourly_cost(machine):
    """US dollars per hour the fabric says this machine costs (0 when it does not say)."""
    try:
        return float(machine.prototype.extra.get("hourly_cost") or 0.0)
    except (AttributeError, TypeError, ValueError):
        return 0.0


def is_live(machine):
    """Started and not stopped: costing money."""
    return machine.state.billed


def cost_so_far(machine, now=None):
    """Estimated dollars since launch (0 for a machine not running now)."""
    uptime = _uptime(machine, now)
    return hourly_cost(machine) * uptime / 3600.0 if uptime and is_live(machine) else 0.0


def _uptime(machine, now=None):
    launched = getattr(machine, "launched_at", None)
    if not launched:
        return None
    return max(0.0, (now or time.time()) - launched)


def duration(seconds):
    """``1d 2:03:04`` / ``0:03:12``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{days}d {text}" if days else text


def money(dollars):
    return f"${dollars:.4f}" if dollars < 1 else f"${dollars:,.2f}"


def machine_table(cluster, markers=None):
    """The ``%cluster`` table: name, fabric, id, state, address, uptime, cost so far, markers."""
    now = time.time()
    markers = markers or {}
    rows = []
    for m in cluster.machines:
        up = _uptime(m, now) if is_live(m) else None
        marks = markers.get(m.name) or {}
        rows.append([m.name, m.fabric.name, m.id, m.state, f"{m.host}:{m.port}", duration(up),
                     money(cost_so_far(m, now)), ",".join(sorted(marks)) or "-"])
        # the cloudlets it holds, one row each under it (its markers say which, since when)
        for name, marker in sorted(marks.items()):
            user = name[len(CLOUDLET_MARKER):]
            if name.startswith(CLOUDLET_MARKER) and USER_NAME.fullmatch(user):
                rows.append([f"  cloudlet:{user}", "cloudlet", "-", m.state, f"on {m.name}",
                             duration(now - float(marker)), "-", "-"])
    live = [m for m in cluster.machines if is_live(m)]
    footer = (f"{len(cluster.machines)} machines, {len(live)} running, "
              f"{money(sum(hourly_cost(m) for m in live))}/h")
    return Table(["name", "fabric", "id", "state", "address", "uptime", "cost", "markers"], rows, footer)


def cloudlet_table(cloudlets):
    """The ``%cloudlet`` table: every cloudlet running now, its machine, and for how long."""
    now = time.time()
    rows = [[f"cloudlet:{user}", c.machine.name, f"{c.machine.host}:{c.machine.port}",
             duration(now - c.started_at if c.started_at else None)] for user, c in sorted(cloudlets.items())]
    footer = f"{len(rows)} cloudlets" if rows else "no cloudlets running: %cloudlet USER places one"
    return Table(["cloudlet", "machine", "address", "up"], rows, footer)


def cost_table(cluster):
    """The ``%cost`` table: running machines grouped by fabric and hourly rate."""
    now = time.time()
    groups = {}
    for m in cluster.machines:
        if is_live(m):
            groups.setdefault((m.fabric.name, hourly_cost(m)), []).append(m)
    rows = []
    total_rate = total_cost = 0.0
    for (fabric, rate), members in sorted(groups.items()):
        uptimes = [_uptime(m, now) or 0.0 for m in members]
        spent = sum(cost_so_far(m, now) for m in members)
        total_rate += rate * len(members)
        total_cost += spent
        rows.append([fabric, fold(m.name for m in members), len(members), duration(max(uptimes)),
                     f"{sum(uptimes) / 3600:.2f}", money(rate), money(rate * len(members)), money(spent)])
    running = sum(len(v) for v in groups.values())
    footer = (f"{running} machines running, {money(total_rate)}/h now, {money(total_cost)} so far (estimate)"
              if running else "nothing running: no cost")
    return Table(["fabric", "machines", "count", "longest up", "machine-hours", "each/h", "total/h", "so far"],
                 rows, footer)


def running_summary(cluster):
    """``(count, dollars per hour, dollars so far, longest uptime)`` of what runs now."""
    now = time.time()
    live = [m for m in cluster.machines if is_live(m)]
    return (len(live), sum(hourly_cost(m) for m in live), sum(cost_so_far(m, now) for m in live),
            max((_uptime(m, now) or 0.0 for m in live), default=0.0))


def toolbar_text(cluster):
    """One line for the prompt's bottom toolbar; empty when nothing runs."""
    count, rate, spent, _ = running_summary(cluster)
    if not count:
        return ""
    fabrics = ",".join(sorted({m.fabric.name for m in cluster.machines if is_live(m)}))
    return f" ecshell: {count} running ({fabrics}) | {money(rate)}/h | {money(spent)} so far "


def exit_warning(cluster):
    """What to say when the shell exits with machines still running; None if nothing runs."""
    count, rate, spent, longest = running_summary(cluster)
    if not count:
        return None
    live = [m for m in cluster.machines if is_live(m)]
    names = fold(m.name for m in live)
    paying = [m for m in live if hourly_cost(m) > 0]
    if paying:
        return (f"WARNING: {len(paying)} machines that cost money are still running "
                f"({fold(m.name for m in paying)}), up to {duration(longest)}, "
                f"{money(rate)}/h, about {money(spent)} so far. They keep running (and costing) "
                f"after this shell: terminate them with %terminate all, or cluster.terminate('all').")
    return (f"note: {count} machines still running ({names}), free of charge; a new ecshell finds them "
            "again. Stop them with %terminate all.")
