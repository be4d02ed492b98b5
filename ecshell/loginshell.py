"""Installing ecshell-login as a user's login shell on a fleet, and taking it off.

>>> rs = cluster.install_login_shell(web, user="ops")      # doctest: +SKIP
>>> rs.all_ok, rs["web-0"].output                         # doctest: +SKIP
>>> cluster.uninstall_login_shell(web, user="ops")        # doctest: +SKIP

What install does on each machine (as root over the pooled connection):

1. ``prepare``: the user exists, python3 is 3.11 or newer, ``<prefix>`` exists.
2. Ships a wheel of ecshell built here (and, with ``wheels="ship"``, every
   dependency's wheel) to ``<prefix>/dist`` over SFTP.
3. ``install``: a virtual environment ``<prefix>/venv`` and pip, from the index
   the machine reaches or from the shipped wheels, and the entry point
   ``<prefix>/bin/ecshell-login`` (a sh script: no Python for a command); then,
   still changing nothing for the user, runs ``ecshell-login -c`` and an
   IPython start check as that user.
4. A fresh SSH login as the user (a new connection, the user's own shell
   still) runs the new entry point, with a command and on a PTY: a key the
   machine refuses for that user, or an IPython that does not start, stops
   the install here, with nothing switched.
5. ``switch``: adds the entry point to /etc/shells, records the previous shell
   in ``<prefix>/users/<user>.json``, switches the shell (usermod, else chsh),
   and then *waits*: the controller logs in afresh as the user, over a new SSH
   connection, once with a command and once interactively on a PTY (IPython's
   prompt, a Python expression evaluated), and only then sends COMMIT. Any
   other outcome -- a failed check, the controller dying, the connection
   dropping, a timeout on the machine -- makes the machine put the previous
   shell back, and /etc/shells as it was. That is what makes it impossible to
   lock a user out by installing.

A machine's failure at any step is its Result (``rs.failed``); nothing raises
for it. Uninstall puts back the recorded previous shell.
"""

import atexit
import base64
import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from .commands import Command
from .errors import ArgumentError, ConnectError, EcShellError, ErrorKind
from .machineset import MachineSet
from .output import OutputBuffer
from .results import Result, ResultSet
from .ssh.transport import Stopped, next_chunk

#: Where the virtual environment and the install records go on each machine.
DEFAULT_PREFIX = "/opt/ecshell"
#: What an install checks a fresh `-c` login with, and what it must give.
CHECK_COMMAND = "echo $((6*7)); echo ecshell-stderr >&2; exit 5"
#: Marker the remote side puts before its one-line JSON reports.
REPORT = b"@ecshell "

_ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][A-Za-z0-9]|\x1b[=>78]")


class InstallError(EcShellError):
    """The wheel could not be built here (no source checkout, pip failed)."""


# -- building what is shipped -------------------------------------------------

_built: dict[tuple[str, str, bool, str], tuple[str, list[str]]] = {}


def _source_root():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.isdir(os.path.join(root, "profiles")):
        return root
    raise InstallError("ecshell is not running from a source checkout, so no wheel can be built here; "
                       "pass wheel='path/to/ecshell-<version>-py3-none-any.whl'")


def _tree_files(root):
    files = []
    for top in ("pyproject.toml", "README.md", "ecshell", "profiles"):
        path = os.path.join(root, top)
        if os.path.isfile(path):
            files.append(path)
        for directory, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            files.extend(os.path.join(directory, n) for n in names if not n.endswith(".pyc"))
    return sorted(files)


def _requirements(root):
    """The dependency lines of ecshell's pyproject (``ipython>=8.12``, ...)."""
    import tomllib

    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def build_wheels(ship=False, deps="all"):
    """``(ecshell wheel, [wheels to ship along])`` built from this checkout; cached per content."""
    root = _source_root()
    files = _tree_files(root)
    digest = hashlib.sha256()
    for path in files:
        st = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    key = (root, digest.hexdigest(), ship, deps)
    if key in _built and all(os.path.exists(p) for p in [_built[key][0], *_built[key][1]]):
        return _built[key]
    work = tempfile.mkdtemp(prefix="ecshell-wheel-")
    atexit.register(shutil.rmtree, work, True)
    src = os.path.join(work, "src")
    for path in files:  # a copy, so that building writes nothing into the checkout
        target = os.path.join(src, os.path.relpath(path, root))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(path, target)
    out = os.path.join(work, "out")
    _pip(["wheel", "--no-deps", "-w", out, src])
    wheel = os.path.join(out, next(n for n in os.listdir(out) if n.startswith("ecshell-")))
    extra = []
    if ship:
        along = os.path.join(work, "along")
        wanted = _requirements(src) if deps == "all" else _login_requirements(src)
        _pip(["wheel", "-w", along] + wanted)
        extra = sorted(os.path.join(along, n) for n in os.listdir(along))
    _built[key] = (wheel, extra)
    return _built[key]


