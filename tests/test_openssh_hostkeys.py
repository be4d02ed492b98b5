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
    assert knownhosts.lookup("bad\0path", "web.example") == []


PARAMIKO_ORDER = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                  "rsa-sha2-512", "rsa-sha2-256")


@pytest.mark.parametrize("known, expected", [
    ((), PARAMIKO_ORDER),
    (("ssh-ed25519", "ssh-rsa"), PARAMIKO_ORDER),  # the first is known: the list as it is
    (("ssh-rsa",), ("rsa-sha2-512", "rsa-sha2-256") + PARAMIKO_ORDER[:4]),
    (("ecdsa-sha2-nistp384", "ssh-rsa"),
     ("ecdsa-sha2-nistp384", "rsa-sha2-512", "rsa-sha2-256", "ssh-ed25519", "ecdsa-sha2-nistp256",
      "ecdsa-sha2-nistp521")),
])
def test_known_key_types_are_offered_first_as_ssh_orders_them(known, expected):
    from ecshell.ssh.hostkeys import known_first

    assert known_first(PARAMIKO_ORDER, known) == expected


@pytest.mark.parametrize("files", [["/proc/nowhere/known_hosts"], ["bad\0path"], ["{dir}"], ["none"], []])
@pytest.mark.parametrize("policy", ["yes", "accept-new", "no", "ask", "nonsense"])
def test_no_known_hosts_setting_makes_the_verifier_raise_anything_but_a_refusal(tmp_path, keys, files, policy):
    from ecshell.errors import ConnectError
    from ecshell.ssh.hostkeys import KnownHosts, parse_public_key

    files = [f.format(dir=tmp_path) for f in files]
    trust = KnownHosts(files, policy, ["bad\0path", str(tmp_path)], hash_known_hosts=True)
    assert trust.order_key_types("web.example", 22, ("ssh-ed25519", "rsa-sha2-256")) == ("ssh-ed25519",
                                                                                          "rsa-sha2-256")
    try:
        trust.verify("web.example", 2222, parse_public_key(keys["ed25519"]))
    except ConnectError as exc:
        assert exc.kind == "hostkey" and exc.detail["reason"] in ("unknown", "unrecordable")
    else:
        assert policy in ("accept-new", "no") and files  # accepted, even where it could not be recorded


# -- decisions, against ssh ----------------------------------------------------------------------
#
# One lab for the module: a client key, and servers that offer different host keys. Each scenario
# writes the known_hosts files and the config, runs ssh, puts the files back as they were, runs
# ecshell, and compares what each decided (and what each wrote to known_hosts).

from openssh_support import Lab, via_ecshell, via_ssh  # noqa: E402


def _host_certificate(lab, name, principal="127.0.0.1"):
    """An ed25519 host key of our own and its certificate, signed by the lab's host CA."""
    key = lab.keygen(f"{name}_host_ed25519", directory=lab.root)
    subprocess.run(["ssh-keygen", "-q", "-s", str(lab.ca), "-I", name, "-h", "-n", principal, f"{key}.pub"],
                   check=True)
    return key


@pytest.fixture(scope="module")
def lab():
    world = Lab()
    try:
        world.key = world.keygen("id_ed25519")
        world.ca = world.keygen("host_ca", directory=world.root)
        world.web = world.server("web", host_key_types=("ed25519", "ecdsa"), authorized=[world.key])
        world.impostor = world.server("impostor", host_key_types=("rsa",), authorized=[world.key])
        world.bastion = world.server("bastion", authorized=[world.key])
        signed = _host_certificate(world, "signed")
        world.signed = world.server("signed", host_key_types=("ecdsa",), authorized=[world.key],
                                    extra=f"HostKey {signed}\nHostCertificate {signed}-cert.pub")
        world.signed.host_keys["ed25519"] = " ".join(pathlib.Path(f"{signed}.pub").read_text().split()[:2])
        only = _host_certificate(world, "certonly")
        world.certonly = world.server("certonly", host_key_types=(), authorized=[world.key],
                                      extra=f"HostKey {only}\nHostCertificate {only}-cert.pub\n"
                                            "HostKeyAlgorithms ssh-ed25519-cert-v01@openssh.com")
        world.certonly.host_keys["ed25519"] = " ".join(pathlib.Path(f"{only}.pub").read_text().split()[:2])
        world.sha1 = world.server("sha1", host_key_types=("rsa",), authorized=[world.key],
                                  extra="HostKeyAlgorithms ssh-rsa")
        world.wrong = {t: " ".join(pathlib.Path(f"{world.keygen(f'wrong_{t}', type=t, directory=world.root)}.pub")
                                   .read_text().split()[:2]) for t in ("ed25519", "ecdsa")}
        yield world
    finally:
        world.close()


