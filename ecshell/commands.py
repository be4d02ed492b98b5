"""Commands: the operations a broadcast runs on each machine.

A Command is a small object with ``execute(attempt) -> Result``; the
:class:`~ecshell.engine.Attempt` gives it the machine's pooled connection,
the clock, the cancel flag and the output buffer. Behaviour is added by
wrapping a command (:mod:`ecshell.adapters`), never by growing Machine.

>>> Shell("uptime", timeout=10)
Shell('uptime', timeout=10.0)

A command built from values takes them as separate words, each quoted for
the shell (:func:`quote`), so a value is never read as shell syntax:

>>> Shell(["useradd", "-m", "alice; rm -rf ~"])
Shell("useradd -m 'alice; rm -rf ~'")
>>> Shell(f"id -u {quote('bob')} || useradd -m {quote('bob')}")
Shell('id -u bob || useradd -m bob')
"""

from __future__ import annotations

import os
import posixpath
import secrets
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from . import arguments
from .errors import ArgumentError, ErrorKind
from .ssh.transport import Exit, Lost, Request, Stopped, run_token

if TYPE_CHECKING:
    from .engine import Attempt
    from .results import Result


#: A command as run() and Shell take it: a shell string, or a list of words each quoted for the shell.
CommandLine = Union[str, Sequence[Union[str, int, "os.PathLike[str]"]]]


def quote(value: str | int | os.PathLike[str]) -> str:
    """``value`` as one shell word (``shlex.quote``): put it into a command string as data."""
    if isinstance(value, bool) or not isinstance(value, (str, int, os.PathLike)):
        raise ArgumentError(f"quote() takes a str, an int or a path, not {type(value).__name__} {value!r}")
    return shlex.quote(os.fspath(value) if isinstance(value, os.PathLike) else str(value))


def words(argv: Sequence[str | int | os.PathLike[str]]) -> str:
    """A command line of ``argv``, each word quoted: ``words(["useradd", "-m", user])``."""
    if not argv:
        raise ArgumentError("give at least one word, e.g. ['useradd', '-m', user]")
    return " ".join(quote(word) for word in argv)


class Command:
    """Base class: ``execute(attempt)`` returns the machine's Result."""

    timeout: Optional[float] = None

    def start_early(self, attempt: Attempt) -> None:
        """Start now, from the broadcasting thread, if that takes no waiting; else do nothing.

        ``execute(attempt)`` follows in a worker either way and finishes the job.
        """

    def execute(self, attempt: Attempt) -> Result:
        raise NotImplementedError

    def __str__(self) -> str:
        return repr(self)


