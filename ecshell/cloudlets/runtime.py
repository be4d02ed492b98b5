"""The controller's side of the sandbox runtime: the shell lines that reach ``ecshell.remote.cloudlet``.

A cloudlet is one long-lived ``bwrap`` per user on its host machine, holding
the sandbox's namespaces (user, mount, pid, uts, ipc, cgroup; the network is
the machine's) over an overlay of the machine's ``/`` whose upper layer is
the user's state. Each command enters it with ``nsenter``
(:func:`enter_line`), so processes a command leaves running stay running
between commands, and the overlay is mounted once. Measured here (bwrap 0.8,
2 cores): entering a running sandbox costs ~15 ms; a fresh ``bwrap`` per
command ~105 ms, and would give every command its own pid namespace (nothing
survives it) and mount the same upper layer twice at once, which overlayfs
does not allow.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import posixpath
import re
import shlex
from typing import TYPE_CHECKING, Any

from ..adapters import once
from ..commands import Command, Shell
from ..errors import ArgumentError, ErrorKind
from ..state import state_dir_expr

if TYPE_CHECKING:
    from ..engine import Attempt
    from ..results import Result

#: User (cloudlet) names: what Debian's adduser accepts by default, and safe in paths, markers and hostnames.
USER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
#: Marker the remote side puts before its one-line JSON reports.
REPORT = b"@ecshell "
#: The state directory inside a cloudlet (in its overlay, so its markers travel with it).
INSIDE_STATE_DIR = "/var/lib/ecshell/state"
#: What ``nsenter`` exits with when the sandbox is not running (told apart by its message).
NOT_RUNNING = 125
NOT_RUNNING_TEXT = "ecshell: this cloudlet is not running on its machine"
#: The search path inside a cloudlet.
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def check_user(user: object) -> str:
    if not isinstance(user, str) or not USER_NAME.fullmatch(user):
        raise ArgumentError(f"a cloudlet is named after its user: lower-case letters, digits, '_' and '-', "
                            f"starting with a letter, at most 32 characters; e.g. 'alice', not {user!r}")
    return user


@functools.cache
def _packed_source() -> str:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "remote", "cloudlet.py")
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def remote_line(op: str, params: dict[str, Any], settings: object) -> str:
    """The shell line that runs one op of ecshell.remote.cloudlet on a host machine."""
    wire = base64.b64encode(json.dumps(params).encode()).decode()
    loader = f'import base64;exec(compile(base64.b64decode("{_packed_source()}"),"ecshell-cloudlet","exec"))'
    return f"{state_dir_expr(settings)}; exec python3 -I -S -c '{loader}' {op} {wire} \"$S/cloudlets\""


def enter_line(user: str, command: str, settings: object) -> str:
    """The shell line that runs ``command`` inside ``user``'s running cloudlet, as ``sh -c`` there.

    The sandbox's pid is read on the machine and entered only if it still
    has the mount namespace recorded at start. Inside, the environment is
    the cloudlet's own (home, path, its state dir), plus ``ECSHELL_RUN`` so
    that a timed-out command is found and killed as anywhere else.
    """
    name = shlex.quote(check_user(user))
    inside = ["env", "-i", "-C", "/root", "HOME=/root", "USER=root", "LOGNAME=root", f"PATH={PATH}",
              f"ECSHELL_STATE_DIR={INSIDE_STATE_DIR}", f"ECSHELL_CLOUDLET={user}"]
    return (f'{state_dir_expr(settings)}; d="$S/cloudlets"/{name}; read p n < "$d/child" 2>/dev/null; '
            f'[ -n "$p" ] && [ "$(readlink "/proc/$p/ns/mnt" 2>/dev/null)" = "mnt:[$n]" ] || '
            f'{{ echo {shlex.quote(NOT_RUNNING_TEXT)} >&2; exit {NOT_RUNNING}; }}; '
            f'exec nsenter -t "$p" -a -- {" ".join(map(shlex.quote, inside))} '
            f'ECSHELL_RUN="${{ECSHELL_RUN-}}" TERM="${{TERM-dumb}}" /bin/sh -c {shlex.quote(command)}')


def reported_path(report: dict[str, Any], key: str, user: str, leaf: str) -> str:
    """The machine's path ``report[key]``, accepted only as what it must be: ``/.../cloudlets/<user>/<leaf>``."""
    path = report.get(key)
    if (not isinstance(path, str) or not path.startswith("/") or posixpath.normpath(path) != path
            or not path.endswith(f"/cloudlets/{user}/{leaf}") or not path.isprintable()):
        raise ArgumentError(f"the machine reported {path!r} as {user}'s {leaf}: refused")
    return path


def reports(output: bytes) -> list[dict[str, Any]]:
    found = []
    for line in output.splitlines():
        if line.startswith(REPORT):
            try:
                value = json.loads(line[len(REPORT):])
            except ValueError:
                continue
            if isinstance(value, dict):
                found.append(value)
    return found


class RuntimeOp(Command):
    """One op of the machine side, on a host machine; the result's ``detail["report"]`` is its JSON."""

    timeout = 120.0

    def __init__(self, op: str, params: dict[str, Any] | None = None) -> None:
        self.op, self.params = op, dict(params or {})

    def __repr__(self) -> str:
        who = f" {self.params['name']}" if "name" in self.params else ""
        return f"cloudlet {self.op}{who}"

    def shell(self, settings: object) -> Command:
        return Shell(remote_line(self.op, self.params, settings), timeout=self.timeout)

    def execute(self, attempt: Attempt) -> Result:
        quiet = attempt.fork()
        quiet.on_output = None  # the JSON report is for the controller, not the screen
        result = self.shell(attempt.settings).execute(quiet)
        result.command = self
        found = reports(result.output_bytes)
        if result.ok and not found:
            result.error, result.message = ErrorKind.EXIT, "the machine's side of cloudlets said nothing"
        if not result.ok:
            said = [line for line in result.output.splitlines() if not line.startswith("@ecshell")]
            result.message = (result.message + "; " if result.message else "") + " ".join(said)[-600:]
        result.detail = dict(result.detail, report=found[-1] if found else {})
        return result


def runtime_recipe() -> list[Command]:
    """The free-list recipe that makes a machine a cloudlet host: bubblewrap installed, overlayfs there.

    Cloudlets need root on their hosts (mounts and namespaces), so the
    recipe, like every cloudlet operation, runs as the login user, root.
    """
    install = Shell("command -v bwrap >/dev/null || { apt-get update -qq && "
                    "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap; }",
                    timeout=600)
    check = Shell("bwrap --version && command -v nsenter unshare tar python3 >/dev/null && "
                  "{ grep -qw overlay /proc/filesystems || modprobe overlay; }", timeout=60)
    return [once("cloudlet-runtime")(install), check]
