"""Commands: the operations a broadcast runs on each machine.

A Command is a small object with ``execute(attempt) -> Result``; the
:class:`Attempt` gives it the machine's pooled connection, the clock, the
cancel flag and the output buffer. Behaviour is added by wrapping a command,
never by growing Machine.

>>> Shell("uptime", timeout=10)
Shell('uptime', timeout=10)
"""

import os
import posixpath
import secrets
import socket
import threading
import time

from .errors import ArgumentError, ConnectError
from .output import OutputBuffer
from .results import ErrorKind, Result

#: How often a worker blocked on a quiet channel looks at its cancel flag (seconds).
POLL = 0.2
#: Every tracked command runs with this variable set to a fresh token, so that its
#: processes can be found on the machine (by command line or environment) to be killed.
RUN_VARIABLE = "ECSHELL_RUN"
NOT_STARTED = "interrupted before the command started; it was not run"
#: Seconds a kill of a timed-out or interrupted command may take.
KILL_TIMEOUT = 2.0


class Attempt:
    """One machine's run of one command: its clock, connection and output."""

    def __init__(self, machine, engine, cancel, on_output=None):
        self.machine = machine
        self.engine = engine
        self.settings = engine.settings
        self.cancel = cancel
        self.on_output = on_output
        self.started = time.monotonic()
        self.buffer = OutputBuffer(self.settings.output_memory_limit, self.settings.spill_dir)
        self.reconnected = False
        self.launched = None  # what Command.launch started, for execute to take over

    def connect(self):
        deadline = time.monotonic() + self.settings.connect_timeout
        endpoint = self.machine.endpoint
        previous = self.engine.pool.peek(endpoint)
        connection = self.engine.pool.get(endpoint, deadline)
        if previous is not None and previous is not connection:
            self.reconnected = True  # the pooled connection had died and was replaced
        return connection

    def open_session(self):
        """A new channel on the pooled connection; a dead connection is replaced once."""
        import paramiko

        connection = self.connect()
        try:
            channel = connection.open_session(timeout=self.settings.connect_timeout)
        except paramiko.ChannelException as exc:  # the server answered: no (MaxSessions, ...)
            raise ConnectError(ErrorKind.UNREACHABLE, f"the server refused a new session: {exc}") from None
        except (paramiko.SSHException, EOFError, OSError):
            # Anything else means the transport broke, even if its thread has not said so yet.
            self.engine.pool.discard(self.machine.endpoint, connection)
            self.reconnected = True
            connection = self.connect()
            channel = connection.open_session(timeout=self.settings.connect_timeout)
        return connection, channel

    def output(self, data):
        self.buffer.write(data)
        if self.on_output is not None:
            self.on_output(self.machine, data)

    def result(self, command, exit_code=None, error=None, message="", detail=None):
        self.buffer.close()
        return Result(self.machine, command, self.buffer, exit_code, error, message,
                      time.monotonic() - self.started, self.reconnected, detail)


class Command:
    """Base class: ``execute(attempt)`` returns the machine's Result."""

    timeout = None

    def launch(self, attempt):
        """Start now, from the broadcasting thread, if that takes no waiting; else do nothing.

        ``execute(attempt)`` follows in a worker either way and finishes the job.
        """

    def execute(self, attempt):
        raise NotImplementedError

    def __str__(self):
        return repr(self)