class Shell(Command):
    """Run a shell string in the user's login shell, as ``ssh host CMD`` would.

    ``command`` is that string, or a list of words (an argv) that are each
    quoted for the shell and joined: ``Shell(["useradd", "-m", user])``.

    Output is stdout and stderr combined, in arrival order. stdin is closed at
    once unless ``input`` (bytes or str) is given. No PTY unless ``pty=True``.
    It goes over the machine's persistent executor or a channel of its own
    (:mod:`ecshell.ssh.transport`); either way, on timeout or cancel the
    command is killed on the machine. It runs with ``ECSHELL_RUN=<token>``
    exported, which every process it starts inherits.
    """

    #: Whether this command may go through the machine's persistent executor.
    via_executor = True
    #: Whether a fan-out transport (:mod:`ecshell.fanout`: SSM, ClusterShell's tree) may carry it.
    via_fanout = True

    def __init__(self, command: CommandLine, timeout: Optional[float] = None,
                 input: Union[bytes, str, None] = None, pty: bool = False):
        if isinstance(command, (list, tuple)):
            command = words(command)
        if not isinstance(command, str) or not command.strip():
            raise ArgumentError("give the command as a non-empty string, e.g. run('uptime'), "
                                "or a list of words to quote, e.g. run(['useradd', '-m', user])")
        if "\0" in command:
            # sshd hands the string to the shell as a C string, and ssh cannot send one holding a NUL.
            raise ArgumentError("a command cannot hold a NUL byte (\\0): no shell can receive one; "
                                "send binary data as the command's stdin instead, e.g. run('cat > f', input=data)")
        self.command = command
        self.timeout = arguments.seconds("timeout", timeout)
        given = arguments.stdin_input(input)
        self.input = given.encode() if isinstance(given, str) else given
        self.pty = pty

    def __repr__(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("timeout", "pty") if getattr(self, k))
        return f"Shell({self.command!r}{extra})"

    def __str__(self) -> str:
        return self.command

    def request(self, attempt: Attempt) -> Request:
        """What to start on the attempt's machine (a fresh kill token unless kill_on_cancel is off)."""
        token = run_token() if attempt.settings.kill_on_cancel else None
        command = attempt.machine.shell_line(self.command)
        return Request(command, token, self.input, self.pty, attempt.settings.executor_shortcut)

    def transport_mode(self, attempt: Attempt) -> str:
        """``c.EcShell.executor``, or ``channel`` for what the executor does not carry (PTYs)."""
        return "channel" if self.pty or not self.via_executor else attempt.settings.executor

    def start_early(self, attempt: Attempt) -> None:
        attempt.start_early(self.request(attempt), self.transport_mode(attempt))

    def execute(self, attempt: Attempt) -> Result:
        timeout = self.timeout if self.timeout is not None else attempt.settings.command_timeout
        if timeout:
            attempt.deadline = attempt.started + timeout  # connecting and starting count too
        process = attempt.early or attempt.start(self.request(attempt), self.transport_mode(attempt))
        deadline = process.sent_at + timeout if timeout else None  # the clock starts once it is sent
        try:
            while data := process.read(deadline, attempt.cancel):
                attempt.output(data)
            exit = process.wait(deadline, attempt.cancel)
        except Stopped as stop:
            killed = process.kill(attempt.output)
            message = f"no exit after {timeout:g}s" if stop.kind is ErrorKind.TIMEOUT else "interrupted"
            return attempt.result(self, error=stop.kind, message=f"{message}; {killed}" if killed else message,
                                  detail=process.detail, via=process.via)
        except Lost as lost:
            return attempt.result(self, error=ErrorKind.LOST, message=str(lost), detail=process.detail,
                                  via=process.via)
        finally:
            process.close()
        return self.exited(attempt, exit, process.via)

    def exited(self, attempt: Attempt, exit: Exit, via: Optional[str] = None) -> Result:
        """The Result of a command that ran to its end."""
        if exit.code is None:
            killed = f"killed by SIG{exit.signal}" if exit.signal else "killed by a signal"
            return attempt.result(self, error=ErrorKind.EXIT, message=killed, signal=exit.signal, via=via)
        return attempt.result(self, exit_code=exit.code, error=ErrorKind.EXIT if exit.code else None, via=via)


def _remote_path(path: str) -> str:
    # SFTP paths are relative to the login directory; "~/x" means just that.
    if path == "~":
        return "."
    return path[2:] if path.startswith("~/") else path


class Put(Command):
    """Copy a local file to ``remote`` on each machine over the pooled connection (SFTP).

    ``{name}`` in ``remote`` becomes each machine's name, for machines that
    share a filesystem or want their copy named after themselves. ``mode``
    (0 to 0o7777) is checked here, before anything is copied.
    """

    def __init__(self, local: str, remote: str, mode: Optional[int] = None):
        local = os.path.expanduser(local)
        if not os.path.isfile(local):
            raise ArgumentError(f"no local file {local!r} to put; give the path of a file")
        self.local, self.remote, self.mode = local, remote, arguments.file_mode(mode)

    def __repr__(self) -> str:
        return f"Put({self.local!r}, {self.remote!r})"

    def execute(self, attempt: Attempt) -> Result:
        remote = _remote_path(self.remote.replace("{name}", attempt.machine.name))
        if not attempt.machine.files_over_sftp:
            return self._through_shell(attempt, remote)
        connection = attempt.connect()
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
        return attempt.result(self, exit_code=0, detail={"path": remote, "size": attrs.st_size}, via="sftp")

    def _through_shell(self, attempt: Attempt, remote: str) -> Result:
        """Write the file with ``cat`` in the machine's own shell: for a sandbox that SFTP cannot reach."""
        with open(self.local, "rb") as f:
            data = f.read()
        chmod = f' && chmod {self.mode:o} "$t"' if self.mode is not None else ""
        script = (f't={shlex.quote(remote)}; if [ -d "$t" ] || [ "${{t%/}}" != "$t" ]; then '
                  f't="${{t%/}}"/{shlex.quote(os.path.basename(self.local))}; fi; '
                  f'cat > "$t"{chmod} && printf "%s" "$t"')
        quiet = attempt.fork()
        quiet.on_output = None
        done = Shell(script, input=data or None).execute(quiet)
        if not done.ok:
            return attempt.result(self, error=done.error, message=f"put {remote}: {done.output.strip() or done.message}")
        attempt.output(f"{self.local} -> {done.output} ({len(data)} bytes)\n".encode())
        return attempt.result(self, exit_code=0, detail={"path": done.output, "size": len(data)}, via=done.via)


