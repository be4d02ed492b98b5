"""The executor transport: commands as frames to a persistent executor on the machine.

>>> from ecshell import Cluster, LocalFabric
>>> cluster = Cluster(LocalFabric(), executor="auto")    # the default
>>> cluster.run("hostname")                             # doctest: +SKIP

With ``c.EcShell.executor`` at ``auto`` (or ``executor``), the commands to a
machine start :mod:`ecshell.remote.executor` there over its pooled connection
(``python3 -c`` with the code base64-encoded: no install, no port). Every
later command to that machine is one frame on that same channel instead of a
new SSH session plus a fork of sshd. A machine without python3 uses the
channel path; an executor that dies loses the commands it was running (each
result says ``lost``), is restarted once, and after a second death that
connection uses the channel path.

Results are the same as on the channel path: the executor runs the very
string sshd would get, in the user's login shell, with sshd's environment and
working directory, in a new session. The frame protocol is defined once, in
:mod:`ecshell.remote.executor`, and imported from there.

No reader thread: once the executor said hello, its channel's input buffer
is replaced by a :class:`FrameSink`, so that paramiko's transport thread,
which decrypts the packets anyway, cuts them into frames and hands each to
its command's queue. It never blocks and never sends there (a send from the
transport thread could wait on a key re-exchange that only that thread can
finish): the SSH window it owes the server is sent by the workers
(:meth:`ExecutorSession.settle_window`), and a dead executor's channel is
closed from a short-lived thread.

Flow control: each command has a window of :data:`WINDOW` bytes; the worker
grants more as it moves output into the Result's OutputBuffer (which spills
to disk), so a host printing 50 MB holds at most about one window in memory
and stalls nothing but itself.
"""

from __future__ import annotations

import base64
import json
import queue
import sys
import threading
import time
import zlib
from typing import Callable, Optional

import paramiko
from paramiko.common import cMSG_CHANNEL_WINDOW_ADJUST

from ..errors import ConnectError, ErrorKind
from ..remote import executor as remote
from ..remote.executor import (CANCEL, EXIT, FAILED, FLAG_INPUT, FLAG_NO_SHORTCUT, GRANT, HEADER, HELLO, INPUT,
                               INPUT_EOF, KILLED, OUTPUT, RUN, STARTED, STATUS, U32)
from .transport import (KILL_TIMEOUT, POLL, Broken, Exit, Lost, Process, Request, Stopped, Transport, next_chunk,
                        send_input, stopped)

#: Bytes of one command's output that may be in flight or queued before the worker takes them.
WINDOW = 1024 * 1024
#: Bytes of stdin per frame.
INPUT_CHUNK = 65536
#: Times an executor may be started on one connection (the first start and one restart).
MAX_STARTS = 2
#: In 'auto', the executor starts (in the background) with a connection's command number:
START_AFTER = 2
#: Seconds allowed, at least, for python3 to start on a machine and say hello.
START_TIMEOUT = 10.0
#: Bytes a hello may have (it is a small JSON object).
MAX_HELLO = 65536

_LOST = object()


def _bootstrap():
    with open(remote.__file__, "rb") as f:
        source = f.read()
    packed = base64.b64encode(zlib.compress(source, 9)).decode("ascii")
    code = f"import base64,zlib;exec(zlib.decompress(base64.b64decode('{packed}')))"
    # -I: ignore PYTHON* variables and the user's site; -S: skip site (stdlib only, faster start).
    # The argument: the environment sshd gave the login shell, as the shell's own /proc entry still
    # holds it (hex), read before the exec. What the shell's start-up exported since (BASH_ENV,
    # ~/.bashrc, ~/.zshenv) is not in it: each command's shell runs that start-up once, as under sshd.
    # At most HANDOVER_MAX bytes of it (3 hex characters each, under Linux's 128 KiB per argument); the
    # executor takes a longer one as cut and uses its own.
    handover = f"od -An -v -tx1 -N {remote.HANDOVER_MAX} /proc/$$/environ 2>/dev/null"
    return f"exec python3 -I -S -c \"{code}\" \"`{handover}`\""