def _login_requirements(root):
    """What the login shell itself needs on a machine: IPython (the rest of ecshell is for controllers)."""
    return [r for r in _requirements(root) if re.match(r"(?i)ipython\b", r)] or ["ipython"]


def _pip(args):
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"] + args
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode:
        tail = "\n".join(done.stderr.strip().splitlines()[-10:])
        raise InstallError(f"pip {' '.join(args[:2])} failed here (exit {done.returncode}):\n{tail}")


# -- the remote side ------------------------------------------------------------

def remote_command(op, params, python="python3"):
    """The shell line that runs one op of ecshell.remote.loginshell on a machine."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "remote", "loginshell.py")
    with open(path, "rb") as f:
        code = base64.b64encode(f.read()).decode()
    wire = base64.b64encode(json.dumps(params).encode()).decode()
    loader = f'import base64;exec(compile(base64.b64decode("{code}"),"ecshell-loginshell","exec"))'
    return f"{shlex.quote(python)} -c '{loader}' {op} {wire}"


def _reports(output_bytes):
    found = []
    for line in output_bytes.splitlines():
        if line.startswith(REPORT):
            try:
                found.append(json.loads(line[len(REPORT):]))
            except ValueError:
                pass
    return found


# -- install / uninstall ------------------------------------------------------

def install_login_shell(machines, user, prefix=DEFAULT_PREFIX, wheel=None, wheels="index", deps="all",
                        python="python3", identity_files=None, timeout=900.0, verify_timeout=60.0,
                        guard_timeout=300.0, allow_this_host=False):
    """Make ``ecshell-login`` the login shell of ``user`` on every machine; a ResultSet.

    ``wheels``: ``"index"`` (pip on the machine fetches dependencies from the
    index it reaches) or ``"ship"`` (every wheel is built here and shipped
    along; pip on the machine uses no index; same platform as here).
    ``deps``: ``"all"`` (ecshell with all its dependencies) or ``"login"``
    (ecshell plus IPython only: enough for the login shell).
    ``identity_files``: keys for the fresh verification login as ``user``
    (default: the keys the machine is reached with). ``wheel``: a prebuilt
    ecshell wheel to ship instead of building one from this checkout.
    A machine whose fresh logins do not both work keeps its previous shell.
    LocalFabric machines are this very host: installing there changes the
    real account's shell, so it is refused unless ``allow_this_host=True``.
    """
    local = [m.name for m in MachineSet(machines) if getattr(m.fabric, "kind", None) == "local"]
    if local and not allow_this_host:
        raise ArgumentError(
            f"{', '.join(local)} are LocalFabric machines, i.e. this host: installing would change "
            f"the login shell of {user!r} on this very machine. Pass allow_this_host=True if that is meant")
    if not isinstance(user, str) or not re.fullmatch(r"[a-z_][a-z0-9_.-]*\$?", user):
        raise ArgumentError(f"give the user as a login name such as 'ops', not {user!r}")
    if wheels not in ("index", "ship"):
        raise ArgumentError(f"wheels must be 'index' or 'ship', not {wheels!r}")
    if deps not in ("all", "login"):
        raise ArgumentError(f"deps must be 'all' or 'login', not {deps!r}")
    if not prefix.startswith("/"):
        raise ArgumentError(f"prefix must be an absolute path such as {DEFAULT_PREFIX!r}, not {prefix!r}")
    prefix = prefix.rstrip("/")
    machines = MachineSet(machines)
    if wheel is not None:
        if not os.path.isfile(wheel):
            raise ArgumentError(f"no wheel at {wheel!r}")
        along = []
        if wheels == "ship":
            raise ArgumentError("wheels='ship' builds the wheels here; with wheel=... use wheels='index'")
        requirements = ["ipython>=8.12"]
    else:
        wheel, along = build_wheels(ship=wheels == "ship", deps=deps)
        requirements = _login_requirements(_source_root())

    final, story = {}, {name: "" for name in machines.names}
    base = {"prefix": prefix, "user": user}
    started = time.monotonic()

    def step(members, results, what):
        kept = []
        for result in results.results():
            story[result.machine.name] += _human(result.output_bytes)
            final[result.machine.name] = result
            if result.ok:
                kept.append(result.machine)
            else:
                if not result.message:
                    result.message = f"{what} failed; the login shell was not changed"
        return MachineSet(kept)

    live = step(machines, machines.run(remote_command("prepare", base, python), timeout=60), "prepare")
    dist = f"{prefix}/dist/"
    for path in [wheel] + along:
        if live:
            live = step(live, live.put(path, dist), f"shipping {os.path.basename(path)}")
    if live:
        params = dict(base, wheel=dist + os.path.basename(wheel), deps=deps,
                      find_links=dist if wheels == "ship" else None, login_requirements=requirements)
        live = step(live, live.run(remote_command("install", params, python), timeout=timeout), "install")
    if live:
        # A fresh SSH login as the user, through the shell they have now, to the new one:
        # a refused key or a broken IPython shows up before anything is switched.
        entry = f"{prefix}/bin/ecshell-login"
        live = step(live, live.execute(VerifyLogin(user, identity_files, verify_timeout, via=entry)),
                    "a fresh login as the user")
    if live:
        switch = SwitchLoginShell(remote_command("switch", dict(base, timeout=guard_timeout), python),
                                  user, identity_files, verify_timeout)
        step(live, live.execute(switch), "switch")
    elapsed = time.monotonic() - started
    return ResultSet([_retell(final[name], story[name], elapsed) for name in machines.names if name in final],
                     command=f"install_login_shell(user={user!r})")


def uninstall_login_shell(machines, user, prefix=DEFAULT_PREFIX, remove=True, python="python3"):
    """Put back the shell ``user`` had before ecshell-login, on every machine; a ResultSet.

    With ``remove`` (the default), the virtual environment under ``prefix``
    goes too once no user on the machine has ecshell-login any more, and so
    does its line in /etc/shells.
    """
    machines = MachineSet(machines)
    prefix = prefix.rstrip("/")
    results = machines.run(remote_command("uninstall", {"prefix": prefix, "user": user, "remove": remove},
                                          python), timeout=60)
    return ResultSet([_retell(r, _human(r.output_bytes), r.duration) for r in results.results()],
                     command=f"uninstall_login_shell(user={user!r})")


def _human(data):
    """The remote side's output with its JSON reports told in words."""
    lines = []
    for line in data.splitlines():
        report = _reports(line)
        lines.append(_say(report[0]) if report else line.decode("utf-8", "replace"))
    return "".join(f"{line}\n" for line in lines if line.strip())


