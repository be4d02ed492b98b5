"""Key files as OpenSSH reads them (private keys, their public halves, certificates), and ecshell's own keys.

>>> private, public = generate_ed25519()          # a machine's host key, or a client key
>>> public.startswith("ssh-ed25519 ")
True
>>> key, why = load_key("/nonexistent/id_ed25519")
>>> key is None and why
'/nonexistent/id_ed25519: no such file'
>>> PublicKey.from_line(public).type
'ssh-ed25519'

Reading a key never raises: a file that is missing, unreadable, too open,
encrypted, garbage or of a type ecshell cannot use gives None and the reason,
in words an operator can act on. Results are cached by path and the file's
status (mtime, ctime, size), so a broadcast reads each file once and an
edited or chmod-ed file is read again.

:func:`client_key` makes the operator's ecshell client key on first use;
LocalFabric authorizes it on its machines and Ec2Fabric gives it to
cloud-init. paramiko and cryptography load only when a key is read or made.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import struct
import threading
from typing import TYPE_CHECKING, Callable, TypeVar

if TYPE_CHECKING:
    from paramiko import PKey

T = TypeVar("T")
CERT_SUFFIX = "-cert-v01@openssh.com"
USER_CERTIFICATE = 1
#: Wire fields after the type name in each kind of public key (mpints are strings on the wire too).
_PUBLIC_FIELDS = {
    "ssh-ed25519": 1, "ssh-rsa": 2, "ssh-dss": 4,
    "ecdsa-sha2-nistp256": 2, "ecdsa-sha2-nistp384": 2, "ecdsa-sha2-nistp521": 2,
    "sk-ssh-ed25519@openssh.com": 2, "sk-ecdsa-sha2-nistp256@openssh.com": 3,
}
_OPENSSH_PRIVATE = "-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_MAGIC = b"openssh-key-v1\0"

_cache: dict[tuple[str, str], tuple[tuple[tuple[int, int, int] | None, ...], object]] = {}
_cache_lock = threading.Lock()


class WireReader:
    """Reads the SSH wire format: length-prefixed strings and fixed-size integers; ValueError past the end."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise ValueError("truncated")
        chunk = self.data[self.at:self.at + n]
        self.at += n
        return chunk

    def uint32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def string(self) -> bytes:
        return self.take(self.uint32())

    def raw_string(self) -> bytes:
        """The next string with its length prefix, as it appears on the wire."""
        start = self.at
        self.string()
        return self.data[start:self.at]


def wire_string(data: bytes) -> bytes:
    """``data`` as an SSH wire-format string: its length, then itself."""
    return struct.pack(">I", len(data)) + data


@dataclasses.dataclass(frozen=True)
class PublicKey:
    """A public key or certificate as a server sees it: its type name and its wire blob."""

    type: str
    blob: bytes
    comment: str = dataclasses.field(default="", compare=False)

    @classmethod
    def from_blob(cls, blob: bytes, comment: str = "") -> PublicKey:
        """From a wire blob (what an agent lists); ValueError if it is not one."""
        name = WireReader(blob).string().decode("ascii", "replace")
        return cls(name, blob, comment)

    @classmethod
    def from_line(cls, line: str) -> PublicKey:
        """From ``"ssh-ed25519 AAAA... comment"``; ValueError if the line is not a public key."""
        fields = line.split(None, 2)
        if len(fields) < 2:
            raise ValueError("not a public key line")
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except binascii.Error:
            raise ValueError("not a public key line") from None
        key = cls.from_blob(blob, fields[2].strip() if len(fields) > 2 else "")
        if key.type != fields[0]:
            raise ValueError(f"the line says {fields[0]} but holds {key.type}")
        return key

    @property
    def is_certificate(self) -> bool:
        return self.type.endswith(CERT_SUFFIX)

    @property
    def base_type(self) -> str:
        """The key type a certificate certifies (``ssh-ed25519`` for ``ssh-ed25519-cert-v01@...``)."""
        if not self.is_certificate:
            return self.type
        base = self.type[: -len(CERT_SUFFIX)]
        return base + "@openssh.com" if base.startswith("sk-") else base

    def _certificate_fields(self) -> tuple[bytes, int]:
        reader = WireReader(self.blob)
        reader.string()  # type name
        reader.string()  # nonce
        fields = b"".join(reader.raw_string() for _ in range(_PUBLIC_FIELDS[self.base_type]))
        reader.take(8)  # serial
        return fields, reader.uint32()

    def plain(self) -> PublicKey:
        """For a certificate, the key it certifies; a plain key is its own (ValueError if malformed)."""
        if not self.is_certificate:
            return self
        fields, _ = self._certificate_fields()
        return PublicKey(self.base_type, wire_string(self.base_type.encode()) + fields, self.comment)

    @property
    def is_user_certificate(self) -> bool:
        try:
            return self.is_certificate and self._certificate_fields()[1] == USER_CERTIFICATE
        except (KeyError, ValueError):
            return False

    @property
    def fingerprint(self) -> str:
        """OpenSSH's ``SHA256:...`` of the key (a certificate's is its key's, as sshd logs it)."""
        try:
            blob = self.plain().blob
        except (KeyError, ValueError):
            blob = self.blob
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


