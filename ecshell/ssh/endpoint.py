"""Where and how to connect: a Prototype plus the operator's ssh_config, resolved as OpenSSH does.

>>> parse_jump("ssh://ops@bastion:2222,inner")
[Hop(user='ops', host='bastion', port=2222), Hop(user=None, host='inner', port=None)]

Machines ecshell launched carry pinned host keys and their own key file, and
are not looked up in ssh_config. Every other host is resolved by OpenSSH
itself (:mod:`.options`, ``ssh -G``), with explicit values in the target
(``ops@host:2222``) given to ssh as ``-l``/``-p``, and mapped here: HostName,
User, Port, IdentityFile, IdentitiesOnly, IdentityAgent, CertificateFile,
ProxyJump, ProxyCommand, StrictHostKeyChecking, UserKnownHostsFile,
GlobalKnownHostsFile, HostKeyAlias, HashKnownHosts, ConnectTimeout,
ServerAliveInterval and ServerAliveCountMax. ``ssh -G`` leaves the tokens of
IdentityFile, CertificateFile and ProxyCommand to the connection; they are
expanded here as ssh expands them.

A ProxyJump chain ``a,b`` is what ssh makes of it: the target is reached
through ``b``, and ``b`` through ``a`` (``ssh -J a b``: ``b``'s own
ProxyJump and ProxyCommand give way); the first hop follows its own
ssh_config. Each hop is resolved by its own ``ssh -G`` (its user, port,
keys, known_hosts name) and carries its own host-key verifier.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from .hostkeys import KnownHosts, PinnedKeys
from .options import Options, lookup
from .tokens import TokenError, connection_tokens, expand_tokens, local_user

if TYPE_CHECKING:
    from ..config import EcShell
    from ..fabrics.base import Prototype

#: Longest ProxyJump chain followed (ssh itself would recurse until something breaks).
MAX_HOPS = 8
#: ssh -G prints StrictHostKeyChecking as true/false; ecshell speaks ssh_config's words.
_POLICIES = {"true": "yes", "false": "no", "off": "no", "on": "yes"}


@dataclasses.dataclass
class Endpoint:
    """Where and as whom to connect, and what to trust there: one host's effective ssh options."""

    host: str  # the address connected to (HostName)
    port: int
    user: str
    identity_files: list
    identities_only: bool
    verifier: Any  # PinnedKeys or KnownHosts: .verify(host, port, key), .identity
    proxy_jump: Optional["Endpoint"] = None  # the last hop before this host; hops chain through theirs
    #: The name the host was asked for (``%n``; the known_hosts name unless HostKeyAlias says otherwise).
    alias: Optional[str] = None
    #: IdentityAgent: a socket path, ``"none"`` for no agent, None for ``$SSH_AUTH_SOCK``.
    identity_agent: Optional[str] = None
    #: CertificateFile entries (``<identity>-cert.pub`` files are found next to identities when keys are offered).
    certificate_files: list = dataclasses.field(default_factory=list)
    #: ProxyCommand with its tokens expanded; None when there is none (or ``none``).
    proxy_command: Optional[str] = None
    #: ConnectTimeout in seconds (None: the cluster's connect_timeout).
    connect_timeout: Optional[float] = None
    #: ServerAliveInterval (0: off) and ServerAliveCountMax: how soon a silent peer is dead.
    server_alive_interval: float = 0.0
    server_alive_count_max: int = 3

    @property
    def key(self):
        """What one pooled connection is for."""
        jump = self.proxy_jump.key if self.proxy_jump else None
        # The trust is part of the key: a machine whose pinned key differs must
        # never be handed a connection verified for another (an address reused).
        return (self.host, self.port, self.user, jump, self.proxy_command, self.verifier.identity)

    def __str__(self):
        return f"{self.user}@{self.host}:{self.port}"


class Hop(NamedTuple):
    """One ProxyJump hop: ``[user@]host[:port]``."""

    user: Optional[str]
    host: str
    port: Optional[int]


def parse_target(text):
    """``user@host:port`` -> (user or None, host, port or None)."""
    user = None
    if "@" in text:
        user, text = text.rsplit("@", 1)
    port = None
    if text.startswith("["):  # [::1]:22
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = int(port_text)
    else:
        host = text
    return user, host, port


def parse_jump(text: str) -> list[Hop]:
    """ProxyJump's value: comma-separated ``[user@]host[:port]`` or ``ssh://[user@]host[:port]`` hops."""
    hops = []
    for part in text.split(","):
        part = part.strip()
        if part.lower().startswith("ssh://"):
            part = part[len("ssh://"):].rstrip("/")
            if "@" in part:
                user, _, host = part.rpartition("@")
                part = user.split(";")[0] + "@" + host  # ;parameters of the URI's user are not used
        try:
            user, host, port = parse_target(part)
        except ValueError:
            raise ValueError(f"ProxyJump {text!r}: cannot read the hop {part!r}") from None
        if not host:
            raise ValueError(f"ProxyJump {text!r}: an empty hop")
        hops.append(Hop(user or None, host, port))
    return hops