def _say(r):
    if "committed" in r:
        return f"committed: the login shell is {r['committed']} (it was {r['previous']})"
    if "switched" in r:
        return f"switched to {r['switched']} (it was {r['previous']}); checking fresh logins before committing"
    if "restored" in r:
        return f"restored the previous shell {r['restored']} ({r.get('why', '')})"
    if "entry" in r:
        how = "installed" if r.get("installed") else "already installed from the same wheel"
        return f"{how}: {r['entry']}" + (f"; {r['check'][0]}" if r.get("check") else "")
    if "changed" in r:
        if not r["changed"]:
            return f"ecshell-login was not {r['user']}'s shell (it is {r['shell']}): nothing to undo"
        kept = f" (kept what ecshell did not put there: {', '.join(r['kept'])})" if r.get("kept") else ""
        return (f"the login shell of {r['user']} is {r['shell']} again"
                + (f"; ecshell-login removed from the machine{kept}" if r.get("removed") else ""))
    if "home" in r:
        return f"user {r['user']}: shell {r['shell']}, home {r['home']}; python {r['python']}"
    return json.dumps(r)


def _retell(result, text, duration):
    """The same result, with the whole story of the machine's install as its output."""
    buffer = OutputBuffer()
    buffer.write(text.encode())
    buffer.close()
    return Result(result.machine, result.command, buffer, result.exit_code, result.error, result.message,
                  duration, result.reconnected, result.detail, result.signal, result.via)


# -- switching, verified ---------------------------------------------------------