class Shell(Command):
    """Run a shell string in the user's login shell, as ``ssh host CMD`` would.

    Output is stdout and stderr combined on the channel, in arrival order.
    stdin is closed at once unless ``input`` (bytes or str) is given. No PTY
    unless ``pty=True``. On timeout or cancel the command is killed on the
    machine: it runs with ``ECSHELL_RUN=<token>`` exported, which every process
    it starts inherits, and a second channel kills the processes (and their
    process groups) that carry the token. That costs nothing on the wire while
    the command runs, and works for root too (OpenSSH refuses the SSH
    ``signal`` request for root sessions). Finding them needs Linux's /proc.
    """

    def __init__(self, command, timeout=None, input=None, pty=False):
        if not isinstance(command, str) or not command.strip():
            raise ArgumentError("give the command as a non-empty string, e.g. run('uptime')")
        if timeout is not None and timeout <= 0:
            raise ArgumentError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.command = command
        self.timeout = timeout
        self.input = input.encode() if isinstance(input, str) else input
        self.pty = pty

    def __repr__(self):
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("timeout", "pty") if getattr(self, k))
        return f"Shell({self.command!r}{extra})"

    def __str__(self):
        return self.command

    #: Whether this command may go through the machine's persistent executor (issue 7).
    via_executor = True

    def wire(self, token=None):
        """The string sshd hands the login shell: with a ``token``, ECSHELL_RUN exported first."""
        return f"export {RUN_VARIABLE}={token}\n{self.command}" if token else self.command

    def launch(self, attempt):
        if self.via_executor and not self.pty and attempt.settings.executor != "channel":
            from .ssh import executor
            executor.launch(self, attempt)

    def execute(self, attempt):
        import paramiko

        if self.via_executor and not self.pty and attempt.settings.executor != "channel":
            from .ssh import executor
            result = executor.execute(self, attempt)
            if result is not None:
                return result  # else: no executor on this machine; one channel for this command
        token = run_token() if attempt.settings.kill_on_cancel else None
        connection, channel = attempt.open_session()
        if attempt.cancel.is_set():  # Ctrl-C came while connecting: do not start it now
            channel.close()
            return attempt.result(self, error=ErrorKind.INTERRUPTED, message=NOT_STARTED)
        timeout = self.timeout if self.timeout is not None else attempt.settings.command_timeout
        try:
            channel.set_combine_stderr(True)
            if self.pty:
                channel.get_pty(term="xterm", width=200, height=50)
            channel.exec_command(self.wire(token))
            deadline = time.monotonic() + timeout if timeout else None
            self._send_input(channel)
            return self._read(attempt, connection, channel, deadline, token)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not connection.alive:
                return attempt.result(self, error=ErrorKind.LOST,
                                      message=f"connection lost before the command started ({exc}); it was not run")
            return attempt.result(self, error=ErrorKind.UNREACHABLE, message=f"the server refused the command: {exc}")
        finally:
            channel.close()

    def _send_input(self, channel):
        if self.input is None:
            channel.shutdown_write()
            return
        if len(self.input) <= 256 * 1024:
            channel.sendall(self.input)
            channel.shutdown_write()
            return

        def feed():
            try:
                channel.sendall(self.input)
                channel.shutdown_write()
            except (OSError, EOFError):
                pass  # the command exited without reading everything

        threading.Thread(target=feed, name="ecshell-stdin", daemon=True).start()

    def _read(self, attempt, connection, channel, deadline, token):
        try:
            while data := next_chunk(channel, deadline, attempt.cancel):
                attempt.output(data)
        except Stopped as stop:
            return self._stop(attempt, connection, channel, token, stop.kind)
        return self._finish(attempt, connection, channel, deadline, token)

    def _finish(self, attempt, connection, channel, deadline, token):
        # EOF came; the exit status arrives just before or after the channel closes.
        while not channel.status_event.wait(POLL):
            if attempt.cancel.is_set() or (deadline is not None and time.monotonic() > deadline):
                break
        status = channel.exit_status if channel.exit_status_ready() else -1
        if status == -1 or not channel.status_event.is_set():
            if not connection.alive:
                where = f" (its processes carry {RUN_VARIABLE}={token})" if token else ""
                return attempt.result(self, error=ErrorKind.LOST, message=(
                    f"connection lost while the command ran (after {time.monotonic() - attempt.started:.1f}s); "
                    f"it was not re-run and may or may not have finished{where}"), detail={"run": token})
            return attempt.result(self, error=ErrorKind.EXIT, message="killed by a signal")
        if status == 0:
            return attempt.result(self, exit_code=0)
        return attempt.result(self, exit_code=status, error=ErrorKind.EXIT)

    def _stop(self, attempt, connection, channel, token, kind):
        """Timeout or cancel: kill the command's processes on the machine."""
        killed = ""
        if token is not None and connection.alive:
            killed = kill_run(connection, token)
        channel.close()
        if kind is ErrorKind.TIMEOUT:
            message = f"no exit after {self.timeout or attempt.settings.command_timeout:g}s"
        else:
            message = "interrupted"
        return attempt.result(self, error=kind, message=message + (f"; {killed}" if killed else ""),
                              detail={"run": token})


class Stopped(Exception):
    """Raised by :func:`next_chunk`: ``kind`` is TIMEOUT (deadline) or INTERRUPTED (cancel)."""

    def __init__(self, kind):
        super().__init__(kind.value)
        self.kind = kind


def next_chunk(channel, deadline=None, cancel=None):
    """The next bytes from ``channel`` (``b""`` at EOF), never waiting past ``deadline``.

    ``deadline`` is a ``time.monotonic()`` value or None; ``cancel`` an Event
    looked at every POLL seconds while the channel is quiet. Raises
    :class:`Stopped` when the one is set or the other passes first.
    """
    while True:
        if cancel is not None and cancel.is_set():
            raise Stopped(ErrorKind.INTERRUPTED)
        wait = POLL
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Stopped(ErrorKind.TIMEOUT)
            wait = min(wait, left)
        channel.settimeout(wait)
        try:
            return channel.recv(65536)
        except socket.timeout:
            continue


