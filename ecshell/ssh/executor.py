"""The client side of the persistent executor: one per pooled connection.

>>> cluster = Cluster(LocalFabric(), executor="auto")    # the default
>>> cluster.run("hostname")                             # doctest: +SKIP

With ``c.EcShell.executor`` at ``auto`` (or ``executor``), the first shell
command on a machine starts :mod:`ecshell.executor_remote` there over the
machine's pooled connection (``python3 -c`` with the code base64-encoded: no
install, no port). Every later command to that machine is one frame on that
same channel instead of a new SSH session plus a fork of sshd; the output
comes back in frames, demultiplexed by a reader thread to the command's
worker. A machine without python3 uses the channel path; an executor that
dies loses the commands it was running (each result says ``lost``), is
restarted once, and after a second death that connection uses the channel
path.

Results are the same as on the channel path: the executor runs the very
string :class:`~ecshell.commands.Shell` would hand sshd, in the user's login
shell, with sshd's environment and working directory, in a new session.

No reader thread: once the executor said hello, its channel's input buffer
is replaced by a :class:`_FrameSink`, so that paramiko's transport thread,
which decrypts the packets anyway, cuts them into frames and hands each to
its command's queue. It never blocks and never sends there (a send from the
transport thread could wait on a key re-exchange that only that thread can
finish): the SSH window it owes the server is sent by the workers
(:meth:`Executor.settle_window`), and a dead executor's channel is closed
from a short-lived thread.

Flow control: each command has a window of :data:`WINDOW` bytes; the worker
grants more as it moves output into the Result's OutputBuffer (which spills
to disk), so a host printing 50 MB holds at most about one window in memory
and stalls nothing but itself.
"""

import base64
import json
import os
import queue
import struct
import threading
import time
import zlib

import paramiko
from paramiko.common import cMSG_CHANNEL_WINDOW_ADJUST

from ..commands import KILL_TIMEOUT, NOT_STARTED, POLL, Stopped, next_chunk, run_token
from ..errors import ConnectError
from ..results import ErrorKind

HEADER = struct.Struct(">BII")
STATUS = struct.Struct(">IBi")  # pid, 1 if killed by a signal, exit code or signal number
WINDOW_FIELD = struct.Struct(">I")
RUN, INPUT, INPUT_EOF, CANCEL, GRANT = b"RIECW"
HELLO, STARTED, OUTPUT, EXIT, FAILED, KILLED = b"HSOXFK"
FLAG_INPUT = 1
FLAG_NO_SHORTCUT = 2

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

_LOST = object()


def _bootstrap():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "remote", "executor.py")
    with open(path, "rb") as f:
        source = f.read()
    packed = base64.b64encode(zlib.compress(source, 9)).decode("ascii")
    code = f"import base64,zlib;exec(zlib.decompress(base64.b64decode('{packed}')))"
    # -I: ignore PYTHON* variables and the user's site; -S: skip site (stdlib only, faster start).
    return f"exec python3 -I -S -c \"{code}\""


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


class Job:
    """One command in flight on an executor: its events arrive on ``events``."""

    __slots__ = ("id", "events", "granted_back", "pid")

    def __init__(self, ident):
        self.id = ident
        # (OUTPUT, bytes) | (EXIT, (pid, signalled, code)) | (FAILED, str) | (KILLED, None) | _LOST
        self.events = queue.SimpleQueue()
        self.granted_back = 0
        self.pid = None  # set when the executor says the shell started

    @property
    def started(self):
        return self.pid is not None


