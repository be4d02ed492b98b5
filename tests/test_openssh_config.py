"""ssh_config as OpenSSH reads it: the real ``ssh`` and ecshell on the same files, side by side.

Each scenario comes from ssh_config(5). The harness (tests/openssh_support.py)
runs the real ``ssh -F <config> -o BatchMode=yes`` and ecshell's StaticFabric
on the same config, keys and known_hosts, and reads from the servers' own
logs who got in where with which key, through which hops; the two decisions
must be the same. ecshell asks ``ssh -G`` for each host's options, so these
tests also pin down what ecshell does with what ssh prints: tokens left for
the connection (IdentityFile, ProxyCommand), ProxyJump chains, ConnectTimeout.

Where ecshell differs on purpose the test says so.
"""

import os
import pathlib
import signal
import socket
import sys
import time

import pytest
from openssh_support import Lab, same_decision, via_ecshell, via_ssh

from ecshell import Cluster, StaticFabric
from ecshell.ssh import options

RELAY = """\
import os, socket, sys, threading
host, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(log, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
s = socket.create_connection((host, port))
def upstream():
    while True:
        data = os.read(0, 65536)
        if not data:
            s.shutdown(socket.SHUT_WR)
            return
        s.sendall(data)
threading.Thread(target=upstream, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data:
        break
    os.write(1, data)
"""


@pytest.fixture(scope="module")
def lab():
    world = Lab()
    try:
        world.key = world.keygen("id_ed25519")
        world.alt = world.keygen("alt_ed25519")
        world.web = world.server("web", authorized=[world.key, world.alt])
        world.bastion = world.server("bastion", authorized=[world.key, world.alt])
        world.bastion2 = world.server("bastion2", authorized=[world.key, world.alt])
        for server in (world.web, world.bastion, world.bastion2):
            world.known_hosts(server)
        world.relay = world.root / "relay.py"
        world.relay.write_text(RELAY)
        yield world
    finally:
        world.close()



def web_block(lab, name="web"):
    return f"Host {name}\n  HostName 127.0.0.1\n  Port {lab.web.port}\n"


# -- names, order, defaults ----------------------------------------------------------------


def test_alias_with_hostname_user_and_port(lab):
    lab.config(web_block(lab) + "  User root\n")
    theirs, _ = same_decision(lab, "web")
    assert theirs.connected and theirs.user == "root" and theirs.hops == ["web"]
    assert theirs.key_fingerprint == lab.fingerprint(lab.key)


def test_first_value_wins_in_host_order(lab):
    # The second block matches too: its Port comes too late; its IdentityFile is added after.
    lab.config(f"Host web-first\n  HostName 127.0.0.1\n  Port {lab.web.port}\n  IdentityFile ~/.ssh/alt_ed25519\n"
               "Host web-*\n  Port 1\n  IdentityFile ~/.ssh/id_ed25519\n")
    theirs, _ = same_decision(lab, "web-first")
    assert theirs.connected and theirs.key_fingerprint == lab.fingerprint(lab.alt)


def test_host_star_defaults_after_specific_blocks(lab):
    lab.config("Host hd\n  HostName 127.0.0.1\n"
               f"Host *\n  Port {lab.web.port}\n  User root\n  IdentityFile ~/.ssh/alt_ed25519\n  IdentitiesOnly yes\n")
    theirs, _ = same_decision(lab, "hd")
    assert theirs.connected and theirs.key_fingerprint == lab.fingerprint(lab.alt)


def test_include_of_a_directory_glob(lab):
    directory = lab.ssh_dir / "config.d"
    lab.config(web_block(lab, "inc-web"), path=directory / "10-web.conf")
    lab.config("Host *\n  IdentityFile ~/.ssh/alt_ed25519\n  IdentitiesOnly yes\n", path=directory / "90-defaults.conf")
    lab.config(f"Include {directory}/*.conf\n")
    theirs, _ = same_decision(lab, "inc-web")
    assert theirs.connected and theirs.key_fingerprint == lab.fingerprint(lab.alt)


def test_include_with_a_relative_path(lab):
    # Relative to ~/.ssh, from a nested file too. ssh takes ~ from the password database, ecshell
    # from $HOME: here they differ (the harness), and ecshell hands ssh a copy whose Includes
    # point under $HOME.
    lab.config(web_block(lab, "rel-web") + "  Include extra/key.conf\n", path=lab.ssh_dir / "extra" / "web.conf")
    lab.config("IdentityFile ~/.ssh/alt_ed25519\n", path=lab.ssh_dir / "extra" / "key.conf")
    lab.config("Include extra/web.conf\n")
    theirs, _ = same_decision(lab, "rel-web")
    assert theirs.connected and theirs.key_fingerprint == lab.fingerprint(lab.alt)


