"""Phone-home: instances tell a small listener here when cloud-init has finished.

>>> ec2.listen_for_phone_home(public_url="http://203.0.113.7:8765/")   # doctest: +SKIP
>>> cluster.launch(3, name="web")     # readiness polls wake as instances call back  # doctest: +SKIP

The call is only a hint that short-cuts the wait between readiness polls:
anyone can POST to the listener, so nothing it says is trusted. The SSH
check still runs against the pinned host key; a phone-home that reports a
different host key is logged as suspicious and changes nothing.
"""

from __future__ import annotations

import http.server
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable
from typing import cast

log = logging.getLogger("ecshell")

_ID = re.compile(r"i-[0-9a-f]{8,32}")
MAX_BODY = 64 * 1024


class PhoneHome:
    """An HTTP listener that records ``instance_id`` form posts (cloud-init's phone_home module)."""

    def __init__(self, host: str = "0.0.0.0", port: int = 0, public_url: str | None = None) -> None:
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self.send_error(413)
                    return
                fields = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
                instance_id = (fields.get("instance_id") or [""])[0]
                if not _ID.fullmatch(instance_id):
                    self.send_error(400)
                    return
                listener._record(instance_id, {k: v[0] for k, v in fields.items()})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):  # instances calling back are not news for the terminal
                pass

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        # bound, so getsockname()'s (host, port): the host is a str, never bytes
        bound_host, bound_port = cast("tuple[str, int]", self._server.server_address[:2])
        self.url = public_url or f"http://{bound_host}:{bound_port}/"
        #: instance id -> (time of its call, the form fields it posted)
        self.arrived: dict[str, tuple[float, dict[str, str]]] = {}
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._server.serve_forever, name="ecshell-phone-home", daemon=True)
        self._thread.start()

    def _record(self, instance_id, fields):
        with self._changed:
            self.arrived[instance_id] = (time.time(), fields)
            self._changed.notify_all()

    def wait(self, ids: Iterable[str], timeout: float | None) -> set[str]:
        """Wait until one of ``ids`` calls back that had not yet, or ``timeout``; the ids that have."""
        ids = set(ids)
        with self._changed:
            before = ids & set(self.arrived)
            self._changed.wait_for(lambda: (ids & set(self.arrived)) - before, timeout=timeout)
            return ids & set(self.arrived)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