class Get(Command):
    """Copy ``remote`` from each machine to ``<local>/<machine name>/<file name>``.

    ``local`` must be a directory (made when missing). Each copy is written
    to a temporary file beside its target and renamed over it only once
    complete, so a failed get leaves an earlier copy as it was. Nothing is
    written outside ``local``, whatever a machine is called.
    """

    def __init__(self, remote: str, local: str):
        self.remote, self.local = remote, os.path.expanduser(local)
        self.file_name = posixpath.basename(_remote_path(remote).rstrip("/"))
        if self.file_name in ("", ".", ".."):
            raise ArgumentError(f"give the path of a remote file to get, not {remote!r}; e.g. /var/log/syslog")
        existing = self.local or "."
        while not os.path.lexists(existing):
            existing = os.path.dirname(os.path.abspath(existing))
        if not os.path.isdir(existing):
            raise ArgumentError(
                f"cannot get into {self.local!r}: {existing!r} is a file, and each machine's copy goes to "
                f"{os.path.join(self.local, '<machine name>', self.file_name)}; give a directory "
                "(made when missing) as the destination, e.g. logs/")

    def __repr__(self) -> str:
        return f"Get({self.remote!r}, {self.local!r})"

    def execute(self, attempt: Attempt) -> Result:
        name = attempt.machine.name
        if name in ("", ".", "..") or "/" in name or "\0" in name:
            return attempt.result(self, error=ErrorKind.EXIT,
                                  message=f"get: machine name {name!r} cannot be a directory name under {self.local}")
        remote = _remote_path(self.remote)
        directory = os.path.join(self.local, name)
        target = os.path.join(directory, self.file_name)
        if not attempt.machine.files_over_sftp:
            return self._through_shell(attempt, remote, directory, target)
        connection = attempt.connect()
        with connection.sftp_lock:
            sftp = connection.sftp()
            try:
                os.makedirs(directory, exist_ok=True)
                partial = _new_file_beside(target)
            except OSError as exc:
                return attempt.result(self, error=ErrorKind.EXIT, message=f"get: cannot write {target}: {exc}")
            try:
                sftp.get(remote, partial)
                os.replace(partial, target)
            except (IOError, OSError) as exc:
                _unlink(partial)
                return attempt.result(self, error=ErrorKind.EXIT, message=f"get {remote}: {exc}")
            except BaseException:
                _unlink(partial)
                raise
        size = os.path.getsize(target)
        attempt.output(f"{remote} -> {target} ({size} bytes)\n".encode())
        return attempt.result(self, exit_code=0, detail={"path": target, "size": size}, via="sftp")

    def _through_shell(self, attempt: Attempt, remote: str, directory: str, target: str) -> Result:
        """Read the file with ``cat`` in the machine's own shell: for a sandbox that SFTP cannot reach."""
        quiet = attempt.fork()
        quiet.on_output = None  # file content, not output for the screen
        done = Shell(f"cat -- {shlex.quote(remote)}").execute(quiet)
        if not done.ok:
            return attempt.result(self, error=done.error, message=f"get {remote}: {done.output.strip() or done.message}")
        try:
            os.makedirs(directory, exist_ok=True)
            partial = _new_file_beside(target)
            with open(partial, "wb") as f:
                f.write(done.output_bytes)
            os.replace(partial, target)
        except OSError as exc:
            return attempt.result(self, error=ErrorKind.EXIT, message=f"get: cannot write {target}: {exc}")
        attempt.output(f"{remote} -> {target} ({done.output_size} bytes)\n".encode())
        return attempt.result(self, exit_code=0, detail={"path": target, "size": done.output_size}, via=done.via)


def _new_file_beside(path: str) -> str:
    """A new empty file next to ``path`` (same directory, so renaming it over ``path`` is atomic)."""
    directory, base = os.path.split(path)
    while True:
        partial = os.path.join(directory, f".{base[:100]}.{secrets.token_hex(4)}.part")
        try:
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return partial
        except FileExistsError:
            continue


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _is_dir(sftp: Any, path: str) -> bool:
    import stat

    try:
        return stat.S_ISDIR(sftp.stat(path).st_mode)
    except IOError:
        return False


class Noop(Shell):
    """The readiness check: ``true`` over SSH."""

    def __init__(self, timeout: Optional[float] = None):
        super().__init__("true", timeout=timeout)

    # Readiness is about SSH itself, and should not start an executor on every new machine.
    via_executor = False
    via_fanout = False

    def __repr__(self) -> str:
        return "Noop()"


def as_command(command: Union[Command, str]) -> Command:
    """A Command from a Command or a shell string."""
    if isinstance(command, Command):
        return command
    if isinstance(command, str):
        return Shell(command)
    raise ArgumentError(f"a recipe step is a Command or a shell string, not {command!r}; e.g. Shell('make install')")
