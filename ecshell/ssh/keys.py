"""Private keys: loading the operator's for authentication, generating ecshell's own.

>>> private, public = generate_ed25519()          # a machine's host key, or a client key
>>> public.startswith("ssh-ed25519 ")
True
>>> key, why = load_key("/nonexistent/id_ed25519")
>>> key is None and why
'/nonexistent/id_ed25519: no such file'

:func:`client_key` makes the operator's ecshell client key on first use;
LocalFabric authorizes it on its machines and Ec2Fabric gives it to
cloud-init. paramiko and cryptography load only when a key is read or made.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from paramiko import PKey

_key_cache: dict[str, tuple[float, PKey | None, str]] = {}
_key_cache_lock = threading.Lock()


def load_key(path: str) -> tuple[PKey | None, str]:
    """(PKey or None, why not) for a private key file; cached by path and mtime."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None, f"{path}: no such file"
    with _key_cache_lock:
        cached = _key_cache.get(path)
        if cached and cached[0] == mtime:
            return cached[1], cached[2]
    import paramiko

    try:
        key, why = paramiko.PKey.from_path(path), ""
    except paramiko.PasswordRequiredException:
        key, why = None, f"{path} is encrypted: load it into ssh-agent (ssh-add {path})"
    except (paramiko.SSHException, OSError, ValueError) as exc:
        key, why = None, f"{path}: not a usable private key ({exc})"
    with _key_cache_lock:
        _key_cache[path] = (mtime, key, why)
    return key, why


def generate_ed25519() -> tuple[bytes, str]:
    """(private key in OpenSSH PEM, public key line), made here without ssh-keygen."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return private, public


def write_private_file(path: str, data: bytes) -> None:
    """A new file holding ``data``, 0600 from its creation; FileExistsError if ``path`` exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def client_key(path: str) -> str:
    """Create the operator's ecshell client key (0600) at ``path`` unless it exists."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        private, public = generate_ed25519()
        try:
            write_private_file(path, private)
        except FileExistsError:
            pass  # another shell made it at the same moment
        else:
            with open(path + ".pub", "w") as f:
                f.write(public + " ecshell\n")
    return path
