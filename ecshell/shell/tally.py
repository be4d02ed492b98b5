"""How far a broadcast is: which hosts are done and which failed, as results arrive on worker threads.

>>> tally = Tally(["web-0", "web-1", "web-2"])
>>> tally.summary()
('0/3 done, running: web-[0-2]', True)

The terminal's live view and the notebook's progress both draw it.
"""

import threading

from ..hostset import fold


class Tally:
    def __init__(self, names):
        self.names = list(names)
        self._done = set()
        self._failed = set()
        self._lock = threading.Lock()

    def add(self, result):
        """Count ``result`` (called from worker threads)."""
        with self._lock:
            self._done.add(result.machine.name)
            if not result.ok:
                self._failed.add(result.machine.name)

    def state(self, name):
        """``done``, ``failed`` or ``running``."""
        with self._lock:
            return "failed" if name in self._failed else "done" if name in self._done else "running"

    def summary(self):
        """``("3/10 done, 1 failed, running: web-[7-9]", whether any host still runs)``."""
        with self._lock:
            done, failed = len(self._done), len(self._failed)
            running = [n for n in self.names if n not in self._done]
        text = f"{done}/{len(self.names)} done"
        if failed:
            text += f", {failed} failed"
        if running:
            text += f", running: {fold(running)}"
        return text, bool(running)