def test_a_changed_included_file_is_read_again(lab, monkeypatch):
    monkeypatch.setenv("HOME", str(lab.home))
    included = lab.ssh_dir / "changing.conf"
    lab.config(web_block(lab, "chg"), path=included)
    lab.config(f"Include {included}\n")
    first = options.lookup("chg", str(lab.config_path))
    assert options.lookup("chg", str(lab.config_path)) is first  # warm: no ssh -G
    time.sleep(0.02)
    lab.config(f"Host chg\n  HostName 127.0.0.1\n  Port {lab.bastion.port}\n", path=included)
    assert options.lookup("chg", str(lab.config_path)).get("port") == str(lab.bastion.port)
    theirs, _ = same_decision(lab, "chg")
    assert theirs.hops == ["bastion"]


# -- Match ----------------------------------------------------------------------------------


def test_match_host_sees_the_hostname(lab):
    lab.config(f"Host mh\n  HostName 127.0.0.1\nMatch host 127.0.0.1\n  Port {lab.web.port}\n")
    theirs, _ = same_decision(lab, "mh")
    assert theirs.connected and theirs.hops == ["web"]


def test_match_originalhost(lab):
    lab.config(f"Match originalhost orig\n  HostName 127.0.0.1\n  Port {lab.web.port}\n")
    theirs, _ = same_decision(lab, "orig")
    assert theirs.connected


def test_match_user_with_a_user_in_the_target(lab):
    user = lab.user(f"ecr{os.getpid() % 100000}")
    lab.config(web_block(lab) + f"Match user {user}\n  IdentityFile ~/.ssh/alt_ed25519\n  IdentitiesOnly yes\n")
    theirs, _ = same_decision(lab, f"{user}@web")
    assert theirs.connected and theirs.user == user and theirs.key_fingerprint == lab.fingerprint(lab.alt)
    theirs, _ = same_decision(lab, "web")  # root: the Match does not apply, the default key does
    assert theirs.user == "root" and theirs.key_fingerprint == lab.fingerprint(lab.key)


# -- tokens ---------------------------------------------------------------------------------


def test_tokens_in_identity_file(lab):
    key = lab.keygen(f"tok-127.0.0.1-{lab.web.port}-root-tokhost")
    with open(lab.web.authorized_keys, "a") as f:
        f.write(pathlib.Path(f"{key}.pub").read_text())
    lab.config(web_block(lab, "tokhost") + "  IdentityFile ~/.ssh/tok-%h-%p-%r-%n\n  IdentitiesOnly yes\n")
    theirs, _ = same_decision(lab, "tokhost")
    assert theirs.connected and theirs.key_fingerprint == lab.fingerprint(key)


def test_tokens_in_proxy_command(lab):
    log = lab.root / "relay.log"
    lab.config(web_block(lab, "relayed")
               + f"  ProxyCommand /usr/bin/python3 {lab.relay} %h %p {log} %r %n %%\n")
    theirs, _ = same_decision(lab, "relayed")
    assert theirs.connected and theirs.hops == ["web"]
    lines = log.read_text().splitlines()
    assert lines == [f"127.0.0.1 {lab.web.port} {log} root relayed %"] * 2, lines


# -- ProxyJump and ProxyCommand ---------------------------------------------------------------


def bastions(lab):
    return (f"Host bastion\n  HostName 127.0.0.1\n  Port {lab.bastion.port}\n"
            f"Host bastion2\n  HostName 127.0.0.1\n  Port {lab.bastion2.port}\n")


def test_proxy_jump_one_hop(lab):
    lab.config(bastions(lab) + web_block(lab) + "  ProxyJump root@bastion\n")
    theirs, _ = same_decision(lab, "web")
    assert theirs.connected and theirs.hops == ["bastion", "web"]


def test_proxy_jump_two_hops(lab):
    lab.config(bastions(lab) + web_block(lab) + "  ProxyJump bastion,bastion2\n")
    theirs, _ = same_decision(lab, "web")
    assert theirs.connected and theirs.hops == ["bastion", "bastion2", "web"]


def test_proxy_jump_hop_as_ssh_uri(lab):
    # The hop's own user and port come from the URI; its own key from its own Host block.
    lab.config(f"Host 127.0.0.1\n  IdentityFile ~/.ssh/alt_ed25519\n  IdentitiesOnly yes\n"
               + web_block(lab) + f"  ProxyJump ssh://root@127.0.0.1:{lab.bastion.port}\n")
    theirs, _ = same_decision(lab, "web")
    assert theirs.connected and theirs.hops == ["bastion", "web"]
    assert theirs.accepted[0].fingerprint == lab.fingerprint(lab.alt)


