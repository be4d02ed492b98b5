"""Behaviour added around a Command by wrapping it: retry, timeout, sudo, once; and recipes.

>>> from ecshell import Shell, retry, timeout, sudo, once
>>> step = once("nginx-installed")(sudo("root")(retry(3, backoff=2)(timeout(300)(
...     Shell("apt-get install -y nginx")))))
>>> step
once('nginx-installed', sudo('root', retry(3, backoff=2, timeout(300, Shell('apt-get install -y nginx')))))
>>> web.apply([step, Shell("systemctl reload nginx")])     # doctest: +SKIP

Each adapter is a Command holding another Command, so they compose in any
order and run on any machine set like any other command. A plain string is
taken as ``Shell(string)``. A recipe is a list of Commands, applied step by
step: a machine that fails a step takes no further step.

- ``retry(tries, backoff)``: up to ``tries`` runs in all, waiting ``backoff``
  seconds, doubling, between them; never retries a Ctrl-C.
- ``timeout(seconds)``: the wrapped command (retries and all, if it wraps a
  retry) is stopped at ``seconds`` and killed on the machine; result ``timeout``.
  It stops what looks at the cancel flag: shell commands and state steps, not
  an SFTP transfer already under way (Put, Get).
- ``sudo(user)``: the shell commands inside run through ``sudo -n -u user``;
  where sudo would ask for a password it fails at once, with a result that
  says so, instead of hanging on a prompt nobody sees.
- ``once(marker)``: run only where ``marker`` is absent, then set it. While it
  runs it holds the lock ``once.<marker>``, so two shells do the work once;
  a lock left by a shell that died is reported, and broken only explicitly.
"""

from __future__ import annotations

import copy
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .commands import Command, Shell, as_command
from .errors import ArgumentError, ErrorKind
from .machineset import MachineSet
from .state import LOCK_PREFIX, Op, StateCommand, age, check_name

if TYPE_CHECKING:
    from .engine import Attempt
    from .machine import Machine
    from .machineset import RecipeResult
    from .results import Result
    from .ssh.transport import Cancel


class Wrapper(Command):
    """A Command around another one (``inner``)."""

    def __init__(self, inner: Command | str) -> None:
        self.inner = as_command(inner)

    @property
    def timeout(self) -> float | None:  # type: ignore[override]  # read-only here: the inner command's
        return self.inner.timeout

    def __str__(self) -> str:
        return str(self.inner)


def map_shell(command: Command, change: Callable[[str], str]) -> Command:
    """A copy of ``command`` whose shell strings went through ``change``; for sudo."""
    if isinstance(command, Wrapper):
        mapped = copy.copy(command)
        mapped.inner = map_shell(command.inner, change)
        return mapped
    if type(command) is Shell:
        return Shell(change(command.command), timeout=command.timeout, input=command.input, pty=command.pty)
    raise ArgumentError(f"sudo applies to shell commands, not {command!r}; to put a file as another user, "
                        "put it somewhere you can write, then run Shell('sudo install ...')")


class _Deadline:
    """A cancel flag that is also set when a deadline passes (what Shell looks at)."""

    def __init__(self, parent: Cancel, deadline: float) -> None:
        self.parent, self.deadline = parent, deadline

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def is_set(self) -> bool:
        return self.parent.is_set() or self.expired()

    def wait(self, seconds: float) -> bool:
        return self.parent.wait(max(0.0, min(seconds, self.deadline - time.monotonic()))) or self.is_set()

    def set(self) -> None:
        self.parent.set()


def _wait(cancel: Cancel, seconds: float) -> bool:
    """Sleep ``seconds`` unless cancelled; True if cancelled."""
    return bool(cancel.wait(seconds))


