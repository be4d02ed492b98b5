"""Pooled SSH connections: one authenticated paramiko Transport per endpoint.

Connections open lazily, in the broadcast's worker threads (so in parallel),
each within one deadline that covers TCP connect, banner, key exchange and
authentication: ``c.EcShell.connect_timeout``, or the host's ConnectTimeout
when ssh_config sets a shorter one (OpenSSH bounds only the TCP connect and
the banner with it; ecshell bounds the whole connect). Sockets carry
TCP_NODELAY (a command round trip on loopback costs ~4 ms instead of ~48 ms
under Nagle with delayed ACKs) and TCP keepalive with TCP_USER_TIMEOUT,
because paramiko's own keepalive never notices a peer that vanished: a peer
silent for ServerAliveInterval x ServerAliveCountMax seconds (when
ssh_config sets ServerAliveInterval; ``c.EcShell.dead_peer_timeout``
otherwise) is dead. A host reached through ProxyJump is a direct-tcpip
channel of its last hop's pooled connection; through ProxyCommand, a socket
pair with the command (:mod:`.proxycommand`). Keys are offered as OpenSSH
offers them (:mod:`.identities`).
"""

import errno
import os
import socket
import threading
import time

import paramiko
from paramiko.common import MSG_CHANNEL_REQUEST

from ..errors import ConnectError, ErrorKind
from . import proxycommand
from .identities import OPENSSH_DEFAULT_IDENTITIES, offered, open_agent, signer
from .keys import is_locked

WINDOW_SIZE = 4 * 1024 * 1024
MAX_PACKET = 32768
#: Seconds between an idle transport's reader-thread wakeups (paramiko's own is 0.1).
IDLE_WAKEUP = 1.0
#: Offered first: AES-GCM authenticates as it decrypts, so a packet needs no separate
#: HMAC, which paramiko computes and compares in Python (~15% of the client's CPU in a
#: warm broadcast). Only the order changes: hosts without GCM get paramiko's usual list.
AEAD_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _hear_exit_signals(transport):
    """Keep the signal name of sshd's ``exit-signal`` request on the channel, as ``channel.exit_signal``.

    paramiko drops that request (it knows exit-status only), so a command
    killed by a signal would have no name for it. Requests are dispatched
    through the transport's handler table: this transport gets its own.
    """
    table = getattr(transport, "_channel_handler_table", None)
    handle = table.get(MSG_CHANNEL_REQUEST) if isinstance(table, dict) else None
    if handle is None:
        return  # another paramiko: the command still ends as killed by a signal, unnamed

    def handle_request(channel, message):
        start = message.packet.tell()
        if message.get_text() == "exit-signal":
            message.get_boolean()  # want reply: sshd sends False
            channel.exit_signal = message.get_text()
        message.packet.seek(start)
        handle(channel, message)

    transport._channel_handler_table = {**table, MSG_CHANNEL_REQUEST: handle_request}


def _prefer_aead(transport):
    options = transport.get_security_options()
    offered = tuple(options.ciphers)
    first = tuple(c for c in AEAD_CIPHERS if c in offered)
    options.ciphers = first + tuple(c for c in offered if c not in first)


def _prefer_known_host_keys(transport, endpoint):
    """Offer first the host key types known for the endpoint, as ssh does (order_hostkeyalgs)."""
    options = transport.get_security_options()
    ordered = endpoint.verifier.order_key_types(endpoint.host, endpoint.port, tuple(options.key_types))
    options.key_types = ordered


def _verify_host_key(transport, endpoint):
    try:
        endpoint.verifier.verify(endpoint.host, endpoint.port, transport.get_remote_server_key())
    except ConnectError as exc:
        # The endpoint whose key this is: a jump host's, when its connection is the one refused.
        exc.detail.setdefault("endpoint", endpoint)
        raise


def _tune(sock, dead_peer_timeout):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = max(1, int(dead_peer_timeout / 3))
    for option, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3),
                          ("TCP_USER_TIMEOUT", int(dead_peer_timeout * 1000))):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class _HopChannel:
    """A jump host's direct-tcpip channel as the socket of the transport it carries.

    When the jump's connection dies first, paramiko's reader thread of the
    carried transport closes this channel over the dead jump, which raises
    in that thread (a traceback on stderr); here closing never raises.
    """

    def __init__(self, channel):
        self.channel = channel

    def __getattr__(self, name):
        return getattr(self.channel, name)

    def close(self):
        try:
            self.channel.close()
        except (EOFError, OSError, paramiko.SSHException):
            pass


