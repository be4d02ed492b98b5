"""Progress in a notebook: one output updated in place, emptied when the result arrives.

>>> with BroadcastProgress(machines, delay=1.0) as view:                 # doctest: +SKIP
...     rs = machines.execute(command, on_output=view.output, on_result=view.result)

A kernel's stdout is no terminal: the terminal's live view (``live.py``)
could only print lines there, and they would stay in the saved notebook
above a result that repeats them. Here, as ipyparallel's ``%px`` does,
nothing shows for a call that ends within ``delay`` seconds; past that one
display (``display_id``) shows who is done and who still runs, and under it
each host's last lines, redrawn in place. When the call returns, that
display is emptied: the folded result that follows is the only copy of the
output left in the notebook.

The drawing thread runs in the cell's context (``contextvars``), so ipykernel
files its messages under the cell that started it.
"""

import collections
import contextvars
import html
import threading
import time

from ..hostset import fold
from ..output import decode, printable
from . import ansi
from .tally import Tally

#: Seconds between two redraws (each is a message to the notebook).
TICK = 0.5
#: Lines kept and shown per host; hosts shown (the rest counted).
LINES, HOSTS = 5, 12
#: Longest line shown, in characters.
WIDTH = 200

_PRE = "text-align:left;font-family:var(--jp-code-font-family,monospace);margin:0;white-space:pre-wrap"


class NotebookProgress:
    """A display that appears after ``delay`` seconds, is redrawn while the block runs, and is emptied after it."""

    def __init__(self, delay=1.0, label=""):
        self.delay = delay
        self.label = label
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = None
        self._handle = None
        self._context = contextvars.copy_context()

    def __enter__(self):
        self._thread = threading.Thread(target=self._context.run, args=(self._loop,),
                                        name="ecshell-notebook-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._handle is not None:  # this thread is the cell's own: no context to enter
            self._handle.update({"text/plain": ""}, raw=True)
        return False

    def _loop(self):
        from IPython.display import display

        if self._stop.wait(self.delay):
            return
        shown = self.bundle()
        self._handle = display(shown, raw=True, display_id=True)
        while not self._stop.wait(TICK):
            bundle = self.bundle()
            if bundle != shown:
                self._handle.update(bundle, raw=True)
                shown = bundle

    def elapsed(self):
        return time.monotonic() - self.started

    def lines(self):
        """``(status line, [(heading, [remote lines, decoded, not yet escaped])])``: what the display shows now."""
        raise NotImplementedError

    def bundle(self):
        status, blocks = self.lines()
        plain = [status] + [f"{heading}\n" + "".join(f"  {printable(ansi.strip(line))}\n" for line in body)
                            for heading, body in blocks]
        rows = "".join(f"<b>{html.escape(heading)}</b>\n" + "".join(f"  {ansi.to_html(line)}\n" for line in body)
                       for heading, body in blocks)
        return {"text/plain": "\n".join(plain).rstrip("\n"),
                "text/html": (f'<div class="ecshell-progress" style="text-align:left">'
                              f'<div style="{_PRE}">{html.escape(status)}</div>'
                              + (f'<pre style="{_PRE};opacity:0.8">{rows}</pre>' if rows else "") + "</div>")}


class BroadcastProgress(NotebookProgress):
    """Progress of one broadcast (``%on``, ``%put``, ``%get``): done, failed, running, each host's last lines."""

    def __init__(self, machines, delay=1.0, stream_output=True, label=""):
        super().__init__(delay, label)
        self.names = [m.name for m in machines]
        self.stream_output = stream_output
        self.tally = Tally(self.names)
        self._tails = {}
        self._partial = {}
        self._lock = threading.Lock()

    # -- called from worker threads ----------------------------------------------

    def output(self, machine, data):
        if not self.stream_output:
            return
        with self._lock:
            buffer = self._partial.get(machine.name, b"") + data
            *complete, rest = buffer.split(b"\n")
            tail = self._tails.setdefault(machine.name, collections.deque(maxlen=LINES))
            tail.extend(complete[-LINES:])
            self._partial[machine.name] = rest[-4 * WIDTH:]

    def result(self, result):
        self.tally.add(result)

    # -- drawn by the progress thread ----------------------------------------------

    def lines(self):
        with self._lock:
            tails = {name: list(tail) + ([self._partial[name]] if self._partial.get(name) else [])
                     for name, tail in self._tails.items()}
        summary, running = self.tally.summary()
        status = f"{self.label + ' ' if self.label else ''}{self.elapsed():.1f}s {summary}"
        if running:
            status += "  (interrupt the kernel to stop)"
        blocks = []
        shown = [n for n in self.names if tails.get(n)]
        for name in shown[:HOSTS]:
            state = self.tally.state(name)
            body = [decode(line.rstrip(b"\r"))[:WIDTH] for line in tails[name][-LINES:]]
            blocks.append((f"{name} ({state})", body))
        if len(shown) > HOSTS:
            blocks.append((f"... and {len(shown) - HOSTS} more hosts with output", []))
        return status, blocks


class ReadinessProgress(NotebookProgress):
    """Progress of ``%launch`` / ``%ready``: how many machines are ready, and the state of the others."""

    def __init__(self, machines, delay=1.0, label=""):
        super().__init__(delay, label)
        self.machines = list(machines)

    def lines(self):
        from ..states import MachineState

        waiting = {}
        ready = 0
        for machine in self.machines:
            if machine.state is MachineState.READY:
                ready += 1
            else:
                waiting.setdefault(str(machine.state), []).append(machine.name)
        status = f"{self.label + ' ' if self.label else ''}{self.elapsed():.1f}s {ready}/{len(self.machines)} ready"
        if waiting:
            status += ", waiting: " + ", ".join(f"{fold(names)} ({state})" for state, names in sorted(waiting.items()))
            status += "  (interrupt the kernel to stop)"
        return status, []