class Executor:
    """The executor process on one machine, reached over one channel of its connection."""

    def __init__(self, connection, channel, hello):
        self.connection = connection
        self.channel = channel
        self.hello = hello
        self.pid = hello.get("pid")
        self._send_lock = threading.Lock()
        self._jobs = {}
        self._jobs_lock = threading.Lock()
        self._next_id = 1
        self.dead = False
        self.why_dead = ""
        self._window_due = 0  # SSH window the server is owed for the bytes the sink took
        self._window_lock = threading.Lock()
        sink, buffered = _FrameSink(self), channel.in_buffer
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
        if not _FrameSink.fits(channel):
            channel.close()
            raise ExecutorUnavailable(f"paramiko {paramiko.__version__}'s Channel lacks what the frame sink "
                                      "stands in for; using one channel per command")
        try:
            channel.exec_command(wire())
            hello = _read_hello(channel, time.monotonic() + max(timeout, START_TIMEOUT), cancel)
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

    def submit(self, command, token=None, has_input=False, shortcut=True):
        """Start ``command`` (the shell string) on the machine, with ECSHELL_RUN=``token``; a Job.

        The executor runs ``<login shell> -c`` on what :meth:`Shell.wire` would
        give sshd, or, with ``shortcut``, execs the command itself when the
        shell would do nothing else (see ``executor_remote.Shortcut``).
        """
        if isinstance(command, str):
            command = command.encode("utf-8", "surrogateescape")
        token = token.encode("ascii") if token else b""
        with self._jobs_lock:
            if self.dead:
                raise EOFError(self.why_dead or "executor gone")
            ident = self._next_id
            self._next_id += 1
            job = Job(ident)
            self._jobs[ident] = job
        flags = (FLAG_INPUT if has_input else 0) | (0 if shortcut else FLAG_NO_SHORTCUT)
        self._send(RUN, ident, WINDOW_FIELD.pack(WINDOW) + bytes([flags, len(token)]) + token + command)
        return job

    def send_input(self, job, data):
        view = memoryview(data)
        for start in range(0, len(view), INPUT_CHUNK):
            self._send(INPUT, job.id, bytes(view[start:start + INPUT_CHUNK]))
        self._send(INPUT_EOF, job.id)

    def consumed(self, job, size):
        """The worker took ``size`` bytes: grant the window back in half-window steps."""
        job.granted_back += size
        if job.granted_back >= WINDOW // 2:
            grant, job.granted_back = job.granted_back, 0
            self._send(GRANT, job.id, WINDOW_FIELD.pack(grant))

    def cancel(self, job):
        """TERM the job's process group now, KILL it a second later; (KILLED, None) follows."""
        self._send(CANCEL, job.id)

    def forget(self, job):
        with self._jobs_lock:
            self._jobs.pop(job.id, None)

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

    # -- events, in paramiko's transport thread (see _FrameSink) ----------------

    def _dispatch(self, kind, ident, payload):
        job = self._jobs.get(ident)
        if job is None:
            return  # a cancelled command's late events
        if kind == OUTPUT:
            job.events.put((OUTPUT, payload))
        elif kind == STARTED:
            job.pid = WINDOW_FIELD.unpack(payload)[0]
        elif kind == KILLED:
            self.forget(job)
            job.events.put((KILLED, None))
        elif kind == EXIT:
            self.forget(job)
            job.events.put((EXIT, STATUS.unpack(payload)))
        elif kind == FAILED:
            self.forget(job)
            job.events.put((FAILED, payload.decode("utf-8", "replace")))

    def _die(self, why=""):
        with self._jobs_lock:
            if self.dead and not self._jobs:
                return
            self.dead = True
            jobs, self._jobs = list(self._jobs.values()), {}
        if not self.why_dead:
            self.why_dead = why or _stderr_tail(self.channel) or "its channel closed"
        for job in jobs:
            job.events.put(_LOST)
        # Closing sends a message: not from the transport thread, which may be the caller.
        threading.Thread(target=self.channel.close, name="ecshell-executor-close", daemon=True).start()

    def __repr__(self):
        state = "alive" if self.alive else "dead"
        return f"<Executor pid {self.pid} on {self.connection.endpoint} {state}>"


