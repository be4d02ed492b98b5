"""Where and how to connect: a Prototype plus the operator's ssh_config, resolved.

Machines ecshell launched carry pinned host keys and their own key file, and
are not looked up in ssh_config. Every other host is resolved the way
OpenSSH would: HostName, User, Port, IdentityFile, IdentitiesOnly, ProxyJump,
StrictHostKeyChecking and UserKnownHostsFile, with explicit values in the
target (``ops@host:2222``) taking precedence.
"""

import dataclasses
import functools
import getpass
import os
from typing import Any, Optional

from .hostkeys import KnownHosts, PinnedKeys

DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")


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
    #: CertificateFile entries, and ``<identity>-cert.pub`` files found next to identities.
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
        return (self.host, self.port, self.user, jump, self.verifier.identity)

    def __str__(self):
        return f"{self.user}@{self.host}:{self.port}"


@functools.lru_cache(maxsize=8)
def _load_config(path, mtime):
    import paramiko

    return paramiko.SSHConfig.from_path(path)


def ssh_config_lookup(alias, config_path):
    """OpenSSH options for ``alias`` from ``config_path`` (empty if there is no file)."""
    if not config_path:
        return {"hostname": alias}
    path = os.path.expanduser(config_path)
    try:
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return {"hostname": alias}
    return _load_config(path, mtime).lookup(alias)


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


def _expand(path, options, alias):
    path = os.path.expanduser(path)
    return path.replace("%d", os.path.expanduser("~")).replace("%h", options.get("hostname", alias)) \
        .replace("%r", options.get("user", "")).replace("%%", "%")


def resolve_alias(alias, settings, user=None, port=None, jump_depth=0, config_path=None):
    """An Endpoint for a name as the operator would type it after ``ssh``."""
    config_path = config_path if config_path is not None else settings.ssh_config
    options = ssh_config_lookup(alias, config_path)
    host = options.get("hostname", alias)
    user = user or options.get("user") or getpass.getuser()
    port = int(port or options.get("port", 22))
    identities = [_expand(p, options, alias) for p in options.get("identityfile", [])]
    identities_only = options.get("identitiesonly", "no").lower() == "yes"
    if not identities:
        identities = [os.path.expanduser(p) for p in DEFAULT_IDENTITIES]
    policy = settings.strict_host_key_checking or options.get("stricthostkeychecking", "ask").lower()
    policy = {"true": "yes", "false": "no", "off": "no"}.get(policy, policy)
    known = options.get("userknownhostsfile")
    files = known.split() if known else list(DEFAULT_KNOWN_HOSTS)
    jump = None
    proxy = options.get("proxyjump")
    if proxy and proxy.lower() != "none":
        if jump_depth > 8:
            raise ValueError(f"ProxyJump chain for {alias} is longer than 8 hops (a loop in ssh_config?)")
        # A chain "a,b" connects to a, then through a to b, then through b to here.
        hops = [h.strip() for h in proxy.split(",")]
        jump = None
        for hop in hops:
            hop_user, hop_host, hop_port = parse_target(hop)
            endpoint = resolve_alias(hop_host, settings, hop_user, hop_port, jump_depth + 1, config_path)
            if jump is not None:
                endpoint.proxy_jump = jump
            jump = endpoint
    return Endpoint(host, port, user, identities, identities_only,
                    KnownHosts(files, policy), jump)


def endpoint_for(prototype, settings):
    """The Endpoint for a machine a fabric handed out."""
    if prototype.host_keys:
        jump = None
        if prototype.proxy_jump:
            hop_user, hop_host, hop_port = parse_target(prototype.proxy_jump)
            jump = resolve_alias(hop_host, settings, hop_user, hop_port)
        return Endpoint(
            prototype.host, prototype.port, prototype.user or getpass.getuser(),
            list(prototype.identity_files), True,
            PinnedKeys(prototype.host_keys), jump,
        )
    endpoint = resolve_alias(prototype.alias or prototype.host, settings, prototype.user, prototype.port,
                             config_path=prototype.ssh_config)
    if prototype.alias:
        endpoint.host = prototype.host
    if prototype.identity_files:
        endpoint.identity_files = list(prototype.identity_files)
        endpoint.identities_only = True
    if prototype.strict_host_key_checking:
        endpoint.verifier.policy = prototype.strict_host_key_checking
    if prototype.known_hosts_files:
        endpoint.verifier.files = [os.path.expanduser(f) for f in prototype.known_hosts_files]
    return endpoint