def _remaining(deadline):
    return max(0.001, deadline - time.monotonic())


def _dead_peer_timeout(endpoint, settings):
    """Seconds of silence after which the peer is dead: ServerAlive* if ssh_config sets them."""
    if endpoint.server_alive_interval > 0:
        return endpoint.server_alive_interval * max(1, endpoint.server_alive_count_max)
    return settings.dead_peer_timeout


def _limit(endpoint, settings, deadline):
    """(the deadline, what set it) once the host's ConnectTimeout is counted in."""
    own = endpoint.connect_timeout
    if own and time.monotonic() + own < deadline:
        return time.monotonic() + own, f"{own:g}s (ConnectTimeout {own:g} in ssh_config)"
    return deadline, f"{settings.connect_timeout:g}s (c.EcShell.connect_timeout)"


class Connection:
    """An authenticated transport, plus a lazily opened SFTP session on it."""

    def __init__(self, transport, endpoint, via=None):
        self.transport = transport
        self.endpoint = endpoint
        self.via = via
        self.opened_at = time.time()
        self._sftp = None
        self._sftp_lock = threading.Lock()
        #: The channel commands running here, in the order they were sent: a kill tells them apart by it.
        self.commands = []
        self.commands_lock = threading.Lock()
        self.kill_lock = threading.Lock()

    @property
    def alive(self):
        return self.transport.is_active()

    def open_session(self, timeout):
        return self.transport.open_session(timeout=timeout)

    def sftp(self):
        """The connection's SFTP client; callers hold ``sftp_lock`` while using it.

        Raises ConnectError (that machine's result) when the server gives no SFTP session.
        """
        if self._sftp is None or self._sftp.sock.closed:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(self.transport)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if not self.alive:
                    raise ConnectError(ErrorKind.LOST, f"connection lost while opening SFTP ({exc})") from None
                raise ConnectError(ErrorKind.UNREACHABLE, (
                    f"{self.endpoint} gives no SFTP session ({exc or type(exc).__name__}): file transfers need "
                    "sshd's sftp subsystem ('Subsystem sftp internal-sftp' in its sshd_config)")) from None
        return self._sftp

    def forget(self, channel):
        """``channel``'s command no longer runs here."""
        with self.commands_lock:
            self.commands = [p for p in self.commands if p.channel is not channel]

    @property
    def sftp_lock(self):
        return self._sftp_lock

    def close(self):
        try:
            # shutdown, not just close: it wakes the transport's reader thread now
            # instead of at its next socket timeout.
            self.transport.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError, EOFError):
            pass
        try:
            self.transport.close()
        except Exception:
            pass

    def __repr__(self):
        state = "open" if self.alive else "closed"
        return f"<Connection {self.endpoint} {state}>"


def _worth_saying(identity):
    """Whether a skipped key belongs in the message: OpenSSH too is silent about absent default files."""
    if identity.path is None or os.path.exists(identity.path):
        return True
    return identity.path not in {os.path.expanduser(p) for p in OPENSSH_DEFAULT_IDENTITIES}


def _refusal(endpoint, tried, skipped, closed, asked_agent):
    said = f" (skipped: {'; '.join(skipped)})" if skipped else ""
    if closed:
        return (f"{endpoint} closed the connection after refusing {len(tried)} key(s), "
                f"{', '.join(tried)}: more than its MaxAuthTries allows{said}; name the right key "
                "for this host with IdentityFile and IdentitiesOnly yes")
    if tried:
        return (f"{endpoint} refused the key(s) {', '.join(tried)}{said}; "
                f"check authorized_keys for user {endpoint.user!r} on the host")
    places = ", ".join(endpoint.identity_files) or "no identity file"
    return (f"no usable key for {endpoint}: tried {places}{' and the agent' if asked_agent else ''}{said}; "
            "set IdentityFile in ssh_config, load a key into ssh-agent (ssh-add), or pass identity_files")