class _FrameSink:
    """Stands in for the executor channel's input buffer: cuts what paramiko feeds into frames.

    paramiko calls ``feed`` from its transport thread for every data packet of
    the channel, and ``close`` on EOF and on close; the rest is what Channel
    asks of its buffer when nobody reads it.
    """

    def __init__(self, executor):
        self.executor = executor
        self.buffer = bytearray()

    @staticmethod
    def fits(channel):
        """Whether ``channel`` has the paramiko internals this relies on (2.x to 5.x do)."""
        return (all(hasattr(channel, name) for name in
                    ("in_buffer", "in_stderr_buffer", "_check_add_window", "in_window_sofar", "remote_chanid",
                     "transport", "eof_received"))
                and hasattr(channel.in_buffer, "empty") and hasattr(channel.transport, "_send_user_message"))

    def feed(self, data):
        executor = self.executor
        try:
            due = executor.channel._check_add_window(len(data))
            if due:
                with executor._window_lock:
                    executor._window_due += due
            buffer = self.buffer
            buffer += data
            offset = 0
            while len(buffer) - offset >= HEADER.size:
                kind, ident, length = HEADER.unpack_from(buffer, offset)
                end = offset + HEADER.size + length
                if end > len(buffer):
                    break
                executor._dispatch(kind, ident, bytes(buffer[offset + HEADER.size:end]))
                offset = end
            del buffer[:offset]
        except Exception as exc:  # never into paramiko's transport thread: the executor is lost instead
            executor._die(f"unreadable frames from the executor ({exc!r})")

    def close(self):
        self.executor._die()

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
    buffer = b""
    while len(buffer) < HEADER.size or len(buffer) < HEADER.size + HEADER.unpack_from(buffer)[2]:
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
    return json.loads(buffer[HEADER.size:])


class _Slot:
    """The executor state of one pooled connection."""

    def __init__(self):
        self.lock = threading.Lock()
        self.executor = None
        self.starts = 0
        self.unavailable = None  # why the channel path is used for this connection
        self.starting = None  # an Event while a start runs in the background
        self.asked = 0  # commands that asked for the executor without waiting for it


_slots_lock = threading.Lock()


def _slot(connection):
    # Kept on the connection itself, so that it goes away with it (an executor refers
    # to its connection: a weak-keyed table would keep both alive).
    with _slots_lock:
        slot = getattr(connection, "_executor_slot", None)
        if slot is None:
            slot = connection._executor_slot = _Slot()
        return slot


def executor_for(connection, timeout, cancel=None, wait=True):
    """The live executor of ``connection``, or None and the reason there is none.

    Without one, a start begins. With ``wait``, this waits for it; without, the
    answer is None at once and the start goes on in the background, beginning
    only with the connection's second command: a machine asked once (a cold
    broadcast, a readiness check) never pays for python3 starting, and later
    commands find the executor ready.
    """
    slot = _slot(connection)
    while True:
        with slot.lock:
            if slot.executor is not None and slot.executor.alive:
                return slot.executor, None
            if not wait and slot.starting is None and slot.executor is None:
                slot.asked += 1
                if slot.asked < START_AFTER:
                    return None, "not started: the first command on a connection uses its own channel"
            if slot.unavailable is None and slot.starts >= MAX_STARTS and slot.starting is None:
                slot.unavailable = (f"the executor died {slot.starts} times on this connection "
                                    f"(last: {slot.executor.why_dead}); using one channel per command")
            if slot.unavailable is not None:
                return None, slot.unavailable
            starting = slot.starting
            if starting is None:
                slot.starts += 1
                starting = slot.starting = threading.Event()
                if not wait:
                    threading.Thread(target=_start, args=(slot, connection, timeout, None),
                                     name="ecshell-executor-start", daemon=True).start()
                    return None, "starting"
                break
        if not wait:
            return None, "starting"
        while not starting.wait(0.2):
            if cancel is not None and cancel.is_set():
                raise StartCancelled()
    _start(slot, connection, timeout, cancel, reraise=True)
    with slot.lock:
        if slot.executor is not None and slot.executor.alive:
            return slot.executor, None
        return None, slot.unavailable or "the executor went away as it started"


def _start(slot, connection, timeout, cancel, reraise=False):
    """Start the slot's executor; with ``reraise``, a dead connection's error goes to the caller."""
    executor, unavailable, cancelled, failure = None, None, False, None
    try:
        executor = Executor.start(connection, timeout, cancel)
    except StartCancelled:
        cancelled = True
    except ExecutorUnavailable as exc:
        unavailable = str(exc)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        if connection.alive:
            unavailable = f"the server refused the executor's session: {exc}"
        else:
            failure = exc
    with slot.lock:
        if executor is not None:
            slot.executor = executor
        if unavailable is not None:
            slot.unavailable = unavailable
        if cancelled:
            slot.starts -= 1
        slot.starting.set()
        slot.starting = None
    if cancelled:
        raise StartCancelled()
    if failure is not None and reraise:
        raise failure