def entry(server, port=None):
    """The name ssh looks ``server`` up under: ``[127.0.0.1]:port``."""
    return f"[127.0.0.1]:{port or server.port}"


class Both:
    """What ssh and ecshell each decided, and the known_hosts file each left behind."""

    def __init__(self, theirs, mine, their_file, my_file):
        self.theirs, self.mine = theirs, mine
        self.their_file, self.my_file = their_file, my_file

    def new_lines(self, before):
        return (self.their_file[len(before):], self.my_file[len(before):])


def decide(lab, known="", policy="yes", server=None, options="", global_known=None, target="web",
           hosts=None, update_host_keys=False):
    """Run ssh, then ecshell, each on the same fresh known_hosts files and config.

    ``UpdateHostKeys no`` unless asked: after a login with a key from the user's file, ssh would
    add the server's other host keys, which ecshell does not do (see the test below).
    """
    server = server or lab.web
    hosts = hosts or (f"Host {target}\n  HostName 127.0.0.1\n  Port {server.port}\n"
                      f"  UserKnownHostsFile ~/.ssh/known_hosts\n"
                      f"  GlobalKnownHostsFile ~/.ssh/global_known_hosts\n{options}")
    update = "" if update_host_keys else "  UpdateHostKeys no\n"
    lab.config(f"{hosts}Host *\n  StrictHostKeyChecking {policy}\n{update}")
    user_file, global_file = lab.ssh_dir / "known_hosts", lab.ssh_dir / "global_known_hosts"

    def reset():
        user_file.write_text(known)
        if global_known is None:
            global_file.unlink(missing_ok=True)
        else:
            global_file.write_text(global_known)

    reset()
    theirs = via_ssh(lab, target)
    their_file = user_file.read_text()
    reset()
    mine = via_ecshell(lab, target)
    return Both(theirs, mine, their_file, user_file.read_text())


def same(lab, **scenario):
    """ssh and ecshell decide alike; the pair of outcomes."""
    both = decide(lab, **scenario)
    assert both.mine.decision() == both.theirs.decision(), (both.theirs, both.mine)
    return both


def connected(both):
    return both.theirs.connected and both.mine.connected and both.mine.error is None


def refused(both, reason=None):
    ok = not both.theirs.connected and both.mine.error == "hostkey"
    return ok and (reason is None or f"{reason}" in both.mine.message)


def test_exact_match(lab):
    both = same(lab, known=f"{entry(lab.web)} {lab.web.host_keys['ed25519']}\n")
    assert connected(both) and both.theirs.hops == ["web"]


def test_a_host_known_only_by_its_ecdsa_key_connects(lab):
    # The server has ed25519 and ECDSA keys; both clients offer ECDSA first because that is what is known.
    both = same(lab, known=f"{entry(lab.web)} {lab.web.host_keys['ecdsa']}\n")
    assert connected(both)


def test_ssh_learns_a_hosts_other_keys_and_ecshell_does_not(lab):
    # UpdateHostKeys (on by default with the default UserKnownHostsFile): after a login with a key
    # from the user's file, ssh records the server's other host keys. paramiko has no
    # hostkeys-00@openssh.com; ecshell leaves known_hosts as it was.
    known = f"{entry(lab.web)} {lab.web.host_keys['ed25519']}\n"
    hosts = (f"Host web\n  HostName 127.0.0.1\n  Port {lab.web.port}\n"
             "  GlobalKnownHostsFile ~/.ssh/global_known_hosts\n")
    both = same(lab, known=known, hosts=hosts, update_host_keys=True)
    assert connected(both)
    assert both.new_lines(known) == (f"{entry(lab.web)} {lab.web.host_keys['ecdsa']}\n", "")