class VerifyLogin(Command):
    """Log in afresh as ``user`` (a new SSH connection): a command, then a PTY session."""

    def __init__(self, user, identity_files=None, timeout=60.0, via=None):
        self.user, self.via, self.timeout = user, via, timeout
        self.identity_files = list(identity_files) if identity_files else None

    def __repr__(self):
        return f"VerifyLogin(user={self.user!r}" + (f", via={self.via!r})" if self.via else ")")

    def execute(self, attempt):
        ok, notes = verify_login(attempt.machine, self.user, self.identity_files, self.timeout,
                                 cancel=attempt.cancel, via=self.via)
        attempt.output("".join(f"verify{' (before the switch)' if self.via else ''}: {n}\n"
                               for n in notes).encode())
        if ok:
            return attempt.result(self, exit_code=0)
        return attempt.result(self, error=ErrorKind.EXIT,
                              message=f"{notes[-1]}; the login shell was not changed")


class SwitchLoginShell(Command):
    """Switch the shell on the machine, verify fresh logins from here, then COMMIT (or not).

    The machine side waits for the answer on stdin and restores the previous
    shell on anything but COMMIT, including end of input: if this process or
    its connection dies half-way, the machine undoes the switch by itself.
    """

    def __init__(self, wire, user, identity_files=None, verify_timeout=60.0):
        self.wire, self.user = wire, user
        self.identity_files = list(identity_files) if identity_files else None
        self.timeout = verify_timeout

    def __repr__(self):
        return f"SwitchLoginShell(user={self.user!r})"

    def __str__(self):
        return f"switch the login shell of {self.user} to ecshell-login"

    def execute(self, attempt):
        import paramiko

        connection, channel = attempt.open_channel()
        try:
            channel.set_combine_stderr(True)
            channel.exec_command(self.wire)
            pending = bytearray()
            switched = self._until(attempt, channel, pending, lambda r: "switched" in r or "restored" in r,
                                   time.monotonic() + 120)
            if not switched or "switched" not in switched:
                status = self._finish(attempt, channel, pending)
                return attempt.result(self, exit_code=status, error=ErrorKind.EXIT,
                                      message="the machine did not switch the shell; nothing changed")
            ok, notes = verify_login(attempt.machine, self.user, self.identity_files, self.timeout,
                                     cancel=attempt.cancel)
            attempt.output("".join(f"verify: {n}\n" for n in notes).encode())
            channel.sendall(b"COMMIT\n" if ok else b"ABORT\n")
            channel.shutdown_write()
            status = self._finish(attempt, channel, pending)
            reports = _reports(bytes(pending))
            if ok and status == 0 and any("committed" in r for r in reports):
                return attempt.result(self, exit_code=0, detail={"previous_shell": switched.get("previous"),
                                                                 "shell": switched.get("switched")})
            restored = next((r for r in reports if "restored" in r), None)
            why = notes[-1] if not ok else f"the machine did not confirm the switch (exit {status})"
            back = (f"previous shell {restored['restored']} restored" if restored
                    else "the machine restores the previous shell by itself when the connection ends")
            return attempt.result(self, exit_code=status, error=ErrorKind.EXIT, message=f"{why}; {back}",
                                  detail={"previous_shell": switched.get("previous"), "restored": bool(restored)})
        except (paramiko.SSHException, EOFError, OSError) as exc:
            return attempt.result(self, error=ErrorKind.LOST, message=(
                f"connection lost while switching ({exc}); the machine restores the previous shell "
                "when it sees the connection end"))
        finally:
            channel.close()

    def _until(self, attempt, channel, pending, wanted, deadline):
        """Read output until a report satisfying ``wanted`` arrives; that report, or None at EOF."""
        seen = 0
        while True:
            try:
                data = next_chunk(channel, deadline, attempt.cancel)
            except Stopped:
                return None
            if not data:
                return None
            attempt.output(data)
            pending.extend(data)
            reports = _reports(bytes(pending))
            for report in reports[seen:]:
                if wanted(report):
                    return report
            seen = len(reports)

    def _finish(self, attempt, channel, pending):
        deadline = time.monotonic() + 30
        try:
            while data := next_chunk(channel, deadline):
                attempt.output(data)
                pending.extend(data)
        except Stopped:
            pass
        if channel.status_event.wait(5):
            return channel.exit_status
        return None


def _fresh_endpoint(machine, user, identity_files):
    endpoint = dataclasses.replace(machine.endpoint, user=user)
    if identity_files:
        endpoint.identity_files = [os.path.expanduser(p) for p in identity_files]
        endpoint.identities_only = True
    return endpoint


