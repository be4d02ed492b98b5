"""Readying gateway machines for ClusterShell's tree mode, over the direct path.

Each gateway gets a directory ``<state dir>/clustershell`` (mode 700) holding:

- ``ClusterShell.zip``: this controller's own ClusterShell package, zipped;
  Python imports it from the zip (``PYTHONPATH``), so nothing is installed
  system-wide and the gateway runs the same version as the controller;
- ``ssh_config``: one ``Host`` block per target the gateway may reach, with
  the address, port and user the controller resolved for it;
- ``known_hosts``: the pinned host keys of the targets ecshell launched,
  each under the target's name (``HostKeyAlias``), checked with
  ``StrictHostKeyChecking yes``; a target without a pinned key (one ecshell
  did not launch) is checked against the gateway's own known_hosts under the
  operator's policy (``ask`` becomes ``yes``: nobody can answer on a gateway);
- ``id-<digest>``: the private keys the controller reaches those targets
  with. A gateway thereby holds the keys to every target it serves: make
  gateways of machines you trust as much as the controller.

All of it goes in one round trip per gateway (a tar archive on the
command's stdin) and is sent again only when it changed.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import tarfile
import threading
import zipfile
from typing import TYPE_CHECKING, Any, Optional

from ..commands import Shell
from ..machineset import MachineSet
from ..state import state_dir_expr

if TYPE_CHECKING:
    from ..machine import Machine

#: The gateway's directory, as a shell expression (``$G``), after the state directory's.
GATEWAY_DIR = 'G="$S/clustershell"'
#: Seconds the install on one gateway may take.
INSTALL_TIMEOUT = 60.0


def _clustershell_zip() -> bytes:
    """This controller's ClusterShell package as a zip archive (cached)."""
    global _ZIP
    if _ZIP is None:
        import ClusterShell

        root = os.path.dirname(os.path.abspath(ClusterShell.__file__))
        data = io.BytesIO()
        with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as archive:
            for folder, dirs, files in os.walk(root):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for name in sorted(files):
                    if name.endswith(".py"):
                        path = os.path.join(folder, name)
                        arcname = os.path.join("ClusterShell", os.path.relpath(path, root))
                        info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
                        with open(path, "rb") as f:
                            archive.writestr(info, f.read())
        _ZIP = data.getvalue()
    return _ZIP


_ZIP: Optional[bytes] = None


def invoke_command(settings: Any) -> str:
    """What the controller's ssh runs on a gateway: ClusterShell's gateway, from the zip, in ``$G``."""
    return (f'{state_dir_expr(settings)}; {GATEWAY_DIR}; cd "$G" && '
            'CLUSTERSHELL_GW_LOG_DIR="$G" PYTHONPATH="$G/ClusterShell.zip" exec python3 -m ClusterShell.Gateway -Bu')


def host_block(name: str, machine: Machine, directory: str, identities: dict[str, str], policy: str) -> str:
    """An ssh_config Host block reaching ``machine`` as the controller resolved it; key files under ``directory``."""
    endpoint = machine.endpoint
    lines = [f"Host {name}", f"  HostName {endpoint.host}", f"  Port {endpoint.port}", f"  User {endpoint.user}"]
    for path in endpoint.identity_files:
        if path in identities:
            lines.append(f"  IdentityFile {directory}/{identities[path]}")
    lines.append("  IdentitiesOnly yes")
    if machine.prototype.host_keys:
        lines += [f"  HostKeyAlias {name}", f"  UserKnownHostsFile {directory}/known_hosts",
                  "  StrictHostKeyChecking yes"]
    else:
        lines.append(f"  StrictHostKeyChecking {policy}")
    return "\n".join(lines) + "\n"


def known_hosts(machines: list[Machine]) -> str:
    """known_hosts lines of the machines' pinned keys, each under the machine's name (its HostKeyAlias)."""
    return "".join(f"{m.name} {' '.join(key.split()[:2])}\n" for m in machines for key in m.prototype.host_keys)