def test_a_wrong_key_of_the_known_type_is_a_changed_key(lab):
    both = same(lab, known=f"{entry(lab.web)} {lab.wrong['ecdsa']}\n", policy="accept-new")
    assert refused(both, "HOST KEY CHANGED")
    assert both.mine.message.count("SHA256:") == 2
    assert f"ssh-keygen -f {lab.ssh_dir / 'known_hosts'} -R '{entry(lab.web)}'" in both.mine.message
    assert f"{lab.ssh_dir / 'known_hosts'}:1" in both.mine.message


@pytest.mark.parametrize("policy", ["yes", "accept-new", "ask"])
def test_an_impostor_offering_only_another_key_type_is_refused(lab, policy):
    # ed25519 is known for the name; what answers there has only an RSA key. OpenSSH calls that a
    # changed key (hostfile.c: a known key of any other type), not a new one.
    known = f"{entry(lab.impostor)} {lab.wrong['ed25519']}\n"
    both = same(lab, known=known, policy=policy, server=lab.impostor)
    assert refused(both, "HOST KEY CHANGED") and "no key of a type known for it" in both.mine.message
    assert both.their_file == both.my_file == known


def test_under_no_a_changed_key_is_still_refused_deliberately(lab):
    # Deliberately stricter: ssh connects to a changed key under StrictHostKeyChecking no (with
    # password and keyboard-interactive authentication and forwarding turned off); ecshell refuses.
    known = f"{entry(lab.impostor)} {lab.wrong['ed25519']}\n"
    both = decide(lab, known=known, policy="no", server=lab.impostor)
    assert both.theirs.connected and both.theirs.hops == ["impostor"]
    assert both.mine.error == "hostkey" and "HOST KEY CHANGED" in both.mine.message
    assert both.mine.hops == []


def test_a_wildcard_entry(lab):
    assert refused(same(lab, known=f"* {lab.wrong['ed25519']}\n"), "HOST KEY CHANGED")
    assert connected(same(lab, known=f"*.example,* {lab.web.host_keys['ed25519']}\n"))


def test_a_negated_pattern_takes_the_line_away(lab):
    # "*" would match, "!name" excludes: the right key on that line does not count for [host]:port,
    # but it still does for the bare host name, which ssh also looks at.
    assert connected(same(lab, known=f"*,!{entry(lab.web)} {lab.web.host_keys['ed25519']}\n"))
    both = same(lab, known=f"*,!*127.0.0.1* {lab.web.host_keys['ed25519']}\n")
    assert refused(both, "unknown host key") and "out of band" in both.mine.message
    assert "ssh-keyscan" not in both.mine.message
    # ... and neither does a wrong key there.
    known = (f"!{entry(lab.web)},* {lab.wrong['ed25519']}\n"
             f"{entry(lab.web)},other.example {lab.web.host_keys['ed25519']}\n")
    assert connected(same(lab, known=known))


def test_two_keys_of_one_type_any_match_accepts(lab):
    known = f"{entry(lab.web)} {lab.wrong['ed25519']}\n{entry(lab.web)} {lab.web.host_keys['ed25519']}\n"
    assert connected(same(lab, known=known))


def test_hashed_entries(lab):
    right = f"{knownhosts.hash_name(entry(lab.web))} {lab.web.host_keys['ed25519']}\n"
    assert connected(same(lab, known=right))
    wrong = f"{knownhosts.hash_name(entry(lab.web))} {lab.wrong['ed25519']}\n"
    assert refused(same(lab, known=wrong), "HOST KEY CHANGED")


@pytest.mark.parametrize("policy", ["yes", "accept-new", "ask"])
def test_a_revoked_key_is_refused(lab, policy):
    known = f"{entry(lab.web)} {lab.web.host_keys['ed25519']}\n@revoked * {lab.web.host_keys['ed25519']}\n"
    both = same(lab, known=known, policy=policy)
    assert refused(both, "REVOKED HOST KEY") and f"{lab.ssh_dir / 'known_hosts'}:2" in both.mine.message


