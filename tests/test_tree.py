"""ClusterShell's tree mode with real local machines (real sshd) as gateways and targets.

Every broadcast here goes from this process's OpenSSH client to two gateway
machines, which run ClusterShell's gateway (installed there by ecshell) and
reach the targets with their own OpenSSH client, host keys checked against
the pinned keys ecshell gave them. Each result is compared with the direct
path's for the same command on the same machines.
"""

import dataclasses
import os
import signal
import socket
import threading
import time

import pytest

from ecshell import ArgumentError, StaticFabric
from ecshell.ssh.keys import generate_ed25519

#: What r.via says of a machine reached without the tree.
DIRECT = {"channel", "executor", "shortcut"}

COMMANDS = [
    "echo $ECSHELL_MACHINE",
    "echo same everywhere",
    "echo out; echo err >&2; exit 3",
    'test "$ECSHELL_MACHINE" != node-4',
    "printf 'a\\nb\\n'; exit 7",
    "true",
]


@pytest.fixture
def tree(cluster):
    """Two gateways and ten targets; broadcasts to the targets go through the gateways."""
    cluster.settings.gateways = ["gw-[0-1]"]
    cluster.settings.connect_timeout = 3.0
    cluster.launch(2, name="gw")
    return cluster, cluster.launch(10, name="node")


def outcome(rs):
    return {name: (r.output, r.status, r.exit_code) for name, r in rs.items()}


def test_the_tree_gives_the_direct_paths_results(tree):
    cluster, nodes = tree
    for command in COMMANDS:
        through = nodes.run(command)
        assert {r.via for r in through.values()} == {"tree"}, command
        direct = nodes.run(command, transport="direct")
        assert {r.via for r in direct.values()} <= DIRECT, command
        assert outcome(through) == outcome(direct), command
        assert [(g.output, g.machines.names, g.status) for g in through.groups(by="output+status")] == \
               [(g.output, g.machines.names, g.status) for g in direct.groups(by="output+status")]
    # the gateways themselves are reached directly, and the tree refuses to route to one
    assert cluster["gw-*"].run("echo gw").all_ok
    with pytest.raises(ArgumentError, match="gateway itself"):
        cluster["gw-0"].run("true", transport="tree")


def test_a_stopped_and_a_killed_target_fail_alike_both_ways(tree):
    cluster, nodes = tree
    stopped, killed = nodes[3], nodes[6]
    stopped.close()
    killed.close()
    os.kill(killed.prototype.extra["pid"], signal.SIGKILL)
    os.kill(stopped.prototype.extra["pid"], signal.SIGSTOP)
    try:
        through = nodes.run("echo up")
        direct = nodes.run("echo up", transport="direct")
    finally:
        os.kill(stopped.prototype.extra["pid"], signal.SIGCONT)
    for rs in (through, direct):
        assert rs[stopped].error == "timeout", rs[stopped]
        assert rs[killed].error == "unreachable", rs[killed]
        assert len(rs.ok) == 8
    assert outcome(through.ok) == outcome(direct.ok)


def test_a_target_whose_key_is_not_its_pinned_one_is_refused(tree):
    cluster, nodes = tree
    victim = nodes[2]
    _, other_public = generate_ed25519()
    victim.update(dataclasses.replace(victim.prototype, host_keys=[other_public]))
    through = nodes.run("echo up")
    assert through[victim].error == "hostkey" and through[victim].output == ""
    assert nodes.run("echo up", transport="direct")[victim].error == "hostkey"
    assert len(through.ok) == 9


def _pids(nodes, directory):
    found = {}
    for m in nodes:
        path = os.path.join(directory, m.name)
        if os.path.exists(path):
            found[m.name] = int(open(path).read().split()[0])
    return found