_WIRE = None


def wire():
    """The command sshd runs to start the executor."""
    global _WIRE
    if _WIRE is None:
        _WIRE = _bootstrap()
    return _WIRE


class ExecutorUnavailable(Exception):
    """The executor could not be started on this machine (no python3, refused, ...)."""


class StartCancelled(Exception):
    """Ctrl-C (or the broadcast's deadline) came while the executor was starting."""


class ExecutorSession:
    """The executor process on one machine, reached over one channel of its connection."""

    def __init__(self, connection, channel, hello):
        self.connection = connection
        self.channel = channel
        self.hello = hello
        self.pid = hello.get("pid")
        self._send_lock = threading.Lock()
        self._running = {}
        self._running_lock = threading.Lock()
        self._next_id = 1
        self.dead = False
        self.why_dead = ""
        self._window_due = 0  # SSH window the server is owed for the bytes the sink took
        self._window_lock = threading.Lock()
        sink, buffered = FrameSink(self), channel.in_buffer
        channel.in_buffer = sink
        # Nothing but hello came before the first command; anything else (stderr's
        # traceback and EOF of a dying executor) reaches the sink from now on.
        leftover = buffered.empty()
        if leftover:
            sink.feed(leftover)
        if channel.eof_received or channel.closed:
            sink.close()

    @classmethod
    def start(cls, connection, timeout, cancel=None):
        """Start the executor on a fresh channel of ``connection``.

        Raises ExecutorUnavailable, or StartCancelled when ``cancel`` is set meanwhile.
        """
        channel = connection.open_session(timeout=timeout)
        if not FrameSink.fits(channel):
            channel.close()
            raise ExecutorUnavailable(f"paramiko {paramiko.__version__}'s Channel lacks what the frame sink "
                                      "stands in for; using one channel per command")
        try:
            channel.exec_command(wire())
            hello = _read_hello(channel, time.monotonic() + max(timeout, START_TIMEOUT), cancel)
            if hello.get("forced"):
                # The server owner's policy sees every command, through its own channel.
                raise ExecutorUnavailable("sshd forces a command on this machine (ForceCommand, or command= in "
                                          "authorized_keys): each command goes over its own channel, through it")
        except (paramiko.SSHException, EOFError, OSError, ExecutorUnavailable, StartCancelled):
            channel.close()
            raise
        channel.settimeout(None)
        return cls(connection, channel, hello)

    @property
    def alive(self):
        return not self.dead and not self.channel.closed and self.connection.alive

    # -- sending ------------------------------------------------------------

    def _send(self, kind, ident, payload=b""):
        frame = HEADER.pack(kind, ident, len(payload)) + payload
        with self._send_lock:
            self.channel.sendall(frame)

    def submit(self, request: Request) -> "ExecutorProcess":
        """Send ``request`` to the executor; the process its events arrive on.

        The executor runs ``<login shell> -c`` on what sshd would get on the
        channel path, or, with ``request.shortcut``, execs the command itself
        when the shell would do nothing else (see ``remote.executor.Shortcut``).
        """
        command = request.command.encode("utf-8", "surrogateescape")
        token = request.token.encode("ascii") if request.token else b""
        with self._running_lock:
            if self.dead:
                raise EOFError(self.why_dead or "executor gone")
            ident = self._next_id
            self._next_id += 1
            process = ExecutorProcess(self, ident, request.token)
            self._running[ident] = process
        flags = (FLAG_INPUT if request.input is not None else 0) | (0 if request.shortcut else FLAG_NO_SHORTCUT)
        self._send(RUN, ident, U32.pack(WINDOW) + bytes([flags, len(token)]) + token + command)
        return process

    def send_input(self, process, data):
        view = memoryview(data)
        for start in range(0, len(view), INPUT_CHUNK):
            self._send(INPUT, process.id, bytes(view[start:start + INPUT_CHUNK]))

    def end_input(self, process):
        self._send(INPUT_EOF, process.id)

    def consumed(self, process, size):
        """The worker took ``size`` bytes: grant the window back in half-window steps."""
        process.granted_back += size
        if process.granted_back >= WINDOW // 2:
            grant, process.granted_back = process.granted_back, 0
            self._send(GRANT, process.id, U32.pack(grant))

    def cancel(self, process):
        """TERM the command's process group now, KILL it a second later; (KILLED, None) follows."""
        self._send(CANCEL, process.id)

    def forget(self, process):
        with self._running_lock:
            self._running.pop(process.id, None)

    def close(self):
        self.dead = True
        self.channel.close()

    def settle_window(self):
        """Send the server the SSH window the sink took (from a worker, never the transport thread)."""
        if not self._window_due:
            return
        with self._window_lock:
            due, self._window_due = self._window_due, 0
            if due and not self.dead:
                message = paramiko.Message()
                message.add_byte(cMSG_CHANNEL_WINDOW_ADJUST)
                message.add_int(self.channel.remote_chanid)
                message.add_int(due)
                self.channel.transport._send_user_message(message)

    # -- events, in paramiko's transport thread (see FrameSink) ----------------

    def dispatch(self, kind, ident, payload):
        process = self._running.get(ident)
        if process is None:
            return  # a cancelled command's late events
        if kind == OUTPUT:
            process.events.put((OUTPUT, payload))
        elif kind == STARTED:
            process.pid = U32.unpack_from(payload)[0]
            if payload[U32.size:] == b"\1":
                process.via = "shortcut"
        elif kind == KILLED:
            self.forget(process)
            process.events.put((KILLED, None))
        elif kind == EXIT:
            self.forget(process)
            process.events.put((EXIT, STATUS.unpack_from(payload) + (payload[STATUS.size:].decode("ascii", "replace"),)))
        elif kind == FAILED:
            self.forget(process)
            process.events.put((FAILED, payload.decode("utf-8", "replace")))

    def owe_window(self, due):
        with self._window_lock:
            self._window_due += due

    def die(self, why=""):
        with self._running_lock:
            if self.dead and not self._running:
                return
            self.dead = True
            running, self._running = list(self._running.values()), {}
        if not self.why_dead:
            self.why_dead = why or _stderr_tail(self.channel) or "its channel closed"
        for process in running:
            process.events.put(_LOST)
        self._close_channel()

    def _close_channel(self):
        """Close our side of a channel the executor is gone from, unless it is closing already.

        The sink calls :meth:`die` with the channel's lock held (on EOF, and
        from the channel's own close): closing sends a message, which must not
        happen there, so a short thread does it. A channel already marked
        closed (its own close, the transport ending, a ``__del__``) needs
        nothing; and while the interpreter shuts down no new thread ever runs
        (``Thread.start`` would wait forever), so nothing is started then.
        """
        if self.channel.closed or sys.is_finalizing():
            return
        threading.Thread(target=self.channel.close, name="ecshell-executor-close", daemon=True).start()

    def __repr__(self):
        state = "alive" if self.alive else "dead"
        return f"<ExecutorSession pid {self.pid} on {self.connection.endpoint} {state}>"