def test_under_no_a_revoked_key_is_still_refused_deliberately(lab):
    # Deliberately stricter: ssh goes on to a revoked key under StrictHostKeyChecking no.
    known = f"@revoked * {lab.web.host_keys['ed25519']}\n"
    both = decide(lab, known=known, policy="no")
    assert both.theirs.connected
    assert both.mine.error == "hostkey" and "REVOKED HOST KEY" in both.mine.message


def test_garbage_lines_are_skipped_as_ssh_skips_them(lab):
    garbage = ("@cert-authority\n@bogus * ssh-ed25519 AAAA\n* ssh-ed25519 AAAAnot-base64!\n"
               f"{entry(lab.web)}\n{entry(lab.web)} ssh-rsa {lab.web.host_keys['ed25519'].split()[1]}\n"
               "\x00\xff binary\n|1|bad|hash ssh-ed25519 AAAA\n")
    assert connected(same(lab, known=garbage + f"{entry(lab.web)} {lab.web.host_keys['ed25519']}\n"))
    both = same(lab, known=garbage)
    assert refused(both, "unknown host key")


def test_a_key_known_for_the_bare_host_serves_any_port(lab):
    # ssh looks a key it does not know under [host]:port up under the bare host name too.
    assert connected(same(lab, known=f"127.0.0.1 {lab.web.host_keys['ed25519']}\n"))
    # There, only a match counts: a different key for the bare name leaves the key unknown.
    known = f"127.0.0.1 {lab.wrong['ed25519']}\n"
    assert refused(same(lab, known=known), "unknown host key")
    both = same(lab, known=known, policy="accept-new")
    assert connected(both)
    assert both.new_lines(known) == (f"{entry(lab.web)} {lab.web.host_keys['ed25519']}\n",) * 2


def test_accept_new_records_the_line_ssh_writes(lab):
    both = same(lab, policy="accept-new")
    assert connected(both)
    assert both.their_file == both.my_file == f"{entry(lab.web)} {lab.web.host_keys['ed25519']}\n"


def test_no_accepts_and_records_with_a_warning(lab, caplog):
    caplog.set_level("WARNING", logger="ecshell")
    both = same(lab, policy="no")
    assert connected(both)
    assert both.their_file == both.my_file == f"{entry(lab.web)} {lab.web.host_keys['ed25519']}\n"
    assert "Permanently added" in caplog.text and "StrictHostKeyChecking no" in caplog.text


def test_ask_refuses_so_that_the_shell_can_ask(lab):
    both = same(lab, policy="ask")
    assert refused(both, "unknown host key")
    assert both.mine.error == "hostkey"
    assert both.their_file == both.my_file == ""


def test_no_user_known_hosts_file_means_nothing_can_be_recorded(lab):
    options = "  UserKnownHostsFile none\n"
    hosts = (f"Host web\n  HostName 127.0.0.1\n  Port {lab.web.port}\n{options}"
             "  GlobalKnownHostsFile ~/.ssh/global_known_hosts\n")
    for policy in ("accept-new", "no"):
        both = same(lab, policy=policy, hosts=hosts)
        assert refused(both) and "no UserKnownHostsFile" in both.mine.message


def test_a_certificate_authority_line_does_not_vouch_for_a_plain_key(lab):
    # The server has no certificate: both treat its plain key as unknown.
    ca = f"@cert-authority * {pathlib.Path(f'{lab.ca}.pub').read_text().split(' ', 2)[0]} " \
         f"{pathlib.Path(f'{lab.ca}.pub').read_text().split()[1]}\n"
    assert refused(same(lab, known=ca), "unknown host key")
    both = same(lab, known=ca, policy="accept-new")
    assert connected(both) and both.new_lines(ca) == (f"{entry(lab.web)} {lab.web.host_keys['ed25519']}\n",) * 2


