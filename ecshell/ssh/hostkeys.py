"""Host key verification: pinned keys for machines we launched, known_hosts for the rest.

>>> trust = KnownHosts(["~/.ssh/known_hosts"], policy="accept-new")       # doctest: +SKIP
>>> trust.order_key_types("10.0.0.5", 22, transport_key_types)            # doctest: +SKIP
('ecdsa-sha2-nistp256', 'ssh-ed25519', ...)                # the type known for the host first
>>> trust.verify("10.0.0.5", 22, offered_key)    # returns, records, or raises ConnectError  # doctest: +SKIP

Never auto-accept. A key pinned out of band (LocalFabric generated it, EC2
delivered it through user data) is the only key accepted for that machine.
For existing hosts the decision is OpenSSH 9.2's (sshconnect.c
check_host_key), over every UserKnownHostsFile and GlobalKnownHostsFile
(:mod:`.knownhosts` reads them), under the name ``HostKeyAlias`` or
``host`` (port 22) or ``[host]:port``:

- the offered key is a known key of that name: accepted (and, on another
  port with nothing known for ``[host]:port``, a key known for the bare
  ``host`` is accepted too, as ssh does);
- keys are known for the name but none is the offered one, whatever its
  type: CHANGED, refused under every StrictHostKeyChecking, with both
  fingerprints, the file and line, and the ``ssh-keygen -R`` line. ssh
  connects anyway under ``no``; ecshell does not;
- the offered key is marked ``@revoked``: refused under every policy (ssh
  connects under ``no``);
- nothing is known: ``yes`` refuses; ``accept-new`` records it; ``ask``
  refuses with reason ``unknown`` so that an interactive shell can show
  every new key of a broadcast and ask once (:meth:`KnownHosts.accept`
  records the answer); ``no`` accepts and records it, with a warning.

So that a host known by its ECDSA or RSA key is not met with its ed25519
key, the key types known for the name are offered first in the key
exchange (:meth:`KnownHosts.order_key_types`), as ssh orders them.
paramiko does not verify host certificates: it takes the key a certificate
carries as the host's key. A ``@cert-authority`` line does not vouch for a
plain key (in ssh neither); a host that ssh would trust through its
certificate is, here, a host whose plain key is unknown, and the message
says so.
"""

from __future__ import annotations

import logging
import os
import shlex
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConnectError, ErrorKind
from . import knownhosts
from .knownhosts import CA_MARKER, REVOKED_MARKER, Entry

if TYPE_CHECKING:
    from paramiko import PKey

log = logging.getLogger("ecshell")

#: What a host name must not contain for ssh to record it (sshconnect.c check_host_key).
UNRECORDABLE = set("@?*#[]|'\"\\")
#: How the offered key compares with what known_hosts says about its name.
OK, CHANGED, NEW, REVOKED = "ok", "changed", "new", "revoked"


