"""LocalFabric: every machine a real OpenSSH ``sshd`` on 127.0.0.1.

>>> from ecshell import Cluster, LocalFabric
>>> cluster = Cluster(LocalFabric())
>>> web = cluster.launch(3, name="web")        # three sshd, ready in well under a second  # doctest: +SKIP
>>> web.run("echo $ECSHELL_MACHINE")           # doctest: +SKIP

Each machine has its own directory under ``<home>/local/<id>/``: sshd_config,
an ed25519 host key generated here (so the key is pinned before the first
connection), authorized_keys with the operator's ecshell client key, a state
directory exposed to commands as ``$ECSHELL_STATE_DIR``, sshd's log and a
``meta.json``. Everything about a machine is on disk, so a new shell finds
machines started by an earlier one; terminate stops exactly the processes
this fabric started, checked by pid and command line. An sshd's pid is on
disk from the moment it is spawned, and a launch that fails stops every sshd
it started and removes their directories.

What is read back from disk is data: a machine is known by its directory's
name (``lm-<8 hex digits>``), and one whose recorded name is not an allowed
machine name (:func:`ecshell.hostset.name_problem`) is listed under its id,
with a warning; nothing read back is ever written into an sshd_config.

Commands run in the user's login shell with ``SHLVL=1`` set by sshd, which
keeps Debian's bash from sourcing ``~/.bashrc`` for every command (a pyenv
or conda init there costs ~100 ms per command).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from traitlets import Dict, Float, Integer, Unicode, default

from ..config import ecshell_home
from ..errors import ArgumentError, FabricError
from ..hostset import check_prefix, name_problem
from ..procs import children_map, cmdline, descendants, with_environment
from ..ssh.keys import client_key, generate_ed25519, write_private_file
from .base import RUNNING, STOPPED, Fabric, Prototype

if TYPE_CHECKING:
    from ..states import MachineState

log = logging.getLogger("ecshell")

#: What LocalFabric names a machine's directory (its id); other entries are not machines.
MACHINE_ID = re.compile(r"lm-[0-9a-f]{8}")

SSHD_CONFIG = """\
# Written by ecshell's LocalFabric for machine {name} ({id}).
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The machine's files live under the operator's ecshell home, which may sit in
# a world-writable parent such as /tmp; the keys themselves are 0600.
StrictModes no
PermitRootLogin prohibit-password
UseDNS no
PrintMotd no
PrintLastLog no
MaxSessions 256
MaxStartups 256
LoginGraceTime 30
Subsystem sftp {sftp}
SetEnv {env}
# A command's kill token (see README, "Killing a command"): the SSH env request may set it.
AcceptEnv ECSHELL_RUN
"""


def sshd_config(name: str, id: str, port: int, directory: str, environment: Mapping[str, str],
                authorized_keys: str | None = None, sftp: str = "internal-sftp") -> str:
    """The sshd_config of a local machine (LocalFabric's, and the tests' own sshd hosts).

    ``environment``: the variables sshd sets for every command. ``authorized_keys``
    defaults to the machine's own file; ``sftp`` is the sftp subsystem to run.
    A value that could end a line or a quoted word of the config is refused
    (ArgumentError), so no value can add a directive.
    """
    values = [name, id, str(port), directory, authorized_keys or "", sftp, *environment, *environment.values()]
    for value in values:
        if not value.isprintable() or '"' in value or "\\" in value:
            raise ArgumentError(f"cannot write {value!r} into an sshd_config: no quotes, backslashes "
                                "or control characters (newlines) in machine names, paths or environment")
    return SSHD_CONFIG.format(
        name=name, id=id, port=port, dir=directory,
        authorized_keys=authorized_keys or f"{directory}/authorized_keys", sftp=sftp,
        env=" ".join(f'"{k}={v}"' for k, v in environment.items()))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (another process may take it before it is bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalFabric(Fabric):
    """Machines that are real sshd processes on 127.0.0.1, one port each."""

    kind = "local"

    directory = Unicode(help="""Where machine directories live.
        Default: <ECSHELL_HOME>/local (~/.ecshell/local).""").tag(config=True)

    sshd = Unicode("/usr/sbin/sshd", help="Path of the OpenSSH server binary.").tag(config=True)

    environment = Dict({"SHLVL": "1"}, help="""Variables sshd sets for every command
        (its SetEnv). SHLVL=1 keeps Debian's bash from sourcing ~/.bashrc for each
        command; ECSHELL_STATE_DIR and ECSHELL_MACHINE are always added.""").tag(config=True)

    start_timeout = Float(5.0, help="Seconds to wait for one sshd to listen before the launch fails.").tag(config=True)

    max_launch = Integer(100, help="""Most machines one launch call starts (each is an sshd
        process on this computer); a larger count is refused before anything starts.
        Number of machines.""").tag(config=True)

    hourly_cost = Float(0.0, help="Cost per machine-hour shown by %cost (local machines are free).").tag(config=True)

    @default("directory")
    def _default_directory(self):
        return os.path.join(ecshell_home(), "local")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Held by the public methods (launch, start, stop, terminate) only: the
        # helpers they call never take it, so none of them can wait on itself.
        self._lock = threading.Lock()
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # the sshd this process started, by pid
        self._renamed: set[str] = set()  # ids already warned about for a bad recorded name

    # -- paths and records ------------------------------------------------

    key_file = Unicode(help="""The operator's ecshell client key, created (0600) when missing.
        Default: <ECSHELL_HOME>/id_ed25519.""").tag(config=True)

    @default("key_file")
    def _default_key_file(self):
        return os.path.join(ecshell_home(), "id_ed25519")

    def _dir(self, machine_id):
        return os.path.join(self.directory, machine_id)

    def _read_meta(self, machine_id):
        """The machine's meta.json, as data: known by its directory's name, under an allowed name."""
        if not MACHINE_ID.fullmatch(machine_id):
            return None
        try:
            with open(os.path.join(self._dir(machine_id), "meta.json")) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict):
            return None
        meta["id"] = machine_id
        problem = name_problem(meta.get("name"))
        if problem is not None:
            if machine_id not in self._renamed:
                self._renamed.add(machine_id)
                log.warning("local machine %s: its recorded name is refused (%s); listed as %s",
                            machine_id, problem, machine_id)
            meta["name"] = machine_id
        return meta

    def _write_meta(self, meta):
        path = os.path.join(self._dir(meta["id"]), "meta.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, path)

    def _pid_if_running(self, meta):
        pid = meta.get("pid")
        if not pid:
            return None
        config = os.path.join(self._dir(meta["id"]), "sshd_config").encode()
        if config + b" " in cmdline(pid) + b" ":
            return pid
        return None

    def _prototype(self, meta, state):
        return Prototype(
            id=meta["id"],
            name=meta["name"],
            host="127.0.0.1",
            port=meta["port"],
            user=meta["user"],
            identity_files=[meta["identity_file"]],
            host_keys=[meta["host_key"]],
            tags=dict(meta.get("tags", {})),
            state=state,
            identities_only=True,
            launched_at=meta.get("started_at"),
            extra={"directory": self._dir(meta["id"]),
                   "state_dir": os.path.join(self._dir(meta["id"]), "state"),
                   "pid": meta.get("pid"),
                   "hourly_cost": self.hourly_cost},
        )

    # -- the Fabric interface ---------------------------------------------

    def discover(self) -> list[Prototype]:
        found = []
        try:
            entries = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        for machine_id in entries:
            meta = self._read_meta(machine_id)
            if meta is None:
                continue
            state = RUNNING if self._pid_if_running(meta) else STOPPED
            found.append(self._prototype(meta, state))
        return found

    def launch(self, count: int, name: str = "node", tags: Mapping[str, str] | None = None,
               **options: Any) -> list[Prototype]:
        if options:
            raise ArgumentError(f"LocalFabric.launch takes no {', '.join(sorted(options))}; "
                                "it accepts count, name and tags")
        self.check_launch_count(count)
        check_prefix(name, count)
        if not os.path.exists(self.sshd):
            raise FabricError(f"OpenSSH server not found at {self.sshd}: install it "
                              "(apt-get install openssh-server) or set c.LocalFabric.sshd")
        self._ensure_privsep_dir()
        key_path = client_key(self.key_file)
        with open(key_path + ".pub") as f:
            authorized = f.read()
        user = pwd.getpwuid(os.geteuid()).pw_name
        tags = dict(tags or {})
        tags.setdefault("role", name)

        with self._lock:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            names = self.free_names(name, count)
            metas: list[dict[str, Any]] = []
            try:
                for machine_name in names:
                    metas.append(self._create(machine_name, user, key_path, authorized, tags))
                started = self._start_all(metas)
            except BaseException:
                self._remove(metas)  # a failed (or interrupted) launch leaves nothing behind
                raise
        return [self._prototype(meta, RUNNING) for meta in started]

    def _create(self, name, user, key_path, authorized, tags):
        machine_id = "lm-" + secrets.token_hex(4)
        path = self._dir(machine_id)
        os.makedirs(os.path.join(path, "state"), mode=0o700)
        private, public = generate_ed25519()
        write_private_file(os.path.join(path, "ssh_host_ed25519_key"), private)
        with open(os.path.join(path, "ssh_host_ed25519_key.pub"), "w") as f:
            f.write(public + "\n")
        with open(os.path.join(path, "authorized_keys"), "w") as f:
            f.write(authorized)
        meta = {"id": machine_id, "name": name, "user": user, "port": None,
                "identity_file": key_path, "host_key": public, "tags": tags,
                "created_at": time.time(), "started_at": None, "pid": None}
        self._write_meta(meta)
        return meta

    def _write_config(self, meta):
        path = self._dir(meta["id"])
        env = dict(self.environment)
        env["ECSHELL_STATE_DIR"] = os.path.join(path, "state")
        env["ECSHELL_MACHINE"] = meta["name"]
        config = sshd_config(meta["name"], meta["id"], meta["port"], path, env)
        with open(os.path.join(path, "sshd_config"), "w") as f:
            f.write(config)

    def _spawn(self, meta, new_port=False):
        path = self._dir(meta["id"])
        if new_port or meta.get("port") is None:
            meta["port"] = free_port()
        self._write_config(meta)
        try:
            os.unlink(os.path.join(path, "sshd.pid"))
        except FileNotFoundError:
            pass
        proc = subprocess.Popen(
            [self.sshd, "-D", "-f", os.path.join(path, "sshd_config"), "-E", os.path.join(path, "sshd.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )
        self._children[proc.pid] = proc
        meta["pid"] = proc.pid
        self._write_meta(meta)  # on disk before anything else: any later shell can stop it
        return proc

    def _start_all(self, metas):
        """Start an sshd per machine and wait until each has bound its port.

        sshd writes its PidFile only after it listens, so waiting for that file
        tells readiness without connecting (a probe connection would cost sshd
        a fork and a re-exec each time). On failure it raises FabricError and
        leaves the clean-up (of every sshd in ``metas``) to its caller.
        """
        pending = {m["id"]: (m, self._spawn(m), 0) for m in metas}
        deadline = time.monotonic() + self.start_timeout
        done = []
        while pending:
            for machine_id, (meta, proc, tries) in list(pending.items()):
                if os.path.exists(os.path.join(self._dir(machine_id), "sshd.pid")):
                    meta["started_at"] = time.time()
                    self._write_meta(meta)
                    done.append(meta)
                    del pending[machine_id]
                elif proc.poll() is not None:
                    self._children.pop(proc.pid, None)
                    if tries >= 3:
                        raise FabricError(f"sshd for {meta['name']} exited with code {proc.returncode}: "
                                          f"{self._log_tail(meta)}")
                    # most likely its port was taken meanwhile: try another
                    pending[machine_id] = (meta, self._spawn(meta, new_port=True), tries + 1)
            if pending and time.monotonic() > deadline:
                names = ", ".join(m["name"] for m, _, _ in pending.values())
                raise FabricError(f"sshd did not start listening within {self.start_timeout}s for {names}; "
                                  "raise c.LocalFabric.start_timeout on a loaded machine")
            if pending:
                time.sleep(0.002)
        return done

    def _log_tail(self, meta):
        try:
            with open(os.path.join(self._dir(meta["id"]), "sshd.log")) as f:
                return f.read()[-500:].strip() or "(empty log)"
        except OSError:
            return "(no log)"

    def _ensure_privsep_dir(self):
        # As root, sshd refuses to start without its privilege separation
        # directory, which Debian creates only when the ssh service starts.
        if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    def _kill(self, metas):
        """Stop the listening sshd of each machine, every session under it, and the daemons they left."""
        tree = children_map()
        victims, daemons = [], []
        for meta in metas:
            pid = self._pid_if_running(meta) or self._own_child(meta.get("pid"))
            if pid is not None:
                victims.append(pid)
                victims.extend(descendants(pid, tree))
            # Daemons its sessions started have left sshd's tree (a cloudlet's sandbox, say); they
            # carry the machine's state directory in their environment. A machine that is switched
            # off gives its processes no time: SIGKILL, which also reaches a pid namespace's init.
            for daemon in with_environment("ECSHELL_STATE_DIR", os.path.join(self._dir(meta["id"]), "state")):
                if daemon not in victims and daemon != os.getpid():
                    daemons.append(daemon)
        below = {pid for daemon in daemons for pid in descendants(daemon, tree)}
        roots = [pid for pid in dict.fromkeys(daemons) if pid not in below]
        daemons = [pid for root in roots for pid in (*descendants(root, tree), root)]
        roots_set = set(roots)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in daemons:
            self._kill_and_wait(pid, reaped=pid not in roots_set)
        deadline = time.monotonic() + 2.0
        for pid in victims + daemons:
            self._wait_gone(pid, deadline)

    @staticmethod
    def _kill_and_wait(pid, reaped=True):
        """SIGKILL ``pid`` and (if ``reaped``) give its parent a moment to reap it.

        Each daemon's descendants go first, parents before children, and the
        daemon itself last: so a sandbox's init is reaped by the bwrap above
        it, instead of being left a zombie for an init that may never reap.
        """
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + (0.5 if reaped else 0.0)
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.002)

    def _own_child(self, pid):
        """``pid`` if it is an sshd this process started that has not exited (even before its exec shows)."""
        proc = self._children.get(pid) if pid else None
        return pid if proc is not None and proc.poll() is None else None

    def _wait_gone(self, pid, deadline):
        proc = self._children.pop(pid, None)
        while True:
            if proc is not None:
                if proc.poll() is not None:
                    return
            elif not os.path.exists(f"/proc/{pid}") or self._is_zombie(pid):
                return
            if time.monotonic() > deadline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    return
                deadline = time.monotonic() + 2.0
            time.sleep(0.002)

    @staticmethod
    def _is_zombie(pid):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] == b"Z"
        except OSError:
            return True

    def _metas(self, ids):
        metas = []
        for machine_id in ids:
            meta = self._read_meta(machine_id)
            if meta is not None:
                metas.append(meta)
        return metas

    def stop(self, ids: Iterable[str]) -> None:
        with self._lock:
            self._kill(self._metas(ids))

    def start(self, ids: Iterable[str]) -> list[Prototype]:
        with self._lock:
            metas = [m for m in self._metas(ids) if not self._pid_if_running(m)]
            self._ensure_privsep_dir()
            try:
                started = self._start_all(metas)
            except BaseException:
                # They stay stopped machines (their directories are theirs), with no sshd left behind.
                self._kill(metas)
                for meta in metas:
                    meta["pid"] = meta["started_at"] = None
                    self._write_meta(meta)
                raise
            return [self._prototype(m, RUNNING) for m in started]

    def terminate(self, ids: Iterable[str]) -> None:
        with self._lock:
            self._remove(self._metas(ids))

    def _remove(self, metas):
        """Stop each machine's sshd and delete its directory."""
        self._kill(metas)
        for meta in metas:
            shutil.rmtree(self._dir(meta["id"]), ignore_errors=True)

    def states(self, ids: Iterable[str]) -> dict[str, MachineState]:
        states = {}
        for meta in self._metas(ids):
            states[meta["id"]] = RUNNING if self._pid_if_running(meta) else STOPPED
        return states