class FrameSink:
    """Stands in for the executor channel's input buffer: cuts what paramiko feeds into frames.

    paramiko calls ``feed`` from its transport thread for every data packet of
    the channel, and ``close`` on EOF and on close; the rest is what Channel
    asks of its buffer when nobody reads it.
    """

    def __init__(self, session):
        self.session = session
        self.buffer = bytearray()

    @staticmethod
    def fits(channel):
        """Whether ``channel`` has the paramiko internals this relies on (2.x to 5.x do)."""
        return (all(hasattr(channel, name) for name in
                    ("in_buffer", "in_stderr_buffer", "_check_add_window", "in_window_sofar", "remote_chanid",
                     "transport", "eof_received"))
                and hasattr(channel.in_buffer, "empty") and hasattr(channel.transport, "_send_user_message"))

    def feed(self, data):
        session = self.session
        try:
            due = session.channel._check_add_window(len(data))
            if due:
                session.owe_window(due)
            buffer = self.buffer
            buffer += data
            offset = 0
            while len(buffer) - offset >= HEADER.size:
                kind, ident, length = HEADER.unpack_from(buffer, offset)
                end = offset + HEADER.size + length
                if end > len(buffer):
                    break
                session.dispatch(kind, ident, bytes(buffer[offset + HEADER.size:end]))
                offset = end
            del buffer[:offset]
        except Exception as exc:  # never into paramiko's transport thread: the executor is lost instead
            session.die(f"unreadable frames from the executor ({exc!r})")

    def close(self):
        self.session.die()

    def read_ready(self):
        return False

    def set_event(self, event):
        pass

    def empty(self):
        return b""

    def __len__(self):
        return 0