#: How the reason for an encrypted key ends (see :func:`is_locked`).
_LOCKED = ", or give its passphrase when the shell asks"


def _status(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def _cached(kind: str, path: str, read: Callable[[str], T], missing: T, *also: str) -> T:
    """``read(path)``, again only once ``path`` (or a file in ``also``) changed; ``missing`` if none exists."""
    status = tuple(_status(p) for p in (path, *also))
    if all(s is None for s in status):
        return missing
    with _cache_lock:
        hit = _cache.get((kind, path))
    if hit is not None and hit[0] == status:
        return hit[1]  # type: ignore[return-value]
    value = read(path)
    with _cache_lock:
        _cache[(kind, path)] = (status, value)
    return value


def _read_text(path: str) -> str | None:
    if not os.path.isfile(path):  # a FIFO or a device would block or never end
        return None
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return None


def _public_from_line_file(path: str) -> PublicKey | None:
    text = _read_text(path)
    if text is None:
        return None
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                return PublicKey.from_line(line.strip())
            except ValueError:
                return None
    return None


def _public_from_private_file(path: str) -> PublicKey | None:
    """The public half an OpenSSH-format private key carries in clear, even when encrypted."""
    text = _read_text(path)
    if text is None or _OPENSSH_PRIVATE not in text:
        return None
    body = text.split(_OPENSSH_PRIVATE, 1)[1].split("-----END", 1)[0]
    try:
        reader = WireReader(base64.b64decode("".join(body.split())))
        if reader.take(len(_OPENSSH_MAGIC)) != _OPENSSH_MAGIC:
            return None
        for _ in range(3):  # cipher, kdf, kdf options
            reader.string()
        if reader.uint32() < 1:
            return None
        return PublicKey.from_blob(reader.string())
    except (ValueError, binascii.Error):
        return None


def _read_public(path: str) -> PublicKey | None:
    return (_public_from_line_file(path) or _public_from_line_file(path + ".pub")
            or _public_from_private_file(path))


def public_key(path: str) -> PublicKey | None:
    """An identity file's public key as OpenSSH finds it: the file itself if it is a
    public key (``IdentityFile id.pub``), else ``<path>.pub``, else the public half of
    an OpenSSH-format private key; None when none of them says."""
    return _cached("public", path, _read_public, None, path + ".pub")


def _read_certificate(path: str) -> tuple[PublicKey | None, str]:
    if not os.path.isfile(path):
        return None, f"{path}: not a file"
    key = _public_from_line_file(path)
    if key is None:
        return None, f"{path}: not a public key or certificate"
    if not key.is_certificate:
        return None, f"{path}: a plain {key.type} public key, not a certificate"
    if not key.is_user_certificate:
        return None, f"{path}: not a user certificate (a host certificate?)"
    return key, ""


def load_certificate(path: str) -> tuple[PublicKey | None, str]:
    """(user certificate, "") from a ``-cert.pub`` file, or (None, why not)."""
    missing: tuple[PublicKey | None, str] = (None, f"{path}: no such file")
    return _cached("certificate", path, _read_certificate, missing)


def _too_open(path: str) -> str:
    """OpenSSH's rule (sshkey_perm_ok): a private key of ours that others may read is ignored."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        return (f"{path}: permissions {st.st_mode & 0o777:04o} are too open, so ssh ignores this "
                f"private key too (chmod 600 {path})")
    return ""


def _read_private(path: str) -> tuple[PKey | None, str]:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    import paramiko

    if not os.path.isfile(path):
        return None, f"{path}: not a regular file"
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        return None, f"{path}: cannot read it ({exc.strerror or exc})"
    too_open = _too_open(path)
    if too_open:
        return None, too_open
    encrypted = f"{path} is encrypted: load it into ssh-agent (ssh-add {path}){_LOCKED}"
    carried = _public_from_private_file(path)
    if b"-----BEGIN DSA PRIVATE KEY-----" in data or (carried is not None and carried.type == "ssh-dss"):
        return None, f"{path}: a DSA key, which ecshell cannot use (nor does OpenSSH 9.2 offer DSA keys)"
    loaded: object
    try:
        try:
            loaded = serialization.load_ssh_private_key(data, password=None)
        except ValueError:
            loaded = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying "needs a password"
        return None, encrypted
    except UnsupportedAlgorithm as exc:
        return None, f"{path}: a key type ecshell cannot use ({exc})"
    except ValueError:
        if _public_from_line_file(path) is not None:
            return None, f"{path}: a public key, not a private key"
        return None, f"{path}: not a private key file"
    key_class: type[PKey]
    if isinstance(loaded, rsa.RSAPrivateKey):
        key_class = paramiko.RSAKey
    elif isinstance(loaded, ed25519.Ed25519PrivateKey):
        key_class = paramiko.Ed25519Key
    elif isinstance(loaded, ec.EllipticCurvePrivateKey):
        key_class = paramiko.ECDSAKey
    else:
        kind = type(loaded).__name__.replace("PrivateKey", "").lstrip("_") or "unknown"
        return None, f"{path}: a {kind} key, which ecshell cannot use (nor does OpenSSH 9.2 offer DSA keys)"
    try:
        return key_class.from_private_key_file(path), ""
    except paramiko.PasswordRequiredException:
        return None, encrypted
    except Exception as exc:  # the file's content is data: whatever paramiko makes of it, never raise
        return None, f"{path}: not a private key ecshell can read ({exc or type(exc).__name__})"


def is_locked(why: str) -> bool:
    """Whether :func:`load_key`'s reason says the key is encrypted (a passphrase would open it)."""
    return why.endswith(_LOCKED)


def unlock(path: str, passphrase: str) -> str:
    """Open the encrypted key file ``path`` with ``passphrase`` for this process: "" if it worked, else why not.

    The key is kept in memory only, as an agent would keep it, until the file changes.
    """
    import paramiko

    status = _status(path)
    try:
        key = paramiko.PKey.from_path(path, password=passphrase.encode())
    except OSError as exc:
        return f"{path}: cannot read it ({exc.strerror or exc})"
    except (paramiko.SSHException, ValueError, TypeError):  # paramiko's words for a wrong one vary
        return f"{path}: that passphrase does not open it"
    with _cache_lock:
        _cache[("private", path)] = ((status,), (key, ""))
    return ""


def load_key(path: str) -> tuple[PKey | None, str]:
    """(PKey or None, why not) for a private key file, read as OpenSSH would read it; cached."""
    missing: tuple[PKey | None, str] = (None, f"{path}: no such file")
    return _cached("private", path, _read_private, missing)


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