def _auth(transport, endpoint, deadline):
    """Public-key authentication as OpenSSH does it: its candidates, in its order (see identities.py)."""
    agent, agent_keys, trouble = open_agent(endpoint.identity_agent, _remaining(deadline))
    skipped = [trouble] if trouble else []
    try:
        candidates = offered(endpoint.identity_files, agent_keys, endpoint.identities_only,
                             endpoint.certificate_files, skipped)
        tried, closed, locked = [], False, []
        for identity in candidates:
            key, why = signer(identity, candidates, agent)
            if key is None:
                if _worth_saying(identity):
                    skipped.append(why)
                if identity.path is not None and is_locked(why):
                    locked.append(identity.path)
                continue
            transport.auth_timeout = _remaining(deadline)
            try:
                if not transport.auth_publickey(endpoint.user, key):
                    return  # fully authenticated
            except paramiko.BadAuthenticationType as exc:
                raise ConnectError(ErrorKind.AUTH, f"{endpoint} does not accept public keys "
                                   f"(it allows: {', '.join(exc.allowed_types)})") from None
            except (paramiko.SSHException, EOFError):
                if time.monotonic() >= deadline - 0.05:
                    raise  # connect() reports the deadline
                tried.append(identity.source + (" (the agent would not sign)" if key.refused else ""))
                if not transport.is_active():
                    closed = True  # sshd hangs up once MaxAuthTries keys have failed
                    break
                continue
            # partial success: the server wants another method we do not do
            raise ConnectError(ErrorKind.AUTH, f"{endpoint} asks for more than a key (multi-factor); not supported")
        # ``locked``: encrypted key files no agent holds, which the shell can ask the passphrase of
        raise ConnectError(ErrorKind.AUTH, _refusal(endpoint, tried, skipped, closed, agent is not None),
                           locked=locked)
    finally:
        if agent is not None:
            agent.close()


def _socket(endpoint, settings, deadline, pool, within=None):
    within = within or f"{settings.connect_timeout:g}s"
    if endpoint.proxy_jump is not None:
        try:
            jump = pool.get(endpoint.proxy_jump, deadline)
        except ConnectError as exc:
            hop = endpoint.proxy_jump.alias or endpoint.proxy_jump.host
            raise ConnectError(exc.kind, f"through ProxyJump {hop}: {exc}", **exc.detail) from None
        try:
            channel = jump.transport.open_channel(
                "direct-tcpip", (endpoint.host, endpoint.port), ("127.0.0.1", 0),
                timeout=_remaining(deadline))
        except paramiko.ChannelException as exc:
            raise ConnectError(ErrorKind.UNREACHABLE, f"jump host {jump.endpoint} cannot reach "
                               f"{endpoint.host}:{endpoint.port}: {exc.text}") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectError(ErrorKind.UNREACHABLE, f"through jump host {jump.endpoint}: {exc}") from None
        return _HopChannel(channel), jump
    if endpoint.proxy_command is not None:
        try:
            return proxycommand.start(endpoint.proxy_command), None
        except OSError as exc:
            raise ConnectError(ErrorKind.UNREACHABLE, f"cannot start ProxyCommand {endpoint.proxy_command!r}: "
                               f"{exc.strerror or exc}") from None
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=_remaining(deadline))
    except socket.timeout:
        raise ConnectError(ErrorKind.TIMEOUT, f"TCP connect to {endpoint.host}:{endpoint.port} "
                           f"timed out after {within}") from None
    except socket.gaierror as exc:
        raise ConnectError(ErrorKind.UNREACHABLE, f"cannot resolve {endpoint.host!r}: {exc.strerror}") from None
    except ConnectionRefusedError:
        raise ConnectError(ErrorKind.UNREACHABLE, f"connection refused by {endpoint.host}:{endpoint.port} "
                           "(no sshd listening there?)") from None
    except OSError as exc:
        if exc.errno == errno.ETIMEDOUT:
            raise ConnectError(ErrorKind.TIMEOUT, f"TCP connect to {endpoint.host}:{endpoint.port} timed out") from None
        raise ConnectError(ErrorKind.UNREACHABLE, f"{endpoint.host}:{endpoint.port}: {exc.strerror or exc}") from None
    _tune(sock, _dead_peer_timeout(endpoint, settings))
    return sock, None


def _proxy_said(sock, wait=proxycommand.HANGUP_GRACE):
    """What a ProxyCommand said before the connection failed ("" for other sockets)."""
    return f"; {sock.why(wait)}" if isinstance(sock, proxycommand.ProxySocket) else ""


