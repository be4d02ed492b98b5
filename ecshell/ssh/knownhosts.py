"""The known_hosts format, read and written as OpenSSH 9.2 does (hostfile.c, match.c).

>>> entries = lookup("~/.ssh/known_hosts", "[web.example]:2222")    # doctest: +SKIP
>>> [(e.marker, e.key_type, e.where) for e in entries]              # doctest: +SKIP
[('', 'ssh-ed25519', '/home/me/.ssh/known_hosts:3')]
>>> entry_line("web.example", "ssh-ed25519", blob, hashed=True)     # doctest: +SKIP
'|1|salt|hash ssh-ed25519 AAAA...\\n'

A line is ``[marker] names key-type base64 [comment]``. The marker is
``@cert-authority`` or ``@revoked``. ``names`` is a comma-separated list of
patterns (``*`` and ``?`` wildcards, ``!`` in front to exclude: a line whose
negated pattern matches does not apply, whatever else it lists) or a single
hashed name ``|1|salt|hash`` (HMAC-SHA1 of the lowercased name, keyed with
the salt). What OpenSSH skips is skipped here, line by line and without a
word: comments, an unknown or doubled marker, a line cut short, a key type
it does not know, a key that does not decode or whose blob is of another
type, a hashed name whose salt does not decode. Nothing in a file makes
these functions raise; an unreadable file reads as empty.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import os
import re
import struct
import threading

HASH_MAGIC = "|1|"
CA_MARKER = "@cert-authority"
REVOKED_MARKER = "@revoked"

#: Key type names OpenSSH 9.2 reads in known_hosts -> (the type its blob must carry, the plain key type).
KEY_TYPES = {
    "ssh-ed25519": ("ssh-ed25519", "ssh-ed25519"),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384"),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521", "ecdsa-sha2-nistp521"),
    "ssh-rsa": ("ssh-rsa", "ssh-rsa"),
    "rsa-sha2-256": ("ssh-rsa", "ssh-rsa"),
    "rsa-sha2-512": ("ssh-rsa", "ssh-rsa"),
    "ssh-dss": ("ssh-dss", "ssh-dss"),
    "sk-ssh-ed25519@openssh.com": ("sk-ssh-ed25519@openssh.com", "sk-ssh-ed25519@openssh.com"),
    "sk-ecdsa-sha2-nistp256@openssh.com": ("sk-ecdsa-sha2-nistp256@openssh.com",
                                           "sk-ecdsa-sha2-nistp256@openssh.com"),
}
#: Certificates: a line may hold one; it stands for the public key it certifies.
CERT_TYPES = {
    "ssh-ed25519-cert-v01@openssh.com": ("ssh-ed25519-cert-v01@openssh.com", "ssh-ed25519"),
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": ("ecdsa-sha2-nistp256-cert-v01@openssh.com",
                                                 "ecdsa-sha2-nistp256"),
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": ("ecdsa-sha2-nistp384-cert-v01@openssh.com",
                                                 "ecdsa-sha2-nistp384"),
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": ("ecdsa-sha2-nistp521-cert-v01@openssh.com",
                                                 "ecdsa-sha2-nistp521"),
    "ssh-rsa-cert-v01@openssh.com": ("ssh-rsa-cert-v01@openssh.com", "ssh-rsa"),
    "rsa-sha2-256-cert-v01@openssh.com": ("ssh-rsa-cert-v01@openssh.com", "ssh-rsa"),
    "rsa-sha2-512-cert-v01@openssh.com": ("ssh-rsa-cert-v01@openssh.com", "ssh-rsa"),
    "ssh-dss-cert-v01@openssh.com": ("ssh-dss-cert-v01@openssh.com", "ssh-dss"),
    "sk-ssh-ed25519-cert-v01@openssh.com": ("sk-ssh-ed25519-cert-v01@openssh.com",
                                            "sk-ssh-ed25519@openssh.com"),
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": ("sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
                                                    "sk-ecdsa-sha2-nistp256@openssh.com"),
}
#: match.c gives up on a subpattern this long (and then the whole list does not match).
MAX_SUBPATTERN = 1023
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def lower(name: str) -> str:
    """ASCII lowercase, as OpenSSH's ``lowercase()``: host names compare without case."""
    return name.translate(_ASCII_LOWER)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One line of a known_hosts file that names the host looked up."""

    path: str
    line: int
    marker: str  # "", CA_MARKER or REVOKED_MARKER
    key_type: str  # the plain type: "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", ...
    blob: bytes  # the public key as the SSH wire format encodes it (a certificate's: the key it certifies)
    certificate: bool = False  # the line holds a certificate

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    def equals(self, blob: bytes) -> bool:
        """True when this line's key is the public key ``blob``."""
        return self.blob == blob


