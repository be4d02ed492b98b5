"""The keys offered to a server, in OpenSSH's order, and what signs with each.

OpenSSH's client (sshconnect2.c, ``pubkey_prepare``) tries, in this order:

1. the certificates named by ``CertificateFile``;
2. the agent's keys that an ``IdentityFile`` names (by its public key: the
   file itself when it is a ``.pub``, else ``<file>.pub``, else the public
   half of an OpenSSH-format private key), in the agent's order;
3. the agent's other keys, unless ``IdentitiesOnly yes``;
4. the remaining identity files, in config order, each followed by its
   ``<file>-cert.pub`` when no ``CertificateFile`` is set.

DSA keys are left out, as OpenSSH 9.2's default PubkeyAcceptedAlgorithms
leaves them out. A certificate is signed by the key it certifies, from the
agent when the agent holds it. A key that cannot be used (encrypted with no
agent copy, unreadable, too open, garbage) is skipped with the reason, as
OpenSSH skips it; the reasons end up in the host's ``auth`` message.

>>> from ecshell.ssh.keys import PublicKey
>>> a = PublicKey.from_line("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGvfe3dOz8EbRj1ExUDkKFr4M6XjnY/Z5b1vmKLlDQnO a")
>>> [i.source for i in offered(["/nonexistent/id_rsa"], [a], identities_only=False)]
['a (agent)', '/nonexistent/id_rsa']
"""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
from typing import Any, Callable, Optional, Sequence

from .keys import PublicKey, WireReader, load_certificate, load_key, public_key, wire_string

#: OpenSSH 9.2's identity files when none is configured (``ssh -G`` lists them), in its order.
OPENSSH_DEFAULT_IDENTITIES = ("~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ecdsa_sk", "~/.ssh/id_ed25519",
                              "~/.ssh/id_ed25519_sk", "~/.ssh/id_xmss", "~/.ssh/id_dsa")
#: Key types OpenSSH 9.2 does not offer unless PubkeyAcceptedAlgorithms asks for them.
NOT_OFFERED = ("ssh-dss",)

_REQUEST_IDENTITIES, _IDENTITIES_ANSWER, _SIGN_REQUEST, _SIGN_RESPONSE = 11, 12, 13, 14
_RSA_SHA2_FLAGS = {"rsa-sha2-256": 2, "rsa-sha2-512": 4}


@dataclasses.dataclass
class Identity:
    """One candidate: what the server is shown, and where the private half lives."""

    source: str  # how the operator knows it: a path, or an agent key's comment
    public: Optional[PublicKey]  # None: a file whose public half shows only once the private key is read
    path: Optional[str] = None  # the identity file (for ``<id>-cert.pub``, the private key next to it)
    via_agent: bool = False


class AgentError(Exception):
    """The agent could not be reached or answered nonsense."""


