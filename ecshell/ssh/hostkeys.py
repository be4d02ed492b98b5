"""Host key verification: pinned keys for machines we launched, known_hosts for the rest.

Never auto-accept. A key pinned out of band (LocalFabric generated it, EC2
delivered it through user data) is the only key accepted for that machine.
For existing hosts OpenSSH's own rules apply: known_hosts files with
``[host]:port`` entries, and StrictHostKeyChecking:

- ``yes``: an unknown key is refused;
- ``accept-new``: an unknown key is recorded on first use;
- ``ask`` (OpenSSH's default): refused here with the fingerprint, so that an
  interactive shell can show every new key of a broadcast and ask once
  (:meth:`KnownHosts.accept` records the answer);
- ``no``: the operator's explicit choice to accept unknown keys.

A key that differs from a known one is refused under every policy, with both
fingerprints and the command that forgets the old key.
"""

import base64
import hashlib
import os
import threading

from ..errors import ConnectError, ErrorKind


def fingerprint(key):
    """OpenSSH's ``SHA256:...`` fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def host_entry(host, port):
    """The name known_hosts uses: ``host`` on port 22, ``[host]:port`` otherwise."""
    return host if int(port) == 22 else f"[{host}]:{port}"


def parse_public_key(line):
    """A paramiko key from ``"ssh-ed25519 AAAA... comment"``."""
    import paramiko

    fields = line.split()
    return paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1]))


class PinnedKeys:
    """Accept exactly the keys given out of band; anything else is refused."""

    def __init__(self, public_keys, remedy=""):
        self.keys = [parse_public_key(k) if isinstance(k, str) else k for k in public_keys]
        self.remedy = remedy
        # Part of every pool lookup (Endpoint.key): made once, the keys never change.
        self.identity = ("pinned",) + tuple(sorted(k.asbytes() for k in self.keys))

    def verify(self, host, port, key):
        for known in self.keys:
            if known.get_name() == key.get_name() and known.asbytes() == key.asbytes():
                return
        same_type = [k for k in self.keys if k.get_name() == key.get_name()]
        known = same_type[0] if same_type else self.keys[0]
        raise ConnectError(
            ErrorKind.HOSTKEY,
            f"host key of {host_entry(host, port)} does not match the key pinned at launch: "
            f"pinned {fingerprint(known)}, offered {fingerprint(key)}. "
            "Something else answers on that address; refusing." + (f" {self.remedy}" if self.remedy else ""),
            reason="changed", offered=key, known=known,
        )


_file_locks: dict[str, threading.Lock] = {}
_file_locks_guard = threading.Lock()


def _lock_for(path):
    with _file_locks_guard:
        return _file_locks.setdefault(path, threading.Lock())


class KnownHosts:
    """OpenSSH known_hosts semantics over one or more files (the first is written to)."""

    def __init__(self, files, policy="ask", global_files=(), host_key_alias=None, hash_known_hosts=False):
        self.files = [os.path.expanduser(f) for f in files]
        self.policy = policy or "ask"
        #: GlobalKnownHostsFile: read, never written.
        self.global_files = [os.path.expanduser(f) for f in global_files]
        #: HostKeyAlias: the name keys are looked up and recorded under, instead of host[:port].
        self.host_key_alias = host_key_alias
        #: HashKnownHosts: record new names hashed, as ssh-keygen -H would.
        self.hash_known_hosts = hash_known_hosts

    @property
    def identity(self):
        return ("known_hosts",) + tuple(self.files)

    def _load(self):
        import paramiko

        entries = []
        for path in self.files:
            if not os.path.exists(path):
                continue
            keys = paramiko.HostKeys()
            try:
                keys.load(path)
            except (OSError, paramiko.SSHException):
                continue
            entries.append((path, keys))
        return entries

    def lookup(self, name):
        """``[(path, key)]`` for every known key of ``name``."""
        found = []
        for path, keys in self._load():
            entry = keys.lookup(name)
            if entry:
                found.extend((path, k) for k in entry.values())
        return found

    def verify(self, host, port, key):
        name = host_entry(host, port)
        known = self.lookup(name)
        for _path, k in known:
            if k.get_name() == key.get_name() and k.asbytes() == key.asbytes():
                return
        same_type = [(p, k) for p, k in known if k.get_name() == key.get_name()]
        if same_type:
            path, old = same_type[0]
            raise ConnectError(
                ErrorKind.HOSTKEY,
                f"HOST KEY CHANGED for {name}: known {fingerprint(old)} (in {path}), "
                f"offered {fingerprint(key)}. This may be an attack, or the host was re-installed. "
                f"If you know it was, forget the old key with: ssh-keygen -f {path} -R '{name}'",
                reason="changed", offered=key, known=old, host=host, port=port, entry=name,
            )
        if self.policy == "no":
            return
        if self.policy == "accept-new":
            self.accept(host, port, key)
            return
        how = ("set StrictHostKeyChecking accept-new for it in ssh_config, or check the fingerprint "
               "and accept it (cluster.accept_host_key, or answer the shell's question)")
        if self.policy == "yes":
            how = "add its key to known_hosts (ssh-keyscan, then verify the fingerprint)"
        raise ConnectError(
            ErrorKind.HOSTKEY,
            f"unknown host key for {name}: {key.get_name()} {fingerprint(key)} "
            f"(StrictHostKeyChecking {self.policy}); to trust it, {how}",
            reason="unknown", offered=key, host=host, port=port, entry=name, verifier=self,
        )

    def accept(self, host, port, key):
        """Record ``key`` for ``host:port`` in the first known_hosts file."""
        path = self.files[0]
        name = host_entry(host, port)
        with _lock_for(path):
            for _p, k in self.lookup(name):
                if k.asbytes() == key.asbytes():
                    return
            directory = os.path.dirname(path)
            if directory and not os.path.isdir(directory):
                os.makedirs(directory, mode=0o700, exist_ok=True)
            with open(path, "a") as f:
                f.write(f"{name} {key.get_name()} {key.get_base64()}\n")