def _paths(value: Optional[str]) -> list[str]:
    if not value or value.lower() == "none":
        return []
    return value.split()


def _identity_agent(value: Optional[str]) -> Optional[str]:
    if value is None or value == "SSH_AUTH_SOCK":
        return None  # the environment's agent
    if value.startswith("$"):
        return os.environ.get(value[1:].strip("{}")) or "none"
    return value


def _float(options: Options, keyword: str, default: float) -> float:
    value = options.get(keyword)
    if value is None or value == "none":
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{keyword} {value!r} is not a number of seconds") from None


def resolve_alias(alias, settings, user=None, port=None, jump_depth=0, config_path=None,
                  via: Optional[list[Hop]] = None, policy: Optional[str] = None,
                  known_hosts_files: Optional[list[str]] = None) -> Endpoint:
    """An Endpoint for a name as the operator would type it after ``ssh`` (``ssh -l user -p port alias``).

    ``via``: the hops before it when it is itself a ProxyJump hop with
    others in front (``ssh -J via alias``): its own ProxyJump and
    ProxyCommand then give way. ``policy`` and ``known_hosts_files``
    override what ssh_config says (a fabric that knows better).
    """
    config = config_path if config_path is not None else settings.ssh_config
    options = lookup(alias, config, user, port)
    hostname = options.get("hostname") or alias
    port = int(options.get("port") or 22)
    user = options.get("user") or local_user()
    if via is not None:
        hops, command = via, None
    else:
        jump_spec = options.get("proxyjump")
        hops = parse_jump(jump_spec) if jump_spec and jump_spec.lower() != "none" else []
        command = options.get("proxycommand")
    key_alias = options.get("hostkeyalias")
    try:
        tokens = connection_tokens(hostname, port, user, alias, key_alias, hops[-1].host if hops else "")
        identities = [expand_tokens(p, tokens) for p in options.all("identityfile")]
        certificates = [expand_tokens(p, tokens) for p in options.all("certificatefile")]
        if command and command.lower() != "none":
            # sshconnect.c's expand_proxy_command: these tokens only, no ${VAR}, no ~; run as `exec ...`.
            command = expand_tokens(command, {"h": hostname, "k": key_alias or alias, "n": alias,
                                              "p": str(port), "r": user}, tilde=False, environment=False)
        else:
            command = None
    except TokenError as exc:
        raise ValueError(str(exc)) from None
    strict = options.get("stricthostkeychecking", "ask") or "ask"
    verifier = KnownHosts(
        known_hosts_files if known_hosts_files else _paths(options.get("userknownhostsfile")),
        policy or settings.strict_host_key_checking or _POLICIES.get(strict.lower(), strict.lower()),
        global_files=_paths(options.get("globalknownhostsfile")),
        host_key_alias=key_alias,
        hash_known_hosts=(options.get("hashknownhosts") or "no").lower() == "yes",
    )
    connect_timeout = _float(options, "connecttimeout", 0.0) or None
    jump = _through(hops, settings, config, jump_depth) if hops else None
    return Endpoint(
        hostname, port, user, identities, (options.get("identitiesonly") or "no").lower() == "yes", verifier,
        jump, alias=alias, identity_agent=_identity_agent(options.get("identityagent")),
        certificate_files=certificates, proxy_command=command, connect_timeout=connect_timeout,
        server_alive_interval=_float(options, "serveraliveinterval", 0.0),
        server_alive_count_max=int(_float(options, "serveralivecountmax", 3)),
    )


def _through(hops: list[Hop], settings, config: str, depth: int) -> Endpoint:
    """The Endpoint of the last hop of a ProxyJump chain, itself reached through the ones before it."""
    if depth >= MAX_HOPS:
        raise ValueError(f"ProxyJump chain longer than {MAX_HOPS} hops (a loop in ssh_config?)")
    last = hops[-1]
    return resolve_alias(last.host, settings, last.user, last.port, depth + 1, config,
                         via=hops[:-1] if len(hops) > 1 else None)


def endpoint_for(prototype: Prototype, settings: EcShell) -> Endpoint:
    """The Endpoint for a machine a fabric handed out."""
    if prototype.host_keys:
        jump = None
        if prototype.proxy_jump:
            jump = _through(parse_jump(prototype.proxy_jump), settings, settings.ssh_config, 0)
        return Endpoint(
            prototype.host, prototype.port, prototype.user or getpass.getuser(),
            list(prototype.identity_files), True,
            PinnedKeys(prototype.host_keys), jump,
        )
    endpoint = resolve_alias(prototype.alias or prototype.host, settings, prototype.user, prototype.port,
                             config_path=prototype.ssh_config, policy=prototype.strict_host_key_checking,
                             known_hosts_files=[os.path.expanduser(f) for f in prototype.known_hosts_files])
    if prototype.identity_files:
        endpoint.identity_files = list(prototype.identity_files)
        endpoint.identities_only = True
    return endpoint
