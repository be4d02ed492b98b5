"""known_hosts and host keys, decided as OpenSSH 9.2 decides them.

The parser is checked line by line against OpenSSH's own (``ssh-keygen -F
name -l`` lists the valid lines that apply to a name); each decision is
checked against the real ``ssh`` through the shared harness
(tests/openssh_support.py), on the same config, keys and known_hosts files.
Where ecshell is stricter on purpose, the test says so and asserts it.
"""

import base64
import pathlib
import re
import subprocess

import pytest

from ecshell.ssh import knownhosts

# -- the parser, against ssh-keygen ------------------------------------------------------------


def _keygen(directory, name, key_type, *args):
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-f", str(path), *args], check=True)
    return " ".join(pathlib.Path(f"{path}.pub").read_text().split()[:2])


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    found = {t: _keygen(directory, t, t) for t in ("ed25519", "ecdsa", "dsa")}
    found["rsa"] = _keygen(directory, "rsa", "rsa", "-b", "1024")
    found["ecdsa384"] = _keygen(directory, "ecdsa384", "ecdsa", "-b", "384")
    _keygen(directory, "ca", "ed25519")
    subprocess.run(["ssh-keygen", "-q", "-s", str(directory / "ca"), "-I", "host", "-h", "-n", "web.example",
                    str(directory / "ed25519.pub")], check=True)
    found["cert"] = " ".join((directory / "ed25519-cert.pub").read_text().split()[:2])
    return found


def openssh_lookup(path, name):
    """``{(line, marker, fingerprint)}``: what ``ssh-keygen -F name -l`` finds (OpenSSH's parser)."""
    done = subprocess.run(["ssh-keygen", "-F", name, "-l", "-f", str(path)], capture_output=True, text=True)
    found, header = set(), None
    for line in done.stdout.splitlines():
        match = re.match(r"# Host \S+ found: line (\d+) ?(\S*)", line)
        if match:
            header = (int(match.group(1)), {"REVOKED": "@revoked", "CA": "@cert-authority"}.get(match.group(2), ""))
        elif header and line.strip():
            found.add(header + (line.split()[2],))
            header = None
    return found


def ecshell_lookup(path, name):
    return {(e.line, e.marker, e.fingerprint) for e in knownhosts.lookup(str(path), name)}


def tricky_lines(k):
    ed, ec, rsa, dsa = k["ed25519"], k["ecdsa"], k["rsa"], k["dsa"]
    ed_blob = ed.split()[1]
    return [
        "# a comment",
        "",
        "   \t  ",
        f"web.example {ed}",
        f"*.example,!bad.example {ec}",
        f"web?.example {rsa}",
        f"@revoked web.example {ec}",
        f"@cert-authority *.example {ed}",
        f"@bogus web.example {ed}",
        f"@revoked @revoked web.example {ed}",
        f"@revoked\tweb.example {rsa}",  # sshd looks for the marker's end at the first space
        "web.example ssh-ed25519 AAAAgarbage",
        "web.example",
        "web.example ssh-ed25519",
        f"web.example ssh-rsa {ed_blob}",  # the type named is not the blob's
        f"web.example ecdsa-sha2-nistp256 {k['ecdsa384'].split()[1]}",  # another curve
        f"web.example rsa-sha2-256 {rsa.split()[1]}",  # an RSA signature name for an RSA key
        f"[web.example]:2222 {ed}",
        f"WEB.EXAMPLE {ec} upper case names",
        f"\tweb.example\t{rsa}\tcomment after a tab",
        f"web.example {dsa}",
        "web.example ssh-foo AAAAB3NzaC1yc2E=",
        "web.example 1024 35 1234567890",
        f"!web.example,* {ed}",
        f"*,!web.example {ec}",
        "@revoked",
        f"web.example {k['cert']}",
        f"web.example {ed} trailing\r",
        f"|1|!!!!|AAAA {ed}",
        f"|1|c2FsdA==|AAAA {ed}",  # a salt of the wrong length
        f"web.example,other.example {k['ecdsa384']}",
        f"other.example {ed}",
        f"web.example# {ed}",
    ]


NAMES = ["web.example", "bad.example", "web1.example", "[web.example]:2222", "other.example", "nothing.org",
         "x.example"]