def test_a_host_certificate_ecshell_cannot_verify(lab):
    # A limitation, not a choice: paramiko cannot verify host certificates. ssh trusts the
    # certificate through the CA line; to ecshell the host's plain key is unknown, and it says why.
    ca_pub = pathlib.Path(f"{lab.ca}.pub").read_text().split()
    ca = f"@cert-authority * {ca_pub[0]} {ca_pub[1]}\n"
    both = decide(lab, known=ca, policy="yes", server=lab.signed)
    assert both.theirs.connected and both.mine.error == "hostkey"
    assert "unknown host key" in both.mine.message and "cannot verify host certificates" in both.mine.message
    # Under accept-new both connect; ssh through the certificate, ecshell by recording the plain key.
    both = decide(lab, known=ca, policy="accept-new", server=lab.signed)
    assert both.theirs.connected and both.mine.connected and both.mine.error is None
    assert both.new_lines(ca) == ("", f"{entry(lab.signed)} {lab.signed.host_keys['ed25519']}\n")
    # Its plain key, known: ecshell connects (the key is the certified one).
    known = f"{entry(lab.signed)} {lab.signed.host_keys['ed25519']}\n"
    assert connected(same(lab, known=known, server=lab.signed))


def test_a_server_offering_only_certificates(lab):
    # paramiko takes the key a certificate carries as the host's key: the plain key decides.
    ca_pub = pathlib.Path(f"{lab.ca}.pub").read_text().split()
    ca = f"@cert-authority * {ca_pub[0]} {ca_pub[1]}\n"
    both = decide(lab, known=ca, policy="yes", server=lab.certonly)
    assert both.theirs.connected and both.mine.error == "hostkey"
    assert "cannot verify host certificates" in both.mine.message
    known = f"{entry(lab.certonly)} {lab.certonly.host_keys['ed25519']}\n"
    assert connected(same(lab, known=known, server=lab.certonly))


def test_a_server_with_no_host_key_type_paramiko_knows_is_a_host_key_result(lab):
    # Only SHA-1 RSA signatures: OpenSSH 9.2 does not accept them by default, paramiko does not offer them.
    both = same(lab, known=f"{entry(lab.sha1)} {lab.sha1.host_keys['rsa']}\n", server=lab.sha1)
    assert not both.theirs.connected and both.mine.error == "hostkey"
    assert "no host key type" in both.mine.message


# -- jump hosts and the shell's question ----------------------------------------------------------


def jump_hosts(lab):
    return (f"Host bastion\n  HostName 127.0.0.1\n  Port {lab.bastion.port}\n"
            f"Host web\n  HostName 127.0.0.1\n  Port {lab.web.port}\n  ProxyJump bastion\n"
            "Host *\n  UserKnownHostsFile ~/.ssh/known_hosts\n  GlobalKnownHostsFile ~/.ssh/global_known_hosts\n")