def _stderr_tail(channel):
    """The end of what the executor printed on stderr (a traceback), taken without sending:
    the sink calls this from paramiko's transport thread, where recv_stderr might send a
    window adjustment."""
    data = channel.in_stderr_buffer.empty()
    return data[-4096:].decode("utf-8", "replace").strip()[-300:]


def _read_hello(channel, deadline, cancel=None):
    """The executor's hello, or ExecutorUnavailable as soon as the first bytes cannot be one."""
    buffer = b""
    while len(buffer) < HEADER.size or len(buffer) < HEADER.size + HEADER.unpack_from(buffer)[2]:
        if len(buffer) >= HEADER.size:
            kind, _, length = HEADER.unpack_from(buffer)
            if kind != HELLO or length > MAX_HELLO:  # something else answers (a python3 that is not one)
                raise ExecutorUnavailable(f"unexpected first bytes from the executor: {buffer[:60]!r}")
        try:
            data = next_chunk(channel, deadline, cancel)
        except Stopped as stop:
            if stop.kind is ErrorKind.INTERRUPTED:
                raise StartCancelled() from None
            raise ExecutorUnavailable("the executor did not say hello in time (python3 too slow to start?)") from None
        if not data:
            status = channel.recv_exit_status() if channel.status_event.wait(1.0) else -1
            why = _stderr_tail(channel)
            if status == 127:
                why = "no python3 on the machine" + (f" ({why})" if why else "")
            raise ExecutorUnavailable(why or f"the executor exited with status {status} before it started")
        buffer += data
    kind, _, length = HEADER.unpack_from(buffer)
    if kind != HELLO or len(buffer) != HEADER.size + length:
        raise ExecutorUnavailable(f"unexpected first bytes from the executor: {buffer[:60]!r}")
    try:
        hello = json.loads(buffer[HEADER.size:])
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        hello = None
    if not isinstance(hello, dict):
        raise ExecutorUnavailable(f"an executor hello that is not one: {buffer[:60]!r}")
    return hello


class Slot:
    """The executor state of one pooled connection."""

    def __init__(self):
        self.lock = threading.Lock()
        self.session = None
        self.starts = 0
        self.unavailable = None  # why the channel path is used for this connection
        self.starting = None  # an Event while a start runs in the background
        self.asked = 0  # commands that asked for the executor without waiting for it


_slots_lock = threading.Lock()


def slot(connection) -> Slot:
    """The executor state of ``connection``, kept on the connection itself.

    An executor refers to its connection: a weak-keyed table would keep both alive.
    """
    with _slots_lock:
        found = getattr(connection, "executor_slot", None)
        if found is None:
            found = connection.executor_slot = Slot()
        return found


def peek(connection) -> Optional[ExecutorSession]:
    """The executor of ``connection`` if one was started, alive or not."""
    found = getattr(connection, "executor_slot", None)
    return found.session if found is not None else None