def verify_login(machine, user, identity_files=None, timeout=60.0, cancel=None, via=None):
    """``(ok, notes)``: log in afresh as ``user``, run a command, then an interactive session.

    With ``via`` (the entry point's path) both go through the user's current
    shell to that program: the check made before anything is switched.
    """
    from .ssh.connection import connect

    notes = []
    settings = machine.engine.settings
    endpoint = _fresh_endpoint(machine, user, identity_files)
    try:
        connection = connect(endpoint, settings, time.monotonic() + settings.connect_timeout, machine.engine.pool)
    except ConnectError as exc:
        notes.append(f"a fresh SSH login as {user} failed ({exc.kind}): {exc}")
        return False, notes
    try:
        ok, note = _check_command(connection, timeout, via)
        notes.append(note)
        if not ok:
            return False, notes
        ok, note = _check_interactive(connection, timeout, cancel, via)
        notes.append(note)
        return ok, notes
    except Exception as exc:  # paramiko's many ways of saying the session broke
        notes.append(f"the fresh login as {user} broke: {type(exc).__name__}: {exc}")
        return False, notes
    finally:
        connection.close()


def _check_command(connection, timeout, via=None):
    channel = connection.open_session(timeout=timeout)
    try:
        channel.exec_command(f"{shlex.quote(via)} -c {shlex.quote(CHECK_COMMAND)}" if via else CHECK_COMMAND)
        channel.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        # sshd may send the exit status before the last of stderr: read both to EOF.
        while True:
            if time.monotonic() > deadline:
                return False, f"`{CHECK_COMMAND}` did not finish within {timeout:g}s"
            if channel.recv_ready():
                out += channel.recv(65536)
            elif channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            elif (channel.eof_received or channel.closed) and channel.exit_status_ready():
                break
            else:
                time.sleep(0.01)
        status = channel.exit_status
    finally:
        channel.close()
    if (bytes(out), bytes(err), status) != (b"42\n", b"ecshell-stderr\n", 5):
        return False, (f"`{CHECK_COMMAND}` gave stdout {bytes(out)!r}, stderr {bytes(err)!r}, exit {status} "
                       "instead of '42', 'ecshell-stderr', exit 5")
    return True, "a command login gives stdout 42, stderr apart, exit 5"


def screen_text(raw):
    """What a terminal would show, roughly: escape sequences and carriage returns removed."""
    return _ANSI.sub(b"", raw).replace(b"\r", b"").decode("utf-8", "replace")


def _check_interactive(connection, timeout, cancel=None, via=None):
    channel = connection.open_session(timeout=timeout)
    raw = bytearray()
    deadline = time.monotonic() + timeout

    def until(predicate):
        while time.monotonic() < deadline and not (cancel is not None and cancel.is_set()):
            if predicate(screen_text(bytes(raw))):
                return True
            channel.settimeout(0.2)
            try:
                data = channel.recv(65536)
            except socket.timeout:
                continue
            if not data:
                return predicate(screen_text(bytes(raw)))
            # prompt_toolkit asks where the cursor is before drawing a prompt; answer like a terminal.
            for _ in range(data.count(b"\x1b[6n")):
                channel.sendall(b"\x1b[1;1R")
            raw.extend(data)
        return False

    try:
        channel.get_pty(term="xterm", width=160, height=48)
        if via:
            channel.exec_command(f"exec {shlex.quote(via)}")  # no arguments: a login, as sshd starts one
        else:
            channel.invoke_shell()
        if not until(lambda s: "In [" in s or "IPython did not start" in s):
            return False, f"no IPython prompt within {timeout:g}s of an interactive login; the screen: {_tail(raw)!r}"
        text = screen_text(bytes(raw))
        if "IPython did not start" in text:
            line = next(l for l in text.splitlines() if "IPython did not start" in l)
            return False, f"an interactive login fell back to a plain shell: {line.strip()}"
        channel.sendall(b'print("ecshell" + "-verified")\r')
        if not until(lambda s: "ecshell-verified" in s):
            return False, f"IPython did not evaluate a line within {timeout:g}s; the screen: {_tail(raw)!r}"
        channel.sendall(b"exit\r")
        channel.status_event.wait(min(5.0, max(0.1, deadline - time.monotonic())))
        return True, "an interactive login shows the IPython prompt and evaluates Python"
    finally:
        channel.close()


def _tail(raw):
    return screen_text(bytes(raw))[-300:]
