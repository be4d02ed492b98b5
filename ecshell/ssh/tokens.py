"""OpenSSH's expansions of ``~``, ``%x`` tokens and ``${VAR}`` in ssh_config values.

>>> expand_tokens("~/.ssh/id_%h", {"h": "web"}, home="/home/ops")
'/home/ops/.ssh/id_web'
>>> expand_tokens("nc %h %p %%", {"h": "web", "p": "22"}, tilde=False, environment=False)
'nc web 22 %'

An unknown token or an unset variable is an error, as it is for ``ssh``
(which stops there): the message names the value it came from.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pwd
import re
import socket
from collections.abc import Mapping

_PATTERN = re.compile(r"%(.?)|\$\{([^}]*)\}")


class TokenError(ValueError):
    """A value ``ssh`` would refuse to expand."""


def home_directory() -> str:
    """``~``: ``$HOME``, as everywhere else in ecshell (ssh itself reads the password database)."""
    return os.path.expanduser("~")


def expand_tilde(path: str, home: str | None = None) -> str:
    """``~/x`` and ``~user/x`` as ssh's tilde_expand_filename does (``~`` being ``$HOME``)."""
    if not path.startswith("~"):
        return path
    name, slash, rest = path[1:].partition("/")
    if not name:
        base = home if home is not None else home_directory()
    else:
        try:
            base = pwd.getpwnam(name).pw_dir
        except KeyError:
            raise TokenError(f"{path!r}: no such user {name!r}") from None
    return base.rstrip("/") + "/" + rest if slash else base


def expand_tokens(text: str, tokens: Mapping[str, str], home: str | None = None, tilde: bool = True,
                  environment: bool = True) -> str:
    """``text`` with ``~`` (if ``tilde``), ``%x`` from ``tokens`` and ``${VAR}`` (if ``environment``) expanded."""
    if tilde:
        text = expand_tilde(text, home)

    def one(match: re.Match[str]) -> str:
        token, variable = match.group(1), match.group(2)
        if variable is None:
            if token == "%":
                return "%"
            if token in tokens:
                return tokens[token]
            raise TokenError(f"{text!r}: unknown token %{token} (ssh_config(5), TOKENS)" if token
                             else f"{text!r}: a lone % at the end (write %% for a percent sign)")
        if not environment:
            return match.group(0)
        if variable not in os.environ:
            raise TokenError(f"{text!r}: environment variable {variable!r} is not set")
        return os.environ[variable]

    return _PATTERN.sub(one, text)


@functools.cache
def local_user() -> str:
    """``%u``: the local user's name from the password database, as ssh takes it."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def connection_tokens(hostname: str, port: int | str, user: str, alias: str, key_alias: str | None = None,
                      jump_host: str = "") -> dict[str, str]:
    """The tokens ssh expands in IdentityFile, CertificateFile, UserKnownHostsFile, ...

    ``%h`` HostName, ``%p`` port, ``%r`` remote user, ``%n`` the name as
    given, ``%k`` HostKeyAlias (else that name), ``%j`` the ProxyJump host,
    ``%d`` home, ``%u`` local user, ``%i`` uid, ``%l``/``%L`` this host's
    name (long/short), ``%C`` the hash of ``%l%h%p%r%j``.
    """
    this_host = socket.gethostname()
    port = str(port)
    return {
        "h": hostname, "p": port, "r": user, "n": alias, "k": key_alias or alias, "j": jump_host,
        "d": home_directory(), "u": local_user(), "i": str(os.getuid()),
        "l": this_host, "L": this_host.split(".")[0],
        "C": hashlib.sha1((this_host + hostname + port + user + jump_host).encode()).hexdigest(),
    }