def session_for(connection, timeout, cancel=None, wait=True):
    """The live executor of ``connection``, or None and the reason there is none.

    Without one, a start begins. With ``wait``, this waits for it; without, the
    answer is None at once and the start goes on in the background, beginning
    only with the connection's second command: a machine asked once (a cold
    broadcast, a readiness check) never pays for python3 starting, and later
    commands find the executor ready.
    """
    state = slot(connection)
    while True:
        with state.lock:
            if state.session is not None and state.session.alive:
                return state.session, None
            if not wait and state.starting is None and state.session is None:
                state.asked += 1
                if state.asked < START_AFTER:
                    return None, "not started: the first command on a connection uses its own channel"
            if state.unavailable is None and state.starts >= MAX_STARTS and state.starting is None:
                last = state.session.why_dead if state.session is not None else "it never said hello"
                state.unavailable = (f"the executor died {state.starts} times on this connection "
                                     f"(last: {last}); using one channel per command")
            if state.unavailable is not None:
                return None, state.unavailable
            starting = state.starting
            if starting is None:
                state.starts += 1
                starting = state.starting = threading.Event()
                if not wait:
                    threading.Thread(target=_start, args=(state, connection, timeout, None),
                                     name="ecshell-executor-start", daemon=True).start()
                    return None, "starting"
                break
        if not wait:
            return None, "starting"
        while not starting.wait(0.2):
            if cancel is not None and cancel.is_set():
                raise StartCancelled()
    _start(state, connection, timeout, cancel, reraise=True)
    with state.lock:
        if state.session is not None and state.session.alive:
            return state.session, None
        return None, state.unavailable or "the executor went away as it started"


def _start(state, connection, timeout, cancel, reraise=False):
    """Start the slot's executor; with ``reraise``, a dead connection's error goes to the caller."""
    session, unavailable, cancelled, failure = None, None, False, None
    try:
        session = ExecutorSession.start(connection, timeout, cancel)
    except StartCancelled:
        cancelled = True
    except ExecutorUnavailable as exc:
        unavailable = str(exc)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        if connection.alive:
            unavailable = f"the server refused the executor's session: {exc}"
        else:
            failure = exc
    with state.lock:
        if session is not None:
            state.session = session
        if unavailable is not None:
            state.unavailable = unavailable
        if cancelled:
            state.starts -= 1
        state.starting.set()
        state.starting = None
    if cancelled:
        raise StartCancelled()
    if failure is not None and reraise:
        raise failure


class ExecutorTransport(Transport):
    """Starts commands as frames to the live executor of one connection."""

    def __init__(self, connection, session: ExecutorSession):
        self.connection = connection
        self.session = session

    @classmethod
    def find(cls, connection, timeout, cancel, wait) -> tuple[Optional["ExecutorTransport"], Optional[str]]:
        """The transport to ``connection``'s executor, or None and why there is none (see :func:`session_for`).

        Raises :class:`Broken` if the connection broke on the way.
        """
        try:
            session, why = session_for(connection, timeout, cancel, wait)
        except StartCancelled:
            raise ConnectError(ErrorKind.INTERRUPTED,
                               "interrupted while the executor started; the command was not run") from None
        except paramiko.ChannelException as exc:  # the server answered: no (MaxSessions, ...)
            raise ConnectError(ErrorKind.UNREACHABLE, f"the server refused a new session: {exc}") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise Broken(str(exc)) from None
        return (cls(connection, session) if session is not None else None), why

    @classmethod
    def live(cls, connection) -> Optional["ExecutorTransport"]:
        """The transport to ``connection``'s executor if it is up now, else None; never waits."""
        session = peek(connection)
        return cls(connection, session) if session is not None and session.alive else None

    def start(self, request: Request) -> "ExecutorProcess":
        session = self.session
        try:
            process = session.submit(request)
            if request.input is not None:  # else the executor closed its stdin already (no FLAG_INPUT)
                send_input(lambda data: session.send_input(process, data), lambda: session.end_input(process),
                           request.input)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            # Never sent: the executor or its connection was gone already.
            raise Broken(str(exc), reconnect=not self.connection.alive) from None
        return process