def fingerprint(key: PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a paramiko key."""
    return knownhosts.fingerprint(key.asbytes())


def host_entry(host: str, port: int | str) -> str:
    """The name known_hosts uses: ``host`` on port 22, ``[host]:port`` otherwise."""
    return host if int(port) == 22 else f"[{host}]:{port}"


def parse_public_key(line: str) -> PKey:
    """A paramiko key from ``"ssh-ed25519 AAAA... comment"``."""
    import base64

    import paramiko

    fields = line.split()
    return paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1]))


def plain_type(algorithm: str) -> str | None:
    """The key type a host key algorithm signs with (``rsa-sha2-512`` -> ``ssh-rsa``)."""
    types = knownhosts.KEY_TYPES.get(algorithm)
    return types[1] if types else None


def known_first(available: Sequence[str], known_types: Iterable[str]) -> tuple[str, ...]:
    """sshconnect2.c order_hostkeyalgs: algorithms of known key types first, the order kept otherwise.

    When the first algorithm's type is already known the list stays as it is.
    """
    known = set(known_types)
    if not available or plain_type(available[0]) in known:
        return tuple(available)
    first = tuple(a for a in available if plain_type(a) in known)
    return first + tuple(a for a in available if a not in first)


def _key_type(key: PKey) -> str:
    return plain_type(key.get_name()) or key.get_name()


class PinnedKeys:
    """Accept exactly the keys given out of band; anything else is refused."""

    def __init__(self, public_keys: Iterable[str | PKey], remedy: str = "") -> None:
        self.keys = [parse_public_key(k) if isinstance(k, str) else k for k in public_keys]
        self.remedy = remedy
        # Part of every pool lookup (Endpoint.key): made once, the keys never change.
        self.identity = ("pinned",) + tuple(sorted(k.asbytes() for k in self.keys))

    def order_key_types(self, host: str, port: int, available: Sequence[str]) -> tuple[str, ...]:
        """The pinned key types first, so that the server answers with a pinned key."""
        return known_first(available, (_key_type(k) for k in self.keys))

    def verify(self, host: str, port: int, key: PKey) -> None:
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
            reason=CHANGED, offered=key, known=known, host=host, port=port, entry=host_entry(host, port),
        )


_file_locks: dict[str, threading.Lock] = {}
_file_locks_guard = threading.Lock()


def _lock_for(path: str) -> threading.Lock:
    with _file_locks_guard:
        return _file_locks.setdefault(path, threading.Lock())


def _status(entries: Sequence[Entry], blob: bytes) -> tuple[str, Entry | None]:
    """hostfile.c check_key_in_hostkeys for a plain key: (status, the line that decided)."""
    revoked = next((e for e in entries if e.marker == REVOKED_MARKER and e.equals(blob)), None)
    if revoked is not None:
        return REVOKED, revoked
    plain = [e for e in entries if not e.marker]
    for entry in plain:
        if entry.equals(blob):
            return OK, entry
    return (CHANGED, plain[0]) if plain else (NEW, None)


def _files(paths: Iterable[str]) -> list[str]:
    paths = list(paths)
    if paths and paths[0].lower() == "none":  # ssh_config's way of saying "no file"
        return []
    return [os.path.expanduser(p) for p in paths]


class KnownHosts:
    """OpenSSH known_hosts semantics over the user's files (the first is written to) and the global ones."""

    def __init__(self, files: Iterable[str], policy: str = "ask", global_files: Iterable[str] = (),
                 host_key_alias: str | None = None, hash_known_hosts: bool = False) -> None:
        #: UserKnownHostsFile: read; new keys are recorded in the first.
        self.files = _files(files)
        self.policy = policy or "ask"
        #: GlobalKnownHostsFile: read, never written.
        self.global_files = _files(global_files)
        #: HostKeyAlias: the name keys are looked up and recorded under, instead of host[:port].
        self.host_key_alias = host_key_alias
        #: HashKnownHosts: record new names hashed, as ssh-keygen -H would.
        self.hash_known_hosts = hash_known_hosts

    @property
    def identity(self) -> tuple[Any, ...]:
        return ("known_hosts", tuple(self.files), tuple(self.global_files), self.host_key_alias, self.policy)

    def name(self, host: str, port: int) -> str:
        """The name this host's keys are known under: HostKeyAlias, ``host`` or ``[host]:port``."""
        if self.host_key_alias:
            return knownhosts.lower(self.host_key_alias)
        return host_entry(knownhosts.lower(host), port)

    def entries(self, name: str) -> list[Entry]:
        """Every valid known_hosts line for ``name``: the user's files first, then the global ones."""
        name = knownhosts.lower(name)
        return [e for path in self.files + self.global_files for e in knownhosts.lookup(path, name)]

    def order_key_types(self, host: str, port: int, available: Sequence[str]) -> tuple[str, ...]:
        """``available`` host key algorithms, those whose key type is known for the host first."""
        known = (e.key_type for e in self.entries(self.name(host, port)) if not e.marker and not e.certificate)
        return known_first(available, known)

    def verify(self, host: str, port: int, key: PKey) -> None:
        """Return if ``key`` is trusted for ``host:port`` (recording it where the policy says), else raise."""
        name = self.name(host, port)
        blob = key.asbytes()
        entries = self.entries(name)
        status, found = _status(entries, blob)
        if status == NEW and not self.host_key_alias and int(port) != 22:
            # ssh looks for the key under the bare host name too; only a match counts there.
            bare_status, bare_found = _status(self.entries(knownhosts.lower(host)), blob)
            if bare_status in (OK, REVOKED):
                status, found = bare_status, bare_found
        if status == OK:
            return
        if status == REVOKED:
            assert found is not None
            raise ConnectError(
                ErrorKind.HOSTKEY,
                f"REVOKED HOST KEY for {name}: the {_key_type(key)} key it offered ({fingerprint(key)}) "
                f"is marked @revoked in {found.where}. A revoked key may be a stolen one used to "
                "impersonate the host; refused whatever StrictHostKeyChecking says. Ask the host's "
                "administrator for its new key.",
                reason=REVOKED, offered=key, host=host, port=port, entry=name, file=found.path, line=found.line,
            )
        if status == CHANGED:
            raise self._changed(name, host, port, key, entries)
        self._new(name, host, port, key, entries)

    def _changed(self, name: str, host: str, port: int, key: PKey, entries: Sequence[Entry]) -> ConnectError:
        plain = [e for e in entries if not e.marker]
        offered_type = _key_type(key)
        same_type = [e for e in plain if e.key_type == offered_type]
        old = (same_type or plain)[0]
        other_type = "" if same_type else (
            f" The host offered no key of a type known for it ({', '.join(sorted({e.key_type for e in plain}))}).")
        return ConnectError(
            ErrorKind.HOSTKEY,
            f"HOST KEY CHANGED for {name}: known {old.key_type} {old.fingerprint} (in {old.where}), "
            f"offered {offered_type} {fingerprint(key)}.{other_type} This may be an attack, or the host "
            "was re-installed; refused whatever StrictHostKeyChecking says. If you know it was "
            "re-installed, forget the old key with: "
            f"ssh-keygen -f {shlex.quote(old.path)} -R {shlex.quote(name)}",
            reason=CHANGED, offered=key, known=old, host=host, port=port, entry=name,
            file=old.path, line=old.line,
        )

    def _new(self, name: str, host: str, port: int, key: PKey, entries: Sequence[Entry]) -> None:
        key_text = f"{_key_type(key)} {fingerprint(key)}"
        detail: dict[str, Any] = dict(offered=key, host=host, port=port, entry=name, policy=self.policy)
        authorities = [e for e in entries if e.marker == CA_MARKER]
        if authorities:
            # ssh would have asked for the host's certificate first; paramiko cannot check one.
            key_text += (f"; {authorities[0].where} trusts a certificate authority for it, but ecshell "
                         "(paramiko) cannot verify host certificates: only the plain key in known_hosts counts")
        if not self.files or UNRECORDABLE & set(host):
            where = "no UserKnownHostsFile to record it in" if not self.files else \
                f"the host name {host!r} cannot be written to known_hosts"
            raise ConnectError(
                ErrorKind.HOSTKEY,
                f"unknown host key for {name}: {key_text}, and {where}; ssh refuses it too. "
                "Check the fingerprint out of band and add the key to a known_hosts file ecshell reads.",
                reason="unrecordable", **detail)
        if self.policy in ("accept-new", "no"):
            self._record(name, key, warn=self.policy == "no")
            return
        if self.policy == "yes":
            raise ConnectError(
                ErrorKind.HOSTKEY,
                f"unknown host key for {name}: {key_text} (StrictHostKeyChecking yes refuses keys that are "
                "not in known_hosts). Verify this fingerprint out of band (the host's console or its "
                f"administrator), then add the key to {self.files[0]}.",
                reason="unknown", **detail)
        raise ConnectError(
            ErrorKind.HOSTKEY,
            f"unknown host key for {name}: {key_text} (StrictHostKeyChecking {self.policy}); to trust it, "
            "set StrictHostKeyChecking accept-new for it in ssh_config, or check the fingerprint out of "
            "band and accept it (answer the shell's question, or the result's detail['verifier'].accept)",
            reason="unknown", verifier=self, **detail)

    def _record(self, name: str, key: PKey, warn: bool) -> None:
        try:
            written = self._append(name, key)
        except (OSError, ValueError) as exc:  # ValueError: a path with a NUL in it
            # ssh connects all the same, saying so.
            log.warning("could not add %s's %s host key to %s: %s", name, _key_type(key), self.files[0], exc)
            return
        if warn and written:
            log.warning("Permanently added %r (%s %s) to %s: StrictHostKeyChecking no accepts unknown "
                        "host keys", name, _key_type(key), fingerprint(key), self.files[0])

    def _append(self, name: str, key: PKey) -> bool:
        path = self.files[0]
        blob = key.asbytes()
        with _lock_for(path):
            if any(e.equals(blob) and not e.marker for e in knownhosts.lookup(path, name)):
                return False  # another thread of this broadcast recorded it first
            knownhosts.append(path, knownhosts.entry_line(name, _key_type(key), blob, self.hash_known_hosts))
        return True

    def accept(self, host: str, port: int, key: PKey) -> None:
        """Record ``key`` for ``host:port`` (under HostKeyAlias if set) in the first known_hosts file.

        Raises OSError when the file cannot be written, ValueError when
        there is no file to write to (or its path cannot be one).
        """
        if not self.files:
            raise ValueError("no UserKnownHostsFile to record the key in")
        self._append(self.name(host, port), key)

    def __repr__(self) -> str:
        return f"<KnownHosts {self.files + self.global_files} {self.policy}>"