@pytest.fixture
def shell(lab, monkeypatch):
    """``shell(answer)``: a Session over ``web`` in the lab's home, its questions and what it said."""
    import io

    from ecshell import Cluster, StaticFabric
    from ecshell.shell.session import Session

    monkeypatch.setenv("HOME", str(lab.home))
    monkeypatch.setenv("ECSHELL_HOME", str(lab.root / "ecshell"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    clusters = []

    def make(answer):
        cluster = Cluster(StaticFabric(["web"], ssh_config=str(lab.config_path)), executor="channel")
        clusters.append(cluster)
        questions, stream = [], io.StringIO()
        session = Session(cluster, ask=lambda q: questions.append(q) or answer, stream=stream)
        return session, questions, stream

    yield make
    for cluster in clusters:
        cluster.close()


def test_a_new_bastion_key_is_shown_and_recorded_under_the_bastion_name(lab, shell):
    known = f"{entry(lab.web)} {lab.web.host_keys['ed25519']}\n"
    both = same(lab, known=known, policy="ask", hosts=jump_hosts(lab))
    assert refused(both, f"unknown host key for {entry(lab.bastion)}")
    assert both.their_file == both.my_file == known

    session, questions, said = shell(True)
    results = session.on("all", "echo through", live=False)
    assert results["web"].ok and results["web"].output == "through\n" and len(questions) == 1
    text = said.getvalue()
    bastion_fp = lab.fingerprint(lab.bastion.host_keys["ed25519"])
    assert "(jump host for web)" in text and entry(lab.bastion) in text and bastion_fp in text
    assert lab.fingerprint(lab.web.host_keys["ed25519"]) not in text
    assert (lab.ssh_dir / "known_hosts").read_text() == known + f"{entry(lab.bastion)} " \
                                                              f"{lab.bastion.host_keys['ed25519']}\n"
    # What the shell recorded, ssh accepts.
    assert via_ssh(lab, "web").hops == ["bastion", "web"]


def test_a_new_bastion_and_a_new_target_make_two_questions_each_naming_its_host(lab, shell):
    decide(lab, policy="ask", hosts=jump_hosts(lab))  # writes the config; empty known_hosts
    (lab.ssh_dir / "known_hosts").write_text("")
    session, questions, said = shell(True)
    results = session.on("all", "true", live=False)
    assert results["web"].ok and len(questions) == 2
    first, second = said.getvalue().split("Trusting records")[:2]
    assert entry(lab.bastion) in first and "jump host for web" in first and entry(lab.web) not in first
    assert entry(lab.web) in second and entry(lab.bastion) not in second
    assert sorted((lab.ssh_dir / "known_hosts").read_text().splitlines()) == sorted([
        f"{entry(lab.bastion)} {lab.bastion.host_keys['ed25519']}",
        f"{entry(lab.web)} {lab.web.host_keys['ed25519']}"])


def test_a_refused_question_records_nothing(lab, shell):
    decide(lab, policy="ask")
    (lab.ssh_dir / "known_hosts").write_text("")
    session, questions, said = shell(False)
    results = session.on("all", "true", live=False)
    assert results["web"].error == "hostkey" and len(questions) == 1
    assert "1 of 1 hosts offered a host key" in said.getvalue()
    assert (lab.ssh_dir / "known_hosts").read_text() == ""


# -- HostKeyAlias, GlobalKnownHostsFile, HashKnownHosts ------------------------------------------
#
# The resolver (ssh/endpoint.py) hands these to KnownHosts. Each scenario is checked twice: the
# verifier built with the option, against ssh with the option in its config (always), and the
# whole path from ssh_config (once the resolver passes the option).

OPTION_SCENARIOS = {
    # name: (ssh_config lines, KnownHosts keywords, known_hosts, global known_hosts, policy, ssh connects)
    "alias right": ("  HostKeyAlias webalias\n", {"host_key_alias": "webalias"},
                    "webalias {ed25519}\n", None, "yes", True),
    "alias wrong": ("  HostKeyAlias webalias\n", {"host_key_alias": "webalias"},
                    "webalias {wrong}\n{entry} {ed25519}\n", None, "yes", False),
    "alias only, key under the address": ("  HostKeyAlias webalias\n", {"host_key_alias": "webalias"},
                                          "{entry} {ed25519}\n127.0.0.1 {ed25519}\n", None, "yes", False),
    "alias recorded": ("  HostKeyAlias WebAlias\n", {"host_key_alias": "WebAlias"}, "", None, "accept-new", True),
    "global right": ("", {}, "", "{entry} {ed25519}\n", "yes", True),
    "global contradicting": ("", {}, "", "{entry} {wrong}\n", "accept-new", False),
    "global wrong, user right": ("", {}, "{entry} {ed25519}\n", "{entry} {wrong}\n", "yes", True),
    "global wildcard revoked": ("", {}, "{entry} {ed25519}\n", "@revoked * {ed25519}\n", "yes", False),
    "hashed recording": ("  HashKnownHosts yes\n", {"hash_known_hosts": True}, "", None, "accept-new", True),
}


def _scenario(lab, name):
    options, keywords, known, global_known, policy, ssh_connects = OPTION_SCENARIOS[name]
    values = dict(entry=entry(lab.web), ed25519=lab.web.host_keys["ed25519"], wrong=lab.wrong["ed25519"])
    known = known.format(**values)
    global_known = None if global_known is None else global_known.format(**values)
    return options, keywords, known, global_known, policy, ssh_connects


def _verifier_decides(lab, keywords, known, global_known, policy):
    """KnownHosts built as the resolver builds it, on the lab's files: (accepted, error, known_hosts after)."""
    from ecshell.errors import ConnectError
    from ecshell.ssh.hostkeys import KnownHosts, parse_public_key

    user_file, global_file = lab.ssh_dir / "known_hosts", lab.ssh_dir / "global_known_hosts"
    user_file.write_text(known)
    global_file.unlink(missing_ok=True)
    if global_known is not None:
        global_file.write_text(global_known)
    trust = KnownHosts([str(user_file)], policy, [str(global_file)], **keywords)
    try:
        trust.verify("127.0.0.1", lab.web.port, parse_public_key(lab.web.host_keys["ed25519"]))
        accepted, error = True, None
    except ConnectError as exc:
        accepted, error = False, exc
    return accepted, error, user_file.read_text()


def _same_line(lab, theirs, mine, name):
    """Two recorded lines for ``name``: the same key; hashed lines hash ``name`` (each with its salt)."""
    their_names, their_key = theirs.split(" ", 1)
    my_names, my_key = mine.split(" ", 1)
    assert their_key == my_key == lab.web.host_keys["ed25519"] + "\n"
    if their_names.startswith("|1|"):
        for names in (their_names, my_names):
            assert names.startswith("|1|") and knownhosts.names_match(name, names)
    else:
        assert their_names == my_names == name


@pytest.mark.parametrize("name", OPTION_SCENARIOS)
def test_option_through_the_verifier_against_ssh(lab, name):
    options, keywords, known, global_known, policy, ssh_connects = _scenario(lab, name)
    both = decide(lab, known=known, global_known=global_known, policy=policy, options=options)
    assert both.theirs.connected == ssh_connects
    accepted, error, written = _verifier_decides(lab, keywords, known, global_known, policy)
    assert accepted == ssh_connects, error
    if not accepted:
        assert error.kind == "hostkey"
    assert (written == known) == (both.their_file == known)
    if written != known:
        recorded = "webalias" if "host_key_alias" in keywords else entry(lab.web)
        _same_line(lab, both.their_file[len(known):], written[len(known):], recorded)


def _resolver_passes(lab, keywords):
    from ecshell import Cluster, StaticFabric

    lines = {"host_key_alias": "HostKeyAlias {}", "hash_known_hosts": "HashKnownHosts yes",
             "global_files": "GlobalKnownHostsFile {}"}
    config = lab.root / "probe_config"
    config.write_text("Host probe\n  HostName 127.0.0.1\n" + "".join(
        f"  {lines[k].format(' '.join(v) if isinstance(v, list) else v)}\n" for k, v in keywords.items()))
    cluster = Cluster(StaticFabric(["probe"], ssh_config=str(config)))
    try:
        verifier = cluster.machine("probe").endpoint.verifier
        # ssh lowercases HostKeyAlias (ssh -G prints it so, and records it so).
        return all(getattr(verifier, k, None) == (v.lower() if k == "host_key_alias" else v)
                   for k, v in keywords.items())
    finally:
        cluster.close()


@pytest.mark.parametrize("name", OPTION_SCENARIOS)
def test_option_from_ssh_config_against_ssh(lab, name):
    options, keywords, known, global_known, policy, ssh_connects = _scenario(lab, name)
    probe = dict(keywords) or {"global_files": [str(lab.ssh_dir / "global_known_hosts")]}
    if not _resolver_passes(lab, probe):
        pytest.skip(f"the resolver does not hand {', '.join(probe)} to KnownHosts yet (issue 12, part A)")
    both = same(lab, known=known, global_known=global_known, policy=policy, options=options)
    assert both.theirs.connected == ssh_connects
    if both.their_file != known:
        recorded = "webalias" if "host_key_alias" in keywords else entry(lab.web)
        _same_line(lab, both.their_file[len(known):], both.my_file[len(known):], recorded)
    else:
        assert both.my_file == known