class Retry(Wrapper):
    def __init__(self, inner: Command | str, tries: int = 3, backoff: float = 1.0,
                 on: ErrorKind | str | Iterable[ErrorKind | str] | None = None) -> None:
        super().__init__(inner)
        if not isinstance(tries, int) or tries < 1:
            raise ArgumentError(f"tries is how many runs in all (at least 1), not {tries!r}; e.g. retry(3)")
        if backoff < 0:
            raise ArgumentError(f"backoff is seconds before the second try, not {backoff!r}")
        self.tries, self.backoff = tries, backoff
        self.on = None if on is None else {ErrorKind(k) for k in ([on] if isinstance(on, str) else on)}

    def __repr__(self) -> str:
        return f"retry({self.tries}, backoff={self.backoff:g}, {self.inner!r})"

    def execute(self, attempt: Attempt) -> Result:
        delay = self.backoff
        for number in range(1, self.tries + 1):
            result = self.inner.execute(attempt.fork())
            if result.ok or result.error is ErrorKind.INTERRUPTED or attempt.cancel.is_set():
                break
            if self.on is not None and result.error not in self.on:
                break
            if number == self.tries or _wait(attempt.cancel, delay):
                break
            delay *= 2
        result.detail = dict(result.detail, tries=number)
        if number > 1:
            note = f"try {number} of {self.tries}"
            result.message = f"{result.message}; {note}" if result.message else note
        return result


class Timeout(Wrapper):
    def __init__(self, inner: Command | str, seconds: float) -> None:
        super().__init__(inner)
        if not seconds or seconds <= 0:
            raise ArgumentError(f"timeout is a positive number of seconds, not {seconds!r}; e.g. timeout(30)")
        self.seconds = seconds

    @property
    def timeout(self) -> float:  # type: ignore[override]  # read-only, as in Wrapper
        return self.seconds

    def __repr__(self) -> str:
        return f"timeout({self.seconds:g}, {self.inner!r})"

    def execute(self, attempt: Attempt) -> Result:
        cancel = _Deadline(attempt.cancel, time.monotonic() + self.seconds)
        result = self.inner.execute(attempt.fork(cancel))
        if result.error is ErrorKind.INTERRUPTED and cancel.expired() and not attempt.cancel.is_set():
            result.error = ErrorKind.TIMEOUT
            killed = result.message.partition("; ")[2]
            result.message = f"no exit after {self.seconds:g}s" + (f"; {killed}" if killed else "")
        return result


#: Seconds ``once`` allows for its last round trip (set the marker, release its lock).
FINISH_TIMEOUT = 10.0

#: What sudo -n prints when it would have to ask.
_SUDO_ASKS = (b"a password is required", b"a terminal is required")


class Sudo(Wrapper):
    def __init__(self, inner: Command | str, user: str = "root") -> None:
        if not isinstance(user, str) or not user or user.startswith("-"):
            raise ArgumentError(f"sudo needs a user name, e.g. sudo('root'), not {user!r}")
        self.user = user
        self.original = as_command(inner)
        prefix = f"sudo -n -H -u {shlex.quote(user)} -- sh -c "
        super().__init__(map_shell(self.original, lambda text: prefix + shlex.quote(text)))

    def __repr__(self) -> str:
        return f"sudo({self.user!r}, {self.original!r})"

    def __str__(self) -> str:
        return str(self.original)

    def execute(self, attempt: Attempt) -> Result:
        result = self.inner.execute(attempt)
        if result.error is ErrorKind.EXIT and result.exit_code == 1:
            output = result.output_bytes
            if output.startswith(b"sudo: ") and any(s in output for s in _SUDO_ASKS):
                result.message = (f"sudo -n to {self.user} needs a password here, and nobody can type one: "
                                  "give the login user a NOPASSWD rule for it (sudoers), "
                                  "or log in as a user that has one")
                result.detail = dict(result.detail, sudo="password")
        elif result.error is ErrorKind.EXIT and result.exit_code == 127 and b"sudo" in result.output_bytes:
            result.message = "sudo is not installed on this machine"
            result.detail = dict(result.detail, sudo="missing")
        return result