def test_a_later_hop_ignores_its_own_proxy_jump(lab):
    # `ProxyJump bastion,bastion2` reaches bastion2 as `ssh -J bastion bastion2` would: bastion2's
    # own ProxyJump gives way to the chain.
    lab.config(bastions(lab) + "  ProxyJump web\n" + web_block(lab) + "  ProxyJump bastion,bastion2\n")
    theirs, _ = same_decision(lab, "web")
    assert theirs.hops == ["bastion", "bastion2", "web"]


def test_proxy_command_through_ssh_w(lab):
    # The inner ssh gets the config and absolute paths: outside the harness's namespace, ecshell's
    # proxy command runs a plain ssh whose ~ is the real root's.
    lab.config(f"Host bastion\n  HostName 127.0.0.1\n  Port {lab.bastion.port}\n  IdentityFile {lab.key}\n"
               f"  UserKnownHostsFile {lab.ssh_dir}/known_hosts\n"
               + web_block(lab) + f"  ProxyCommand ssh -F {lab.config_path} -o BatchMode=yes -W %h:%p bastion\n")
    theirs, _ = same_decision(lab, "web")
    assert theirs.connected and theirs.hops == ["bastion", "web"]


def test_a_failing_proxy_command_is_unreachable_with_its_stderr(lab):
    lab.config(web_block(lab, "badproxy") + "  ProxyCommand sh -c 'echo no route to the moon >&2; exit 3'\n")
    theirs, mine = same_decision(lab, "badproxy")
    assert not theirs.connected and "no route to the moon" in theirs.message
    assert mine.error == "unreachable"
    assert "exited 3: no route to the moon" in mine.message, mine.message


# -- refusals and timeouts ---------------------------------------------------------------------


def test_connect_timeout_against_a_stopped_sshd(lab):
    stopped = lab.server("stopped", authorized=[lab.key])
    lab.known_hosts(stopped)
    lab.config(f"Host stopped\n  HostName 127.0.0.1\n  Port {stopped.port}\n  ConnectTimeout 2\n")
    os.kill(stopped.process.pid, signal.SIGSTOP)  # the kernel still accepts; no banner comes
    try:
        theirs, mine = same_decision(lab, "stopped")
    finally:
        os.kill(stopped.process.pid, signal.SIGCONT)
    assert "timed out" in theirs.message
    # ecshell bounds the whole connect with it (OpenSSH: the TCP connect and the banner), and says so.
    assert mine.error == "timeout" and "ConnectTimeout 2" in mine.message, mine.message


def test_a_syntax_error_is_refused_with_ssh_own_message(lab):
    lab.config(web_block(lab) + "  Bogus yes\n")
    theirs, mine = same_decision(lab, "web")
    assert not theirs.connected and "Bad configuration option: bogus" in theirs.message
    assert mine.error == "unreachable" and "line 4: Bad configuration option: bogus" in mine.message
    assert str(lab.config_path) in mine.message


def test_server_alive_sets_the_dead_peer_timeout(lab, monkeypatch):
    lab.config(web_block(lab) + "  ServerAliveInterval 2\n  ServerAliveCountMax 2\n")
    monkeypatch.setenv("HOME", str(lab.home))
    cluster = Cluster(StaticFabric(["web"], ssh_config=str(lab.config_path)), executor="channel")
    try:
        machine = cluster.machine("web")
        assert (machine.endpoint.server_alive_interval, machine.endpoint.server_alive_count_max) == (2, 2)
        sock = machine.connection().transport.sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 4000
    finally:
        cluster.close()


# -- without ssh ----------------------------------------------------------------------------


def test_without_ssh_a_plain_config_still_resolves(lab, monkeypatch, tmp_path):
    lab.config(web_block(lab, "plain") + "  IdentityFile ~/.ssh/alt_ed25519\n  IdentitiesOnly yes\n")
    theirs = via_ssh(lab, "plain")
    monkeypatch.setenv("PATH", str(tmp_path))  # no ssh on it
    options.forget()
    mine = via_ecshell(lab, "plain")
    assert mine.decision() == theirs.decision() and theirs.connected


def test_without_ssh_include_and_match_are_refused(lab, monkeypatch, tmp_path):
    lab.config(f"Include {lab.ssh_dir}/config.d/*.conf\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    options.forget()
    mine = via_ecshell(lab, "inc-web")
    assert mine.error == "unreachable"
    assert "Include needs OpenSSH's ssh" in mine.message and "install the OpenSSH client" in mine.message
    lab.config("Match all\n  Port 2\n")
    mine = via_ecshell(lab, "web")
    assert mine.error == "unreachable" and "Match needs OpenSSH's ssh" in mine.message
