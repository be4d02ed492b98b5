"""Phone-home: instances tell a small listener here when cloud-init has finished.

>>> ec2.listen_for_phone_home(host="10.0.0.5", public_url="http://10.0.0.5:8765/")   # doctest: +SKIP
>>> cluster.launch(3, name="web")     # readiness polls wake as instances call back  # doctest: +SKIP

The listener binds where it is asked (``DEFAULT_HOST``, loopback, unless told
otherwise). Each launch gets a secret of its own, delivered in the instances'
user data as the last part of the URL they post to; a call without a secret
the listener handed out is refused (403), as is a body past ``MAX_BODY`` or
without a plain ``Content-Length`` (411, 413), and nothing a caller sends
prints anything here. Even an accepted call is only a hint that short-cuts
the wait between readiness polls: the SSH check still runs against the
pinned host key; a phone-home that reports a different host key is logged as
suspicious and changes nothing.
"""

from __future__ import annotations

import hmac
import http.server
import logging
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterable
from typing import cast

log = logging.getLogger("ecshell")

_ID = re.compile(r"i-[0-9a-f]{8,32}")
#: Where the listener binds unless told: instances elsewhere need host= an address they reach.
DEFAULT_HOST = "127.0.0.1"
MAX_BODY = 64 * 1024
#: Seconds a caller has to send its request; a silent one does not hold a thread.
READ_TIMEOUT = 10.0


class PhoneHome:
    """An HTTP listener that records ``instance_id`` form posts (cloud-init's phone_home module)."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = 0, public_url: str | None = None) -> None:
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = READ_TIMEOUT

            def do_POST(self):
                self._reply(listener._answer(self.path, self.headers.get_all("Content-Length") or [],
                                             "Transfer-Encoding" in self.headers, self.rfile))

            def do_GET(self):
                self._reply(405)

            do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET

            def send_error(self, code, message=None, explain=None):  # malformed requests: no page, no log
                self._reply(code)

            def _reply(self, code):
                self.close_connection = True
                self.request_version = "HTTP/1.0"  # even for a line that is not HTTP: a status, not silence
                self.send_response_only(code)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()

            def log_message(self, *args):  # nothing a caller sends reaches the terminal
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a caller's broken connection: not news
                log.debug("phone-home: a call from %s broke off", client_address[0], exc_info=True)

        self._server = Server((host, port), Handler)
        # bound, so getsockname()'s (host, port): the host is a str, never bytes
        bound_host, bound_port = cast("tuple[str, int]", self._server.server_address[:2])
        self.url = public_url or f"http://{bound_host}:{bound_port}/"
        if not self.url.endswith("/"):
            self.url += "/"
        self._secrets: list[bytes] = []
        #: instance id -> (time of its call, the form fields it posted)
        self.arrived: dict[str, tuple[float, dict[str, str]]] = {}
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._server.serve_forever, name="ecshell-phone-home", daemon=True)
        self._thread.start()

    def url_for_launch(self) -> str:
        """A URL with a new secret in it, for the user data of one launch's instances."""
        secret = secrets.token_urlsafe(24)
        with self._changed:
            self._secrets.append(secret.encode())
        return self.url + secret

    def _known(self, secret: str) -> bool:
        given = secret.encode("utf-8", "replace")
        with self._changed:
            known = list(self._secrets)
        # every secret compared, each in constant time: how far a guess matched never shows
        return sum(hmac.compare_digest(given, s) for s in known) > 0

    def _answer(self, path, lengths, chunked, body) -> int:
        """The status for one POST; reads the body only for a caller with a secret and a fitting length."""
        secret = urllib.parse.urlsplit(path).path.rsplit("/", 1)[-1]
        if not self._known(secret):
            return 403
        if chunked or len(lengths) != 1 or not lengths[0].strip().isdecimal() or not lengths[0].isascii():
            return 411
        length = int(lengths[0])
        if length > MAX_BODY:
            return 413
        fields = urllib.parse.parse_qs(body.read(length).decode("utf-8", "replace"))
        instance_id = (fields.get("instance_id") or [""])[0]
        if not _ID.fullmatch(instance_id):
            return 400
        self._record(instance_id, {k: v[0] for k, v in fields.items()})
        return 200

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