def connect(endpoint, settings, deadline, pool):
    """A new authenticated Connection, or ConnectError naming the error kind."""
    deadline, within = _limit(endpoint, settings, deadline)
    sock, via = _socket(endpoint, settings, deadline, pool, within)
    transport = None
    try:
        transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE,
                                       default_max_packet_size=MAX_PACKET)
        _prefer_aead(transport)
        _hear_exit_signals(transport)
        _prefer_known_host_keys(transport, endpoint)
        transport.banner_timeout = _remaining(deadline)
        transport.handshake_timeout = _remaining(deadline)

        def hung():
            return ConnectError(ErrorKind.TIMEOUT, f"no SSH handshake from {endpoint.host}:{endpoint.port} "
                                f"within {within} (host hung or overloaded){_proxy_said(sock, 0)}")

        try:
            transport.start_client(timeout=_remaining(deadline))
        except paramiko.IncompatiblePeer as exc:
            if "host key" not in str(exc):
                raise ConnectError(ErrorKind.UNREACHABLE, f"SSH handshake with {endpoint.host}:{endpoint.port} "
                                   f"failed: {exc}") from None
            raise ConnectError(
                ErrorKind.HOSTKEY,
                f"{endpoint.host}:{endpoint.port} offers no host key type ecshell (paramiko) can use; it knows "
                f"{', '.join(transport.get_security_options().key_types)} (and their certificates). "
                "Give the host an ed25519, ECDSA or RSA (SHA-2) host key.",
                reason="unsupported", host=endpoint.host, port=endpoint.port, endpoint=endpoint) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if time.monotonic() >= deadline - 0.05:
                raise hung() from None
            raise ConnectError(ErrorKind.UNREACHABLE, f"SSH handshake with {endpoint.host}:{endpoint.port} "
                               f"failed: {exc or type(exc).__name__}{_proxy_said(sock)}") from None
        if not (transport.is_active() and transport.initial_kex_done):
            raise hung()  # start_client returns quietly when its timeout passes
        _verify_host_key(transport, endpoint)
        try:
            _auth(transport, endpoint, deadline)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if time.monotonic() >= deadline - 0.05:
                raise ConnectError(ErrorKind.TIMEOUT, f"authentication with {endpoint} did not finish "
                                   f"within {within}") from None
            raise ConnectError(ErrorKind.UNREACHABLE, f"connection to {endpoint} dropped during authentication: "
                               f"{exc or type(exc).__name__}") from None
        # paramiko's reader thread wakes on every socket timeout (0.1 s) to look for
        # a close; idle pooled connections then cost CPU in proportion to their number.
        # Connection.close shuts the socket down, which wakes the reader at once.
        transport.sock.settimeout(IDLE_WAKEUP)
        return Connection(transport, endpoint, via)
    except BaseException:
        if transport is not None:
            transport.close()
        else:
            sock.close()
        raise


class ConnectionPool:
    """At most one live connection per endpoint, opened on first use."""

    def __init__(self, settings):
        self.settings = settings
        self._connections = {}
        self._locks = {}
        self._guard = threading.Lock()

    def _lock(self, key):
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def get(self, endpoint, deadline=None):
        """A live connection for ``endpoint``, connecting if there is none."""
        if deadline is None:
            deadline = time.monotonic() + self.settings.connect_timeout
        key = endpoint.key
        connection = self._connections.get(key)
        if connection is not None and connection.alive:
            return connection
        with self._lock(key):
            connection = self._connections.get(key)
            if connection is not None and connection.alive:
                return connection
            if connection is not None:
                connection.close()
            if time.monotonic() >= deadline:  # waited out another thread's attempt
                raise ConnectError(ErrorKind.TIMEOUT, f"connecting to {endpoint} took past the deadline")
            connection = connect(endpoint, self.settings, deadline, self)
            self._connections[key] = connection
            return connection

    def peek(self, endpoint):
        """The pooled connection for ``endpoint`` if there is one, alive or not."""
        return self._connections.get(endpoint.key)

    def discard(self, endpoint, connection=None):
        """Drop (and close) the pooled connection, if it is still ``connection``."""
        key = endpoint.key
        with self._guard:
            current = self._connections.get(key)
            if current is not None and (connection is None or current is connection):
                del self._connections[key]
            else:
                current = None
        if current is not None:
            current.close()

    def close_all(self):
        with self._guard:
            connections = list(self._connections.values())
            self._connections.clear()
        # A jump host's connection is pooled before the ones through it: close those first.
        for connection in reversed(connections):
            connection.close()

    def connections(self):
        return list(self._connections.values())

    def __len__(self):
        return sum(1 for c in self._connections.values() if c.alive)