def peek(connection):
    """The executor of ``connection`` if one was started, alive or not."""
    slot = getattr(connection, "_executor_slot", None)
    return slot.executor if slot is not None else None


def launch(shell, attempt):
    """Send ``shell`` at once if the machine's executor is up; the worker's :func:`execute` waits for it.

    Anything that would wait (connecting, starting an executor, feeding input)
    is left to the worker.
    """
    if shell.input is not None or attempt.cancel.is_set():
        return
    connection = attempt.engine.pool.peek(attempt.machine.endpoint)
    executor = peek(connection) if connection is not None else None
    if executor is None or not executor.alive:
        return
    token = run_token() if attempt.settings.kill_on_cancel else None
    try:
        job = executor.submit(shell.command, token, False, attempt.settings.executor_shortcut)
    except (paramiko.SSHException, EOFError, OSError):
        return  # never sent: the worker starts it over whatever connection is alive
    attempt.launched = (connection, executor, job, token, time.monotonic())


def execute(shell, attempt):
    """Run Shell ``shell`` through the machine's executor; None means: use the channel path."""
    timeout = shell.timeout if shell.timeout is not None else attempt.settings.command_timeout
    if attempt.launched is not None:
        connection, executor, job, token, sent = attempt.launched
        deadline = sent + timeout if timeout else None
        return _wait(shell, attempt, connection, executor, job, deadline, timeout, token)
    # The executor kills by process group; the token keeps the environment the same as on
    # the channel path (where it is what finds the processes to kill).
    token = run_token() if attempt.settings.kill_on_cancel else None
    while True:
        try:
            connection, executor, why = _executor(attempt)
        except StartCancelled:
            return attempt.result(shell, error=ErrorKind.INTERRUPTED,
                                  message="interrupted while the executor started; the command was not run")
        if executor is None:
            if attempt.settings.executor == "executor":
                return attempt.result(shell, error=ErrorKind.UNREACHABLE, message=(
                    f"no executor on {attempt.machine.name}: {why}; "
                    "c.EcShell.executor = 'auto' runs such machines over one channel per command"))
            return None
        if attempt.cancel.is_set():  # Ctrl-C came while connecting: do not start it now
            return attempt.result(shell, error=ErrorKind.INTERRUPTED, message=NOT_STARTED)
        # The command's clock starts once it can be sent, as on the channel path.
        deadline = time.monotonic() + timeout if timeout else None
        try:
            job = executor.submit(shell.command, token, shell.input is not None,
                                  attempt.settings.executor_shortcut)
            if shell.input is not None:
                _feed(executor, job, shell.input)
        except (paramiko.SSHException, EOFError, OSError):
            job = None
        if job is not None:
            return _wait(shell, attempt, connection, executor, job, deadline, timeout, token)
        # The command was never sent: the executor or its connection was gone already.
        if connection.alive:
            continue  # the executor restarts once, else the channel path takes over
        if attempt.reconnected:
            return attempt.result(shell, error=ErrorKind.LOST,
                                  message="connection lost before the command started; it was not run")
        attempt.engine.pool.discard(attempt.machine.endpoint, connection)
        attempt.reconnected = True


def _executor(attempt):
    """(connection, executor or None, why not) for the attempt's machine; replaces a dead connection once."""
    connection = attempt.connect()
    wait = attempt.settings.executor == "executor"
    try:
        executor, why = executor_for(connection, attempt.settings.connect_timeout, attempt.cancel, wait)
    except paramiko.ChannelException as exc:  # the server answered: no (MaxSessions, ...)
        raise ConnectError(ErrorKind.UNREACHABLE, f"the server refused a new session: {exc}") from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        # Anything else means the transport broke, even if its thread has not said so yet.
        if attempt.reconnected:
            raise ConnectError(ErrorKind.UNREACHABLE, f"the new connection failed too: {exc}") from None
        attempt.engine.pool.discard(attempt.machine.endpoint, connection)
        attempt.reconnected = True
        connection = attempt.connect()
        executor, why = executor_for(connection, attempt.settings.connect_timeout, attempt.cancel, wait)
    return connection, executor, why