def test_the_parser_finds_the_lines_openssh_finds(tmp_path, keys):
    path = tmp_path / "known_hosts"
    path.write_bytes("\n".join(tricky_lines(keys)).encode() + b"\nweb.example \xff\xfe garbage bytes\n")
    for name in NAMES:
        assert ecshell_lookup(path, name) == openssh_lookup(path, name), name
    # What the lines say, spelled out for one name.
    found = {(e.line, e.marker, e.key_type, e.certificate) for e in knownhosts.lookup(str(path), "web.example")}
    assert (4, "", "ssh-ed25519", False) in found
    assert (7, "@revoked", "ecdsa-sha2-nistp256", False) in found
    assert (17, "", "ssh-rsa", False) in found  # rsa-sha2-256 names an RSA key
    assert (21, "", "ssh-dss", False) in found  # paramiko does not load DSA; the line still counts
    assert (27, "", "ssh-ed25519", True) in found
    assert not {line for line, *_ in found} & {9, 10, 11, 12, 13, 14, 15, 16, 22, 23}


def test_hashed_names_match_as_openssh_hashes_them(tmp_path, keys):
    path = tmp_path / "known_hosts"
    ed, ec = keys["ed25519"], keys["ecdsa"]
    path.write_text(f"web.example {ed}\n@revoked web.example {ec}\n[web.example]:2222 {ec}\n"
                    f"WEB.example,other.example {keys['rsa']}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(path)], check=True, capture_output=True)
    hashed = path.read_text()
    # ssh-keygen -H leaves marker lines alone; ecshell hashes a name as it would.
    assert hashed.count("|1|") == 4 and hashed.count("example") == 1
    first = hashed.splitlines()[0].split()[0]
    assert knownhosts.hash_name("web.example", base64.b64decode(first.split("|")[2])) == first
    with open(path, "a") as f:
        f.write(f"@revoked {knownhosts.hash_name('[web.example]:2222')} {ec}\n"
                f"|1|!!!!|AAAA {ed}\n|1|c2FsdA==|AAAA {ed}\n|2|{hashed[3:]}")  # bad salts, another magic
    for name in NAMES:
        assert ecshell_lookup(path, name) == openssh_lookup(path, name), name
    assert ("@revoked", "ecdsa-sha2-nistp256") in {(e.marker, e.key_type)
                                                   for e in knownhosts.lookup(str(path), "[web.example]:2222")}


def test_written_lines_read_back_through_openssh(tmp_path, keys):
    path = tmp_path / ".ssh" / "known_hosts"
    key_type, encoded = keys["ecdsa"].split()
    blob = base64.b64decode(encoded)
    knownhosts.append(str(path), knownhosts.entry_line("[Web.Example]:2222", key_type, blob))
    knownhosts.append(str(path), knownhosts.entry_line("web.example", key_type, blob, hashed=True))
    assert path.read_text().splitlines()[0] == f"[web.example]:2222 {keys['ecdsa']}"
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert openssh_lookup(path, "[web.example]:2222") == {(1, "", knownhosts.fingerprint(blob))}
    assert openssh_lookup(path, "web.example") == {(2, "", knownhosts.fingerprint(blob))}
    # A file whose last line has no newline does not swallow the next entry.
    with open(path, "a") as f:
        f.write("# no newline")
    knownhosts.append(str(path), knownhosts.entry_line("other.example", key_type, blob))
    assert openssh_lookup(path, "other.example") == {(4, "", knownhosts.fingerprint(blob))}


@pytest.mark.parametrize("patterns, name, expected", [
    ("web.example", "WEB.example", 1),
    ("*.example", "a.b.example", 1),
    ("web?", "web1", 1),
    ("web?", "web12", 0),
    ("*.example,!bad.example", "bad.example", -1),
    ("!bad.example", "web.example", 0),
    ("[10.0.0.1]:22?2", "[10.0.0.1]:2202", 1),  # brackets are literal: OpenSSH has no character classes
    ("a.example,,b.example", "b.example", 1),
    ("x" * 1100 + ",web.example", "web.example", 0),  # match.c gives up on a too-long subpattern
])
def test_patterns(patterns, name, expected):
    assert knownhosts.match_patterns(name, patterns) == expected


def test_unreadable_or_missing_files_read_as_empty(tmp_path):
    assert knownhosts.lookup(str(tmp_path / "missing"), "web.example") == []
    assert knownhosts.lookup(str(tmp_path), "web.example") == []  # a directory