class ExecutorProcess(Process):
    """One command in flight on an executor; the frame sink puts its events on ``events``."""

    via = "executor"  # "shortcut" once the executor says it exec'd the command without the shell

    def __init__(self, session: ExecutorSession, ident: int, token: Optional[str]):
        self.session = session
        self.connection = session.connection
        self.id = ident
        self.token = token
        # (OUTPUT, bytes) | (EXIT, (pid, signalled, code, signal name)) | (FAILED, str) | (KILLED, None) | _LOST
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.granted_back = 0
        self.pid: Optional[int] = None  # set when the executor says the shell started
        self.sent_at = time.monotonic()  # made as its RUN frame goes out: the command's clock starts
        self.exit: Optional[Exit] = None

    @property
    def detail(self):
        return {"run": self.token, "pid": self.pid}

    def read(self, deadline, cancel) -> bytes:
        if self.exit is not None:
            return b""
        session = self.session
        while True:
            stopped(deadline, cancel)
            wait = POLL if deadline is None else max(0.001, min(POLL, deadline - time.monotonic()))
            try:
                event = self.events.get(timeout=wait)
            except queue.Empty:
                continue
            try:
                session.settle_window()
            except (paramiko.SSHException, EOFError, OSError):
                pass  # the sink reports the executor's death as _LOST
            if event is _LOST:
                # The RUN frame went out: whether or not STARTED came back, the command may
                # have run, so it is lost, never sent again (only connecting is retried).
                raise Lost(self._lost())
            kind, value = event
            if kind == OUTPUT:
                try:
                    session.consumed(self, len(value))
                except (paramiko.SSHException, EOFError, OSError):
                    pass  # the sink reports the executor's death as _LOST
                return value
            if kind == FAILED:
                raise ConnectError(ErrorKind.UNREACHABLE, value)
            _, signalled, code, name = value
            self.exit = Exit(None, name or None) if signalled else Exit(code)
            return b""

    def wait(self, deadline, cancel) -> Exit:
        while self.exit is None:
            self.read(deadline, cancel)  # output after EOF cannot come: the exit frame follows EOF
        return self.exit

    def kill(self, output: Callable[[bytes], None]) -> str:
        """The executor TERMs the command's process group (KILL a second later) and confirms."""
        try:
            self.session.cancel(self)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            return f"could not kill it on the machine: {exc}"
        # Output that arrives meanwhile belongs to the result, as on the channel path.
        until = time.monotonic() + KILL_TIMEOUT
        while True:
            try:
                event = self.events.get(timeout=max(0.001, until - time.monotonic()))
            except queue.Empty:
                return f"could not kill it on the machine: no answer from the executor in {KILL_TIMEOUT:g}s"
            if event is _LOST:
                return "the executor went away; its watcher killed it on the machine"
            if event[0] == OUTPUT:
                output(event[1])
                continue
            return "killed on the machine"  # KILLED, or it exited just now

    def close(self) -> None:
        self.session.forget(self)

    def _lost(self):
        ran = time.monotonic() - self.sent_at
        group = (f"its process group {self.pid}" if self.pid is not None
                 else "whatever of it started (the machine had not yet confirmed the start)")
        if not self.connection.alive:
            return (f"connection lost while the command ran (after {ran:.1f}s); it was not re-run "
                    f"and may or may not have finished ({group} is killed on the machine "
                    "when the executor notices)")
        then = ("the executor restarts for the next command" if slot(self.connection).starts < MAX_STARTS
                else "the next commands use one channel per command")
        return (f"the executor on the machine died while the command ran (after {ran:.1f}s; "
                f"{self.session.why_dead}); {group} was killed and it was not re-run; {then}")