def run_token():
    """A fresh value for ECSHELL_RUN: unique per command run."""
    return secrets.token_hex(8)


def kill_run(connection, token):
    """TERM every process carrying ECSHELL_RUN=token (and its process group), KILL a second later.

    Returns a note for the result. Runs on a new channel of the same
    connection. The pattern's bracket keeps the killer itself from matching:
    its own command line holds ``=[x]yz...``, which the regex does not match.
    The shell may not have started yet when a Ctrl-C comes, so an empty
    search is tried again for half a second.
    """
    import paramiko

    pattern = f"{RUN_VARIABLE}=[{token[0]}]{token[1:]}"
    script = (
        "n=0; while :; do "
        f"p=$(grep -ls -e '{pattern}' /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null "
        "| cut -d/ -f3 | sort -u); "
        '[ -n "$p" ] || [ $n -ge 5 ] && break; n=$((n+1)); sleep 0.1; done; '
        'for q in $p; do kill -TERM -- -$q $q 2>/dev/null; done; '
        '(sleep 1; for q in $p; do kill -KILL -- -$q $q 2>/dev/null; done) >/dev/null 2>&1 </dev/null & '
        'echo $p'
    )
    try:
        channel = connection.open_session(timeout=KILL_TIMEOUT)
        try:
            channel.settimeout(KILL_TIMEOUT)
            channel.exec_command(script)
            channel.shutdown_write()
            out = b""
            while True:
                data = channel.recv(4096)
                if not data:
                    break
                out += data
        finally:
            channel.close()
    except (paramiko.SSHException, EOFError, OSError, socket.timeout) as exc:
        return f"could not kill it on the machine: {exc}"
    if not out.split():
        return "nothing left to kill on the machine"
    return "killed on the machine"


def _remote_path(path):
    # SFTP paths are relative to the login directory; "~/x" means just that.
    if path == "~":
        return "."
    return path[2:] if path.startswith("~/") else path


class Put(Command):
    """Copy a local file to ``remote`` on each machine over the pooled connection (SFTP).

    ``{name}`` in ``remote`` becomes each machine's name, for machines that
    share a filesystem or want their copy named after themselves.
    """

    def __init__(self, local, remote, mode=None):
        local = os.path.expanduser(local)
        if not os.path.isfile(local):
            raise ArgumentError(f"no local file {local!r} to put; give the path of a file")
        self.local, self.remote, self.mode = local, remote, mode

    def __repr__(self):
        return f"Put({self.local!r}, {self.remote!r})"

    def execute(self, attempt):
        connection = attempt.connect()
        remote = _remote_path(self.remote.replace("{name}", attempt.machine.name))
        with connection.sftp_lock:
            sftp = connection.sftp()
            try:
                if remote.endswith("/") or _is_dir(sftp, remote):
                    remote = posixpath.join(remote, os.path.basename(self.local))
                attrs = sftp.put(self.local, remote)
                if self.mode is not None:
                    sftp.chmod(remote, self.mode)
            except (IOError, OSError) as exc:
                return attempt.result(self, error=ErrorKind.EXIT, message=f"put {remote}: {exc}")
        attempt.output(f"{self.local} -> {remote} ({attrs.st_size} bytes)\n".encode())
        return attempt.result(self, exit_code=0, detail={"path": remote, "size": attrs.st_size})


class Get(Command):
    """Copy ``remote`` from each machine to ``<local>/<machine name>/<file name>``."""

    def __init__(self, remote, local):
        self.remote, self.local = remote, os.path.expanduser(local)

    def __repr__(self):
        return f"Get({self.remote!r}, {self.local!r})"

    def execute(self, attempt):
        connection = attempt.connect()
        remote = _remote_path(self.remote)
        directory = os.path.join(self.local, attempt.machine.name)
        os.makedirs(directory, exist_ok=True)
        target = os.path.join(directory, posixpath.basename(remote.rstrip("/")) or "file")
        with connection.sftp_lock:
            sftp = connection.sftp()
            try:
                sftp.get(remote, target)
            except (IOError, OSError) as exc:
                return attempt.result(self, error=ErrorKind.EXIT, message=f"get {remote}: {exc}")
        size = os.path.getsize(target)
        attempt.output(f"{remote} -> {target} ({size} bytes)\n".encode())
        return attempt.result(self, exit_code=0, detail={"path": target, "size": size})


def _is_dir(sftp, path):
    import stat

    try:
        return stat.S_ISDIR(sftp.stat(path).st_mode)
    except IOError:
        return False


class Noop(Shell):
    """The readiness check: ``true`` over SSH."""

    def __init__(self, timeout=None):
        super().__init__("true", timeout=timeout)

    # Readiness is about SSH itself, and should not start an executor on every new machine.
    via_executor = False

    def __repr__(self):
        return "Noop()"