def identity_names(machines: list[Machine]) -> dict[str, str]:
    """``{local private key path: its file name on a gateway}`` for the keys that reach ``machines``."""
    found: dict[str, str] = {}
    for machine in machines:
        for path in machine.endpoint.identity_files:
            expanded = os.path.expanduser(path)
            if path not in found and os.path.isfile(expanded):
                found[path] = "id-" + hashlib.sha256(os.path.abspath(expanded).encode()).hexdigest()[:12]
    return found


def host_key_policy(settings: Any) -> str:
    """StrictHostKeyChecking on a gateway for targets without a pinned key."""
    policy = settings.strict_host_key_checking or "yes"
    return "yes" if policy == "ask" else policy


class Installer:
    """Puts ClusterShell and the ssh files on gateways, once per content; remembers each gateway's directory."""

    def __init__(self, settings: Any):
        self.settings = settings
        self.directories: dict[str, str] = {}  # gateway name -> its absolute $G
        self._sent: dict[str, str] = {}  # gateway name -> digest of what it holds
        self._lock = threading.Lock()

    def ready(self, gateways: list[Machine], targets: list[Machine]) -> dict[str, str]:
        """Make every gateway ready to reach ``targets``; ``{gateway name: why it is not}`` for failures."""
        failed: dict[str, str] = {}
        with self._lock:
            missing = [g for g in gateways if g.name not in self.directories]
            if missing:
                found = MachineSet(missing).execute(Shell(
                    f'{state_dir_expr(self.settings)}; {GATEWAY_DIR}; mkdir -p "$G" && chmod 700 "$G" && '
                    'cd "$G" && pwd -P', timeout=INSTALL_TIMEOUT), transport="direct")
                for result in found.values():
                    if result.ok and result.output.strip().startswith("/"):
                        self.directories[result.name] = result.output.strip().splitlines()[-1]
                    else:
                        failed[result.name] = f"cannot make its directory: {result.status} {result.message} " \
                                              f"{result.output.strip()[-200:]}".strip()
            identities = identity_names(targets)
            policy = host_key_policy(self.settings)
            hosts = known_hosts(targets)
            threads = []
            for gateway in gateways:
                if gateway.name in failed:
                    continue
                directory = self.directories[gateway.name]
                config = "".join(host_block(t.name, t, directory, identities, policy) for t in targets)
                files = {"ClusterShell.zip": _clustershell_zip(), "ssh_config": config.encode(),
                         "known_hosts": hosts.encode()}
                for path, name in identities.items():
                    with open(os.path.expanduser(path), "rb") as f:
                        files[name] = f.read()
                digest = hashlib.sha256(b"".join(hashlib.sha256(k.encode() + v).digest()
                                                 for k, v in sorted(files.items()))).hexdigest()
                if self._sent.get(gateway.name) == digest:
                    continue
                thread = threading.Thread(target=self._send, args=(gateway, directory, files, digest, failed))
                thread.start()
                threads.append(thread)
            for thread in threads:
                thread.join()
        return failed

    def _send(self, gateway: Machine, directory: str, files: dict[str, bytes], digest: str,
              failed: dict[str, str]) -> None:
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
        quoted = shlex.quote(directory)
        script = (f"cd {quoted} && umask 077 && tar xzf - && "
                  f'PYTHONPATH={quoted}/ClusterShell.zip python3 -c "import ClusterShell.Gateway"')
        result = MachineSet([gateway]).execute(Shell(script, timeout=INSTALL_TIMEOUT, input=archive.getvalue()),
                                               transport="direct")[gateway.name]
        if result.ok:
            self._sent[gateway.name] = digest
        else:
            failed[gateway.name] = f"installing ClusterShell failed: {result.status} {result.message} " \
                                   f"{result.output.strip()[-300:]}".strip()