class Once(Wrapper):
    """Run where ``marker`` is absent, holding lock ``once.<marker>``; set the marker on success."""

    def __init__(self, inner: Command | str, marker: str) -> None:
        super().__init__(inner)
        self.marker = check_name(marker)
        self.lock = LOCK_PREFIX + check_name("once." + marker)

    def __repr__(self) -> str:
        return f"once({self.marker!r}, {self.inner!r})"

    def execute(self, attempt: Attempt) -> Result:

        token = secrets.token_hex(8)
        claim = StateCommand([Op("claim", self.lock, note=str(self.inner), token=token, unless=self.marker)],
                             label=f"once {self.marker}: check")
        checked = claim.execute(attempt.fork())
        if not checked.ok:
            return checked
        status, seen, now = checked.detail["ops"][0], checked.detail["markers"], checked.detail["now"]
        if status == "done":
            done = seen[self.marker]
            checked.command = self
            checked.message = f"skipped: {self.marker} {done.describe(now)}"
            checked.detail = dict(checked.detail, skipped=True)
            return checked
        if status == "failed":
            checked.command, checked.error = self, ErrorKind.EXIT
            checked.message = f"could not make lock {self.lock} in the state directory"
            return checked
        if status != "ok":
            holder = seen.get(self.lock)
            gone = holder is not None and holder.holder_gone()
            who = (f"{holder.by} since {holder.when} ({age((now or time.time()) - holder.at)} ago)"
                   f"{', a process no longer running here' if gone else ''}") if holder else "another shell"
            checked.command = self
            checked.error = ErrorKind.EXIT
            checked.message = (f"{self.marker}: being done by {who}; if that shell died, break the lock with "
                               f"cluster.machine({attempt.machine.name!r}).break_lock({self.lock[len(LOCK_PREFIX):]!r})"
                               " and run again")
            checked.detail = dict(checked.detail, held_by=holder)
            return checked
        result = self.inner.execute(attempt.fork())
        result.detail = dict(result.detail, skipped=False)
        if result.error is ErrorKind.LOST or "could not kill" in result.message:
            # it may still be running there: the lock says so until someone knows better
            result.message += (f"; lock {self.lock[len(LOCK_PREFIX):]!r} is left held on the machine, since the step "
                               "may still be running: break_lock it once you know it is not")
            return result
        ops = [Op("unmark", self.lock, token=token)]
        if result.ok:
            ops.insert(0, Op("mark", self.marker, note=str(self.inner)))
        # A timeout or Ctrl-C has set the attempt's cancel flag by now; the claim is still
        # ours to give back (the step was killed), so this last round trip gets its own clock.
        own = _Deadline(threading.Event(), time.monotonic() + FINISH_TIMEOUT)
        finish = StateCommand(ops, label=f"once {self.marker}: done").execute(attempt.fork(own))
        if not finish.ok:
            note = (f"marking {self.marker} and releasing lock {self.lock[len(LOCK_PREFIX):]!r} failed: "
                    f"{finish.status} {finish.message}".rstrip())
            if result.ok:
                result.error, result.message = finish.error, f"the step ran, but {note}"
            else:
                result.message += f"; {note}"
        return result


# -- the adapter factories: retry(3)(cmd), composable in any order -----------------

def _factory(make: Callable[[Command | str], Command]) -> Callable[[Command | str], Command]:
    def wrap(command: Command | str) -> Command:
        return make(command)
    return wrap


def retry(tries: int = 3, backoff: float = 1.0,
          on: ErrorKind | str | Iterable[ErrorKind | str] | None = None) -> Callable[[Command | str], Command]:
    """``retry(3, backoff=1)(cmd)``: up to ``tries`` runs in all; ``on``: only for these error kinds."""
    Retry(Shell("true"), tries, backoff, on)  # check the arguments now, not at the first run
    return _factory(lambda command: Retry(command, tries, backoff, on))


def timeout(seconds: float) -> Callable[[Command | str], Command]:
    """``timeout(30)(cmd)``: stop and kill the wrapped command after ``seconds``."""
    Timeout(Shell("true"), seconds)
    return _factory(lambda command: Timeout(command, seconds))


def sudo(user: str = "root") -> Callable[[Command | str], Command]:
    """``sudo("root")(cmd)``: run the shell commands inside with ``sudo -n -u user``."""
    Sudo(Shell("true"), user)
    return _factory(lambda command: Sudo(command, user))


def once(marker: str) -> Callable[[Command | str], Command]:
    """``once("installed")(cmd)``: run only where the marker is absent, then set it."""
    check_name(marker)
    check_name("once." + marker)
    return _factory(lambda command: Once(command, marker))


# -- recipes ---------------------------------------------------------------------

def apply(machines: Machine | Iterable[Machine], recipe: Command | str | Iterable[Command | str]) -> RecipeResult:
    """Run ``recipe`` (Commands or shell strings) step by step on ``machines`` (or one Machine)."""
    return MachineSet.of(machines).apply(recipe)
