"""Live view of a broadcast: output streamed as it arrives and a progress line.

>>> with LiveView(machines, delay=1.0) as view:                      # doctest: +SKIP
...     rs = machines.run("make", on_output=view.output, on_result=view.result)

Nothing is shown for a broadcast that finishes within ``delay`` seconds (the
folded result says everything). Past that, every complete line a host sends
is printed as ``name: line``, and on a terminal a progress line below them
says how many hosts are done, how many failed, and which are still running.
Workers only queue what they receive; one drawing thread writes to the
screen, so lines from different hosts never interleave mid-line. Ctrl-C is
left to the broadcast (it lands in the main thread, which is never drawing).

The progress line is drawn with prompt_toolkit's output layer (the same
terminal code IPython's prompt uses), so it honours the terminal's width and
colour depth.
"""

import collections
import sys
import threading
import time

from ..output import decode, printable
from .tally import Tally

#: Seconds between two redraws of the progress line.
TICK = 0.1
#: Most streamed bytes kept per host while waiting for the end of a line.
LINE_LIMIT = 4096
#: Most bytes waiting to be streamed; past this, output is left to the results
#: (which keep all of it) rather than held twice in memory or flooded to the screen.
QUEUE_LIMIT = 1024 * 1024

_SPINNER = "|/-\\"


class LiveView:
    """Streams output and draws progress for one broadcast on ``stream``."""

    def __init__(self, machines, delay=1.0, stream=None, color=False, stream_output=True, label=""):
        self.names = [m.name for m in machines]
        self.delay = delay
        self.stream = stream if stream is not None else sys.stdout
        self.color = color
        self.stream_output = stream_output
        self.label = label
        self.started = time.monotonic()
        self.tally = Tally(self.names)
        self._queue = collections.deque()
        self._queued = 0
        self._skipped = 0
        self._partial = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._showing = False
        self._status_drawn = False
        self._tty = _isatty(self.stream)
        self._output = None

    # -- called from worker threads --------------------------------------------

    def output(self, machine, data):
        if not self.stream_output:
            return
        with self._lock:
            if self._queued + len(data) > QUEUE_LIMIT:
                self._skipped += len(data)
                return
            self._queued += len(data)
        self._queue.append((machine.name, data))

    def result(self, result):
        self.tally.add(result)
        self._queue.append((result.machine.name, None))  # end of that host's output

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, name="ecshell-live", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._showing:
            self._drain(final=True)
            self._clear_status()
            self._flush()
        return False

    def _loop(self):
        if self._stop.wait(self.delay):
            return
        self._showing = True
        while not self._stop.is_set():
            self._drain()
            self._draw_status()
            self._flush()
            self._stop.wait(TICK)

    # -- drawing (only the drawing thread, or __exit__ after it ended) -----------

    def _drain(self, final=False):
        lines = []
        while self._queue:
            name, data = self._queue.popleft()
            if data is None:
                rest = self._partial.pop(name, b"")
                if rest:
                    lines.append((name, rest))
                continue
            with self._lock:
                self._queued -= len(data)
            buffer = self._partial.get(name, b"") + data
            *complete, rest = buffer.split(b"\n")
            lines.extend((name, line) for line in complete)
            if len(rest) > LINE_LIMIT:
                lines.append((name, rest))
                rest = b""
            self._partial[name] = rest
        if final:
            lines.extend((name, rest) for name, rest in self._partial.items() if rest)
            self._partial.clear()
        with self._lock:
            skipped, self._skipped = self._skipped, 0
        if skipped:
            lines.append(("ecshell", f"({skipped} bytes of output arrived too fast to stream; "
                                     "the results hold all of it)".encode()))
        if lines:
            self._clear_status()
            width = max(len(name) for name, _ in lines)
            for name, line in lines:
                text = printable(decode(line.rstrip(b"\r")))
                self._write(self._paint(f"{name:<{width}}", "36") + ": " + text + "\n")

    def status_text(self):
        """``3/10 done, 1 failed, running: web-[7-9]`` (also what tests read)."""
        elapsed = time.monotonic() - self.started
        summary, _ = self.tally.summary()
        return f"{self.label + ' ' if self.label else ''}{elapsed:5.1f}s {summary}  (Ctrl-C stops)"

    def _draw_status(self):
        if not self._tty:
            return
        spin = _SPINNER[int((time.monotonic() - self.started) / TICK) % len(_SPINNER)]
        text = f"{spin} {self.status_text()}"
        out = self._pt_output()
        if out is not None:
            from prompt_toolkit.formatted_text import FormattedText
            from prompt_toolkit.shortcuts import print_formatted_text

            columns = max(20, out.get_size().columns - 1)
            if len(text) > columns:
                text = text[:columns - 3] + "..."
            out.write_raw("\r")
            out.erase_end_of_line()
            style = "reverse" if self.color else ""
            print_formatted_text(FormattedText([(style, text)]), end="", output=out, flush=False)
        else:
            self.stream.write("\r" + text)
        self._status_drawn = True

    def _clear_status(self):
        if not self._status_drawn:
            return
        out = self._pt_output()
        if out is not None:
            out.write_raw("\r")
            out.erase_end_of_line()
            out.flush()
        else:
            self.stream.write("\r\x1b[K")
        self._status_drawn = False

    def _write(self, text):
        out = self._pt_output()
        if out is not None:
            out.write_raw(text)
        else:
            self.stream.write(text)

    def _flush(self):
        out = self._pt_output()
        if out is not None:
            out.flush()
        else:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def _pt_output(self):
        if not self._tty:
            return None
        if self._output is None:
            try:
                from prompt_toolkit.output import create_output

                self._output = create_output(stdout=self.stream)
            except Exception:  # not a terminal prompt_toolkit can drive: plain writes
                self._tty = False
                return None
        return self._output

    def _paint(self, text, code):
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