def _gone(pid, within=5.0):
    until = time.monotonic() + within
    while time.monotonic() < until:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_a_timed_out_command_is_reported_and_killed_on_the_machine(tree, tmp_path):
    cluster, nodes = tree
    few = nodes[:4]
    rs = few.run(f"sh -c 'echo $$ > {tmp_path}/$ECSHELL_MACHINE; exec sleep 600'", timeout=2)
    assert {r.error for r in rs.values()} == {"timeout"}
    assert all("killed on the machine" in r.message for r in rs.values()), [r.message for r in rs.values()]
    pids = _pids(few, tmp_path)
    assert len(pids) == 4 and all(_gone(pid) for pid in pids.values())


def test_ctrl_c_interrupts_the_tree_and_kills_the_commands(tree, tmp_path):
    cluster, nodes = tree
    few = nodes[:4]
    main = threading.get_ident()

    def interrupt():
        until = time.monotonic() + 30
        while len(_pids(few, tmp_path)) < 4 and time.monotonic() < until:
            time.sleep(0.05)
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    started = time.monotonic()
    rs = few.run(f"sh -c 'echo $$ > {tmp_path}/$ECSHELL_MACHINE; exec sleep 600'")
    assert time.monotonic() - started < 30
    assert rs.interrupted and {r.error for r in rs.values()} == {"interrupted"}, [(r.status, r.message, r.output) for r in rs.values()]
    pids = _pids(few, tmp_path)
    assert len(pids) == 4 and all(_gone(pid) for pid in pids.values())


def test_what_the_tree_cannot_do_is_said(tree):
    cluster, nodes = tree
    # ClusterShell carries lines: a last line without a newline gets one
    assert nodes[:2].run("printf 'no newline'")[0].output == "no newline\n"
    assert nodes[:2].run("printf 'no newline'", transport="direct")[0].output == "no newline"
    with pytest.raises(ArgumentError, match="no stdin"):
        nodes.run("cat", input="x")
    # a command killed by a signal is seen through the gateway's ssh: exit 255, no signal name
    killed = nodes[:1].run("kill -TERM $$")[0]
    assert (killed.error, killed.exit_code, killed.signal) == ("exit", 255, None)
    assert nodes[:1].run("kill -TERM $$", transport="direct")[0].signal == "TERM"


def test_a_clustershell_topology_file_routes_instead_of_the_gateway_list(tree, tmp_path):
    cluster, nodes = tree
    root = socket.gethostname().split(".")[0]
    topology = tmp_path / "topology.conf"
    # gw-1 serves most of the nodes, gw-0 two of them; node-9 is not in the topology: it goes direct
    topology.write_text(f"[routes]\n{root}: gw-[0-1]\ngw-0: node-[0-1]\ngw-1: node-[2-8]\n")
    cluster.settings.gateways = []
    cluster.settings.topology_file = str(topology)
    rs = nodes.run("echo $ECSHELL_MACHINE")
    assert [r.via == "tree" for r in rs.values()] == [True] * 9 + [False]
    assert outcome(rs) == outcome(nodes.run("echo $ECSHELL_MACHINE", transport="direct"))


def test_a_target_behind_proxy_jump_goes_direct_unless_the_tree_is_asked_for(tree):
    cluster, nodes = tree
    bastion, inner = nodes[0], nodes[1]
    key = bastion.prototype.identity_files[0]
    with open(os.path.expanduser("~/.ssh/known_hosts"), "w") as f:
        for m in (bastion, inner):
            f.write(f"[127.0.0.1]:{m.port} {m.prototype.host_keys[0]}\n")
    with open(os.path.expanduser("~/.ssh/config"), "w") as f:
        f.write(f"Host bastion\n  HostName 127.0.0.1\n  Port {bastion.port}\n  IdentityFile {key}\n"
                f"Host inner\n  HostName 127.0.0.1\n  Port {inner.port}\n  IdentityFile {key}\n  ProxyJump bastion\n")
    cluster.attach(StaticFabric(["inner"], name="static"))
    behind = cluster["inner"]
    r = behind.run("echo $ECSHELL_MACHINE")["inner"]
    assert r.ok and r.output == "node-1\n" and r.via in DIRECT  # the gateways cannot follow a jump
    with pytest.raises(ArgumentError, match="ProxyJump"):
        behind.run("true", transport="tree")