def fingerprint(blob: bytes) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# -- names -------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _pattern(subpattern: str) -> re.Pattern[str]:
    wildcard = {"*": ".*", "?": "."}
    return re.compile("".join(wildcard.get(c) or re.escape(c) for c in subpattern), re.DOTALL)


def match_patterns(name: str, patterns: str) -> int:
    """match.c's ``match_hostname``: 1 a pattern matches, -1 a negated one does, 0 neither."""
    name = lower(name)
    positive = 0
    for subpattern in patterns.split(","):
        negated = subpattern.startswith("!")
        if negated:
            subpattern = subpattern[1:]
        if len(subpattern) >= MAX_SUBPATTERN:
            return 0
        if _pattern(lower(subpattern)).fullmatch(name):
            if negated:
                return -1
            positive = 1
    return positive


def hash_name(name: str, salt: bytes | None = None) -> str:
    """``|1|salt|hash``: the name hashed as ``HashKnownHosts`` writes it (a new salt unless given)."""
    salt = os.urandom(20) if salt is None else salt
    digest = hmac.new(salt, name.encode("utf-8", "surrogateescape"), hashlib.sha1).digest()
    return f"{HASH_MAGIC}{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def _salt(hashed: str) -> bytes | None:
    """The salt of ``|1|salt|hash``, or None where hostfile.c's extract_salt fails."""
    if not hashed.startswith(HASH_MAGIC):
        return None
    encoded, bar, _ = hashed[len(HASH_MAGIC):].partition("|")
    if not bar or not 0 < len(encoded) <= 1024:
        return None
    try:
        salt = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return salt if len(salt) == 20 else None


def names_match(name: str, names: str) -> bool | None:
    """Whether a line's names field applies to ``name`` (lowercased); None: a hash that does not parse."""
    if names.startswith("|"):
        salt = _salt(names)
        if salt is None:
            return None
        return hmac.compare_digest(hash_name(name, salt), names)
    return match_patterns(name, names) == 1


# -- lines ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Line:
    number: int
    marker: str
    names: str
    key: str  # from the key type on: "ssh-ed25519 AAAA... comment"


def _marker(text: str) -> tuple[str | None, str]:
    """hostfile.c's check_markers: (marker or "" , the rest), or (None, text) for a bad marker."""
    marker = ""
    while text.startswith("@"):
        if marker:
            return None, text  # only one marker is allowed
        end = text.find(" ")
        if end < 0:
            end = text.find("\t")
        if end <= 1 or end >= 32:
            return None, text
        word = text[:end]
        if word not in (CA_MARKER, REVOKED_MARKER):
            return None, text
        marker = word
        text = text[end:].lstrip(" \t")
    return marker, text


def _split(number: int, raw: str) -> _Line | None:
    text = raw.lstrip(" \t")
    if not text or text.startswith("#"):
        return None
    marker, text = _marker(text)
    if marker is None:
        return None
    end = len(text)
    for separator in (" ", "\t"):
        found = text.find(separator)
        if 0 <= found < end:
            end = found
    names, key = text[:end], text[end:].lstrip(" \t")
    if not key or key.startswith("#"):
        return None  # cut short before the key type
    return _Line(number, marker, names, key)


def _strings(blob: bytes, count: int) -> list[bytes] | None:
    """The first ``count`` SSH wire strings of ``blob``, or None if it is shorter."""
    found, at = [], 0
    for _ in range(count):
        if len(blob) - at < 4:
            return None
        (length,) = struct.unpack(">I", blob[at:at + 4])
        if length > len(blob) - at - 4:
            return None
        found.append(blob[at + 4:at + 4 + length])
        at += 4 + length
    return found