class Agent:
    """A client of an ssh-agent socket: list its keys, ask it to sign (the SSH agent protocol)."""

    def __init__(self, path: str, timeout: float):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise AgentError(f"cannot reach ssh-agent at {path} ({exc.strerror or exc})") from None

    def _request(self, message: bytes) -> WireReader:
        try:
            self._sock.sendall(struct.pack(">I", len(message)) + message)
            length = struct.unpack(">I", self._receive(4))[0]
            if length > 256 * 1024:
                raise AgentError(f"ssh-agent at {self.path} sent a {length}-byte answer")
            return WireReader(self._receive(length))
        except OSError as exc:
            raise AgentError(f"ssh-agent at {self.path} did not answer ({exc.strerror or exc})") from None

    def _receive(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise AgentError(f"ssh-agent at {self.path} closed the connection")
            data += chunk
        return data

    def keys(self) -> list[PublicKey]:
        """The agent's keys and certificates, in its order."""
        answer = self._request(bytes([_REQUEST_IDENTITIES]))
        try:
            if answer.take(1)[0] != _IDENTITIES_ANSWER:
                raise AgentError(f"ssh-agent at {self.path} refused to list its keys")
            found = []
            for _ in range(answer.uint32()):
                blob, comment = answer.string(), answer.string().decode("utf-8", "replace")
                try:
                    found.append(PublicKey.from_blob(blob, comment))
                except ValueError:
                    continue
            return found
        except ValueError:
            raise AgentError(f"ssh-agent at {self.path} sent a malformed key list") from None

    def sign(self, blob: bytes, data: bytes, algorithm: str) -> Optional[bytes]:
        """The agent's signature (wire format) of ``data`` with the key ``blob``; None if it refused."""
        flags = _RSA_SHA2_FLAGS.get(_signature_algorithm(algorithm), 0)
        message = bytes([_SIGN_REQUEST]) + wire_string(blob) + wire_string(data) + struct.pack(">I", flags)
        try:
            answer = self._request(message)
            if answer.take(1)[0] != _SIGN_RESPONSE:
                return None
            return answer.string()
        except (AgentError, ValueError):
            return None

    def close(self) -> None:
        self._sock.close()


def _signature_algorithm(algorithm: str) -> str:
    return algorithm.replace("-cert-v01@openssh.com", "")


def agent_socket(identity_agent: Optional[str]) -> Optional[str]:
    """The socket an endpoint's IdentityAgent names (None: no agent)."""
    if identity_agent is None or identity_agent == "SSH_AUTH_SOCK":
        return os.environ.get("SSH_AUTH_SOCK") or None
    if identity_agent.lower() == "none":
        return None
    return os.path.expanduser(identity_agent)


def open_agent(identity_agent: Optional[str], timeout: float) -> tuple[Optional[Agent], list[PublicKey], str]:
    """(agent, its keys, "") or (None, [], why not); no agent configured is (None, [], "")."""
    path = agent_socket(identity_agent)
    if path is None:
        return None, [], ""
    try:
        agent = Agent(path, timeout)
    except AgentError as exc:
        return None, [], str(exc)
    try:
        return agent, agent.keys(), ""
    except AgentError as exc:
        agent.close()
        return None, [], str(exc)


def _certificate_next_to(path: str) -> Optional[Identity]:
    # OpenSSH loads "<id>-cert" then "<id>-cert.pub"; a file there that is no user certificate is ignored.
    for candidate in (path + "-cert", path + "-cert.pub"):
        certificate, _ = load_certificate(candidate)
        if certificate is not None:
            return Identity(candidate, certificate, path)
    return None


def offered(identity_files: Sequence[str], agent_keys: Sequence[PublicKey], identities_only: bool,
            certificate_files: Sequence[str] = (), notes: Optional[list[str]] = None) -> list[Identity]:
    """The identities to try, in OpenSSH's order (see the module's docstring); ``notes`` gets
    what was left out (a certificate that is none, a DSA key) and why."""
    files = []
    for path in identity_files:
        files.append(Identity(path, public_key(path), path))
        beside = None if certificate_files else _certificate_next_to(path)
        if beside is not None:
            files.append(beside)
    preferred = []
    for path in certificate_files:
        certificate, why = load_certificate(path)
        if certificate is not None:
            preferred.append(Identity(path, certificate, path))
        elif notes is not None:
            notes.append(why)
    others = []
    for key in agent_keys:
        named = next((f for f in files if f.public == key), None)
        if named is not None:
            files.remove(named)
            named.via_agent = True
            preferred.append(named)
        elif not identities_only:
            others.append(Identity(f"{key.comment or key.fingerprint} (agent)", key, via_agent=True))
    candidates = []
    for candidate in preferred + others + files:
        if candidate.public is not None and candidate.public.base_type in NOT_OFFERED:
            if notes is not None:
                notes.append(f"{candidate.source}: a {candidate.public.base_type} key, which OpenSSH 9.2 "
                             "does not offer either")
            continue
        candidates.append(candidate)
    return candidates


class Signer:
    """What paramiko's ``auth_publickey`` needs: the blob the server is shown and a way to sign.

    The agent's refusal to sign (a key added with ``ssh-add -c`` and declined)
    must not raise: paramiko signs in its transport thread, where an exception
    kills the connection. An empty signature instead makes the server refuse
    this key, and the next one is tried. (OpenSSH drops such a key unsent;
    here it costs one of the server's MaxAuthTries.)
    """

    def __init__(self, public: PublicKey, sign: Callable[[bytes, str], Optional[bytes]]):
        import paramiko

        self.public = public
        self.public_blob = paramiko.PublicBlob(public.type, public.blob)
        self._sign = sign
        self.refused = False

    def sign_ssh_data(self, data: bytes, algorithm: Optional[str] = None) -> bytes:
        algorithm = algorithm or self.public.type
        signature = self._sign(data, algorithm)
        if signature is None:
            self.refused = True
            return wire_string(_signature_algorithm(algorithm).encode()) + wire_string(b"")
        return signature

    def __repr__(self) -> str:
        return f"<Signer {self.public.type} {self.public.fingerprint}>"


def _file_signer(key: Any) -> Callable[[bytes, str], Optional[bytes]]:
    def sign(data: bytes, algorithm: str) -> Optional[bytes]:
        signature = key.sign_ssh_data(data, algorithm)
        return signature.asbytes() if hasattr(signature, "asbytes") else bytes(signature)

    return sign


def _agent_signer(agent: Agent, blob: bytes) -> Callable[[bytes, str], Optional[bytes]]:
    return lambda data, algorithm: agent.sign(blob, data, algorithm)


def _plain(public: Optional[PublicKey]) -> Optional[PublicKey]:
    try:
        return public.plain() if public is not None else None
    except (KeyError, ValueError):
        return None


def _signing_identity(identity: Identity, candidates: Sequence[Identity]) -> Identity:
    """For a certificate, the candidate holding the key it certifies (sshconnect2.c
    sign_and_send_pubkey); for anything else, the identity itself."""
    public = identity.public
    if public is None or not public.is_certificate:
        return identity
    certified = _plain(public)
    for other in candidates:
        if other.public is not None and other.public.type != public.type and _plain(other.public) == certified:
            return other
    if not identity.via_agent and identity.path:
        for other in candidates:
            if other.public is None and other.path and identity.path in (
                    other.path, other.path + ".pub", other.path + "-cert.pub"):
                return other
    return identity


def signer(identity: Identity, candidates: Sequence[Identity], agent: Optional[Agent]) -> tuple[Optional[Signer], str]:
    """(Signer, "") for one candidate, or (None, why it cannot be used)."""
    by = _signing_identity(identity, candidates)
    if by.via_agent and agent is not None and by.public is not None:
        shown = identity.public or by.public
        return Signer(shown, _agent_signer(agent, by.public.blob)), ""
    if by is identity and identity.public is not None and identity.public.is_certificate \
            and identity.path == identity.source:
        return None, (f"{identity.source}: no private key for this certificate among the identity files"
                      + (" or the agent's keys" if agent is not None else ""))
    if by.path is None:
        return None, f"{identity.source}: no private key for it"
    key, why = load_key(by.path)
    if key is None:
        return None, why
    own = PublicKey.from_blob(key.asbytes())
    if by.public is not None and _plain(by.public) != own:
        return None, f"{by.path}: the private key does not match its public key ({by.public.fingerprint})"
    return Signer(identity.public or own, _file_signer(key)), ""