def _wait(shell, attempt, connection, executor, job, deadline, timeout, token):
    """The job's Result (``lost`` if the executor dies once the command was sent)."""
    while True:
        stop = None
        if attempt.cancel.is_set():
            stop = ErrorKind.INTERRUPTED
        elif deadline is not None and time.monotonic() >= deadline:
            stop = ErrorKind.TIMEOUT
        if stop is not None:
            return _stop(shell, attempt, executor, job, token, stop, timeout)
        wait = POLL if deadline is None else max(0.001, min(POLL, deadline - time.monotonic()))
        try:
            event = job.events.get(timeout=wait)
        except queue.Empty:
            continue
        if executor._window_due:
            try:
                executor.settle_window()
            except (paramiko.SSHException, EOFError, OSError):
                pass  # the sink reports the executor's death as _LOST
        if event is _LOST:
            # The RUN frame went out: whether or not STARTED came back, the command may
            # have run, so it is lost, never sent again (only connecting is retried).
            return _lost(shell, attempt, connection, executor, job, token)
        kind, value = event
        if kind == OUTPUT:
            attempt.output(value)
            try:
                executor.consumed(job, len(value))
            except (paramiko.SSHException, EOFError, OSError):
                pass  # the sink reports the executor's death as _LOST
            continue
        if kind == FAILED:
            return attempt.result(shell, error=ErrorKind.UNREACHABLE, message=value)
        _, signalled, code = value
        if signalled:
            return attempt.result(shell, error=ErrorKind.EXIT, message="killed by a signal")
        if code == 0:
            return attempt.result(shell, exit_code=0)
        return attempt.result(shell, exit_code=code, error=ErrorKind.EXIT)


def _feed(executor, job, data):
    if len(data) <= 256 * 1024:
        executor.send_input(job, data)
        return

    def feed():
        try:
            executor.send_input(job, data)
        except (OSError, EOFError):
            pass  # the executor went away; the worker reports it

    threading.Thread(target=feed, name="ecshell-executor-stdin", daemon=True).start()


def _stop(shell, attempt, executor, job, token, kind, timeout):
    """Timeout or cancel: the executor TERMs the command's process group (KILL a second later)."""
    killed = "killed on the machine"
    try:
        executor.cancel(job)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        killed = f"could not kill it on the machine: {exc}"
    else:
        # Wait for the executor to confirm, as the channel path waits for its kill command.
        # Output that arrives meanwhile belongs to the result, as on the channel path.
        until = time.monotonic() + KILL_TIMEOUT
        while True:
            try:
                event = job.events.get(timeout=max(0.001, until - time.monotonic()))
            except queue.Empty:
                killed = f"could not kill it on the machine: no answer from the executor in {KILL_TIMEOUT:g}s"
                break
            if event is _LOST:
                killed = "the executor went away; its watcher killed it on the machine"
                break
            if event[0] == OUTPUT:
                attempt.output(event[1])
                continue
            break  # KILLED, or it exited just now
    executor.forget(job)
    detail = {"run": token, "pid": job.pid}
    message = f"no exit after {timeout:g}s" if kind is ErrorKind.TIMEOUT else "interrupted"
    return attempt.result(shell, error=kind, message=f"{message}; {killed}", detail=detail)


def _lost(shell, attempt, connection, executor, job, token):
    ran = time.monotonic() - attempt.started
    group = (f"its process group {job.pid}" if job.started
             else "whatever of it started (the machine had not yet confirmed the start)")
    if not connection.alive:
        return attempt.result(shell, error=ErrorKind.LOST, message=(
            f"connection lost while the command ran (after {ran:.1f}s); it was not re-run "
            f"and may or may not have finished ({group} is killed on the machine "
            "when the executor notices)"), detail={"run": token, "pid": job.pid})
    slot = _slot(connection)
    then = ("the executor restarts for the next command" if slot.starts < MAX_STARTS
            else "the next commands use one channel per command")
    return attempt.result(shell, error=ErrorKind.LOST, message=(
        f"the executor on the machine died while the command ran (after {ran:.1f}s; "
        f"{executor.why_dead}); {group} was killed and it was not re-run; {then}"),
        detail={"run": token, "pid": job.pid})