def _first_string(blob: bytes) -> str | None:
    strings = _strings(blob, 1)
    try:
        return strings[0].decode("ascii") if strings else None
    except UnicodeDecodeError:
        return None


#: How many wire strings make each type's public key (after the type name).
_PUBLIC_FIELDS = {"ssh-ed25519": 1, "ecdsa-sha2-nistp256": 2, "ecdsa-sha2-nistp384": 2, "ecdsa-sha2-nistp521": 2,
                  "ssh-rsa": 2, "ssh-dss": 4, "sk-ssh-ed25519@openssh.com": 2,
                  "sk-ecdsa-sha2-nistp256@openssh.com": 3}


def _certified_key(blob: bytes, plain: str) -> bytes | None:
    """The plain public key a certificate blob carries (type, nonce, then the key's own fields)."""
    strings = _strings(blob, 2 + _PUBLIC_FIELDS[plain])
    if strings is None:
        return None
    encoded = [plain.encode()] + strings[2:]
    return b"".join(struct.pack(">I", len(s)) + s for s in encoded)


def _canonical(key_type: str, blob: bytes) -> bytes | None:
    """The blob as paramiko re-encodes it (OpenSSH compares parsed keys), or None if it does not parse."""
    import paramiko

    try:
        return bytes(paramiko.PKey.from_type_string(key_type, blob).asbytes())
    except paramiko.UnknownKeyType:
        return blob  # a type paramiko does not know (ssh-dss, sk-*): kept as written
    except Exception:  # file content is data: any way a key fails to decode skips its line
        return None


def _parse_key(line: _Line, path: str) -> Entry | None:
    """sshkey_read on the key part: the type name, the base64 blob, the blob's own type agreeing."""
    fields = line.key.replace("\t", " ").split(" ")
    fields = [f for f in fields if f]
    if len(fields) < 2:
        return None
    name, encoded = fields[0], fields[1]
    certificate = name in CERT_TYPES
    types = CERT_TYPES.get(name) or KEY_TYPES.get(name)
    if types is None:
        return None
    blob_type, plain = types
    try:
        blob = base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    inner = _first_string(blob)
    if inner != blob_type:
        return None
    if certificate:
        # OpenSSH compares a certificate on a plain line with a plain key by its public key.
        certified = _certified_key(blob, plain)
        if certified is None:
            return None
        blob = certified
    canonical = _canonical(plain, blob)
    if canonical is None:
        return None
    blob = canonical
    return Entry(path, line.number, line.marker, plain, blob, certificate)


_cache: dict[str, tuple[tuple[int, int, int], list[_Line]]] = {}
_cache_lock = threading.Lock()


def _lines(path: str) -> list[_Line]:
    """The file's non-comment lines, tokenized; read again only when the file changed."""
    try:
        st = os.stat(path)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with _cache_lock:
            cached = _cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        with open(path, "rb") as f:
            data = f.read()
    except (OSError, ValueError):
        return []
    # Bytes map one to one onto latin-1 characters: any content decodes, and writes back unchanged.
    text = data.decode("latin-1")
    lines = [line for number, raw in enumerate(text.split("\n"), 1) if (line := _split(number, raw))]
    with _cache_lock:
        _cache[path] = (stamp, lines)
    return lines


def lookup(path: str, name: str) -> list[Entry]:
    """Every valid line of ``path`` whose names apply to ``name`` (lowercase it first), in file order."""
    path = os.path.expanduser(path)
    found = []
    for line in _lines(path):
        if names_match(name, line.names):
            entry = _parse_key(line, path)
            if entry is not None:
                found.append(entry)
    return found


def entry_line(name: str, key_type: str, blob: bytes, hashed: bool = False) -> str:
    """The line OpenSSH appends for a newly trusted key (no comment), ending in a newline."""
    names = hash_name(lower(name)) if hashed else lower(name)
    return f"{names} {key_type} {base64.b64encode(blob).decode()}\n"


def append(path: str, line: str) -> None:
    """Append ``line`` to ``path``, creating its directory (0700) and file as OpenSSH would."""
    path = os.path.expanduser(path)
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(path, "ab+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a last line without its newline would swallow ours
                line = "\n" + line
        f.write(line.encode("latin-1", "replace"))
