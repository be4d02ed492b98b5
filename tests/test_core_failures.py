"""Every failure a fleet produces, on real sshd: each a named error kind, never an exception."""

import io
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from procs import remote_processes

from ecshell import Cluster, ErrorKind, LocalFabric, Shell, StaticFabric
from ecshell.procs import children_map, descendants
from ecshell.ssh.keys import generate_ed25519



@pytest.fixture(autouse=True, params=["auto", "channel"])
def command_path(request, monkeypatch):
    """Every test here runs twice: through the per-machine executor and over one channel per command."""
    monkeypatch.setenv("ECSHELL_EXECUTOR", request.param)
    return request.param


def session_processes(machine):
    """The sshd processes serving a local machine's connections (monitor and session child)."""
    listener = machine.prototype.extra["pid"]
    found = []
    for pid in descendants(listener, children_map()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"sshd"):
                    found.append(pid)
        except FileNotFoundError:
            pass
    return found


def busy_workers():
    """Names of ecshell worker threads currently inside a host's run (not idle in the pool)."""
    frames = sys._current_frames()
    busy = []
    for thread in threading.enumerate():
        if not thread.name.startswith("ecshell-worker"):
            continue
        frame = frames.get(thread.ident)
        while frame is not None:
            if frame.f_code.co_name == "run_one":
                busy.append(thread.name)
                break
            frame = frame.f_back
    return busy


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def static_cluster(entries, known_hosts=None, policy=None, identity=None, **settings):
    """A Cluster of existing hosts through an ssh_config file written for the test."""
    fabric = StaticFabric(entries, ssh_config=os.path.expanduser("~/.ssh/config"))
    if policy:
        settings["strict_host_key_checking"] = policy
    return Cluster(fabric, **settings)


def write_ssh_config(text):
    path = os.path.expanduser("~/.ssh/config")
    with open(path, "w") as f:
        f.write(text)
    return path


def known_hosts_line(machine, key=None):
    key = key or machine.prototype.host_keys[0]
    return f"[127.0.0.1]:{machine.port} {key}\n"


# -- connecting ---------------------------------------------------------------


def test_an_encrypted_key_no_agent_holds(isolated_home, machines, tmp_path):
    """From code: an auth result naming ssh-add. In the shell: its passphrase asked once, then it runs, once."""
    from ecshell.shell.session import Session

    (m,) = machines(1)
    with open(os.path.expanduser("~/.ssh/known_hosts"), "w") as f:
        f.write(known_hosts_line(m))
    key = os.path.expanduser("~/.ssh/locked_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "right horse", "-f", key], check=True)
    authorized = pathlib.Path(os.environ["ECSHELL_HOME"]) / "local" / m.id / "authorized_keys"
    with open(authorized, "a") as f:
        f.write(pathlib.Path(key + ".pub").read_text())
    write_ssh_config(f"Host box\n  HostName 127.0.0.1\n  Port {m.port}\n  IdentityFile {key}\n  IdentitiesOnly yes\n")
    ran = tmp_path / "ran"
    cluster = Cluster(StaticFabric(["box"]))
    try:
        r = cluster.run(f"echo once >> {ran}")[0]
        assert r.error == "auth" and f"ssh-add {key}" in r.message and r.detail["locked"] == [key], r
        asked = []
        answers = iter(["wrong horse", "right horse"])
        session = Session(cluster, ask=lambda question: False,
                          passphrase=lambda prompt: asked.append(prompt) or next(answers), stream=io.StringIO())
        rs = session.broadcast(cluster.machines, Shell(f"echo once >> {ran}"), live=False)
        assert rs.all_ok, rs
        assert len(asked) == 2 and key in asked[0] and "box" in asked[0]
        assert ran.read_text() == "once\n"
        assert cluster.run("true")[0].ok  # the key stays open for this process
    finally:
        cluster.close()


def test_refused_port_is_unreachable(isolated_home):
    port = free_port()
    cluster = static_cluster([f"127.0.0.1:{port}"])
    try:
        rs = cluster.run("true")
        r = rs[0]
        assert r.error == "unreachable" and not r.ok
        assert "refused" in r.message
    finally:
        cluster.close()


def test_unknown_host_name_is_unreachable(isolated_home):
    cluster = static_cluster(["no-such-host.invalid"])
    try:
        r = cluster.run("true")[0]
        assert r.error == "unreachable"
        assert "cannot resolve" in r.message
    finally:
        cluster.close()


def test_refused_key_is_auth(cluster, machines):
    (m,) = machines(1)
    m.close()
    _, other_public = generate_ed25519()
    with open(os.path.join(m.prototype.extra["directory"], "authorized_keys"), "w") as f:
        f.write(other_public + "\n")
    r = m.run("true")
    assert r.error == "auth"
    assert "refused the key" in r.message


def test_pinned_host_key_mismatch_is_refused(cluster, machines):
    a, b = machines(2)
    # Point a's prototype at b's address: the key offered is not the one pinned for a.
    a.prototype.port = b.port
    a._endpoint = None
    a.close()
    r = a.run("true")
    assert r.error == "hostkey"
    assert "does not match the key pinned" in r.message
    assert r.detail["reason"] == "changed"


def test_changed_host_key_in_known_hosts_is_refused_with_both_fingerprints(isolated_home, machines):
    (m,) = machines(1)
    _, impostor = generate_ed25519()
    known = os.path.expanduser("~/.ssh/known_hosts")
    with open(known, "w") as f:
        f.write(known_hosts_line(m, impostor))
    write_ssh_config(f"Host box\n  HostName 127.0.0.1\n  Port {m.port}\n"
                     f"  IdentityFile {m.prototype.identity_files[0]}\n")
    for policy in ("yes", "accept-new", "no", "ask"):
        cluster = static_cluster(["box"], policy=policy)
        try:
            r = cluster.run("true")[0]
        finally:
            cluster.close()
        assert r.error == "hostkey", policy
        assert "HOST KEY CHANGED" in r.message
        assert r.message.count("SHA256:") == 2
        assert f"ssh-keygen -f {known} -R '[127.0.0.1]:{m.port}'" in r.message


def test_unknown_host_key_follows_strict_host_key_checking(isolated_home, machines):
    (m,) = machines(1)
    known = os.path.expanduser("~/.ssh/known_hosts")
    write_ssh_config(f"Host box\n  HostName 127.0.0.1\n  Port {m.port}\n"
                     f"  IdentityFile {m.prototype.identity_files[0]}\n")

    for policy in ("yes", "ask"):
        cluster = static_cluster(["box"], policy=policy)
        try:
            r = cluster.run("true")[0]
        finally:
            cluster.close()
        assert r.error == "hostkey" and r.detail["reason"] == "unknown"
        assert "unknown host key" in r.message and "SHA256:" in r.message
        assert not os.path.exists(known)

    # The shell's "ask once" answers through the verifier carried by the result.
    r.detail["verifier"].accept("127.0.0.1", m.port, r.detail["offered"])
    cluster = static_cluster(["box"], policy="yes")
    try:
        assert cluster.run("echo trusted")[0].output == "trusted\n"
    finally:
        cluster.close()
    os.unlink(known)

    cluster = static_cluster(["box"], policy="accept-new")
    try:
        assert cluster.run("true")[0].ok
    finally:
        cluster.close()
    assert open(known).read() == known_hosts_line(m).rsplit(" ", 0)[0].strip() + "\n"


def test_ssh_config_without_override_defaults_to_ask(isolated_home, machines):
    (m,) = machines(1)
    write_ssh_config(f"Host box\n  HostName 127.0.0.1\n  Port {m.port}\n  User {m.user}\n"
                     f"  IdentityFile {m.prototype.identity_files[0]}\n"
                     f"  StrictHostKeyChecking accept-new\n"
                     f"  UserKnownHostsFile ~/.ssh/other_known_hosts\n")
    cluster = Cluster(StaticFabric(["box"]))
    try:
        r = cluster.run("echo $ECSHELL_MACHINE")[0]
        assert r.ok and r.output == "node-0\n"
        box = cluster.machine("box")
        assert (box.host, box.port, box.user) == ("127.0.0.1", m.port, m.user)
    finally:
        cluster.close()
    assert os.path.exists(os.path.expanduser("~/.ssh/other_known_hosts"))


def test_only_configured_keys_are_offered(isolated_home, machines):
    (m,) = machines(1)
    with open(os.path.expanduser("~/.ssh/known_hosts"), "w") as f:
        f.write(known_hosts_line(m))
    # A default identity exists, but the config names another (missing) one: nothing is sprayed.
    os.link(m.prototype.identity_files[0], os.path.expanduser("~/.ssh/id_ed25519"))
    write_ssh_config(f"Host box\n  HostName 127.0.0.1\n  Port {m.port}\n"
                     "  IdentityFile ~/.ssh/missing_key\n  IdentitiesOnly yes\n")
    cluster = Cluster(StaticFabric(["box"]))
    try:
        r = cluster.run("true")[0]
        assert r.error == "auth" and "no usable key" in r.message
    finally:
        cluster.close()
    # Without an IdentityFile, OpenSSH's default identities are used.
    write_ssh_config(f"Host box\n  HostName 127.0.0.1\n  Port {m.port}\n")
    cluster = Cluster(StaticFabric(["box"]))
    try:
        assert cluster.run("true")[0].ok
    finally:
        cluster.close()


def test_proxy_jump_through_another_machine(isolated_home, machines):
    jump, target = machines(2)
    key = jump.prototype.identity_files[0]
    with open(os.path.expanduser("~/.ssh/known_hosts"), "w") as f:
        f.write(known_hosts_line(jump) + known_hosts_line(target))
    write_ssh_config(f"Host bastion\n  HostName 127.0.0.1\n  Port {jump.port}\n  IdentityFile {key}\n"
                     f"Host inner\n  HostName 127.0.0.1\n  Port {target.port}\n  IdentityFile {key}\n"
                     "  ProxyJump bastion\n")
    cluster = Cluster(StaticFabric(["inner"]))
    try:
        r = cluster.run("echo $ECSHELL_MACHINE")[0]
        assert r.ok and r.output == "node-1\n"
        assert cluster.machine("inner").connection().via.endpoint.port == jump.port
    finally:
        cluster.close()


def test_hung_host_costs_at_most_its_connect_timeout(cluster, machines):
    hung, fine = machines(2)
    hung.close()
    listener = hung.prototype.extra["pid"]
    cluster.settings.connect_timeout = 1.5
    os.kill(listener, signal.SIGSTOP)
    try:
        started = time.monotonic()
        rs = cluster.run("echo up")
        elapsed = time.monotonic() - started
    finally:
        os.kill(listener, signal.SIGCONT)
    assert rs["node-1"].ok
    r = rs["node-0"]
    assert r.error == "timeout"
    assert "no SSH handshake" in r.message
    assert r.duration < 10, "the hung host must cost its connect timeout, not the default"
    assert elapsed < 10


HUNG_HOST = """
import os, signal, sys
from ecshell import Cluster, LocalFabric
fabric = LocalFabric()
cluster = Cluster(fabric, connect_timeout=1.0, **({"log_level": sys.argv[1]} if sys.argv[1:] else {}))
try:
    (hung,) = cluster.launch(1)
    cluster.close()
    listener = hung.prototype.extra["pid"]
    os.kill(listener, signal.SIGSTOP)
    try:
        print(cluster.run("true")[hung.name].error)
    finally:
        os.kill(listener, signal.SIGCONT)
finally:
    cluster.close()
    fabric.terminate([p.id for p in fabric.discover()])
"""


def test_library_tracebacks_stay_off_the_screen_unless_asked(isolated_home):
    """paramiko logs a hung host's banner error with a traceback; ecshell shows it only at log_level DEBUG.

    In a process of its own: pytest's log capture would hide what Python's
    last-resort handler prints.
    """
    def stderr_of(*level):
        done = subprocess.run([sys.executable, "-c", HUNG_HOST, *level], capture_output=True, text=True,
                              timeout=60)
        assert done.stdout.strip() == "timeout", done.stdout + done.stderr
        return done.stderr

    quiet = stderr_of()  # the default
    assert "Traceback" not in quiet and "paramiko" not in quiet, quiet
    assert "paramiko.transport" in stderr_of("DEBUG")  # asked for: everything shows


@pytest.mark.parametrize("executor", ["channel", "executor"])
def test_a_frozen_host_costs_its_command_timeout_plus_the_kill_grace(isolated_home, executor):
    """Every process of one sshd stopped (a frozen machine) after its connection (and executor) were up."""
    from ecshell.ssh.transport import KILL_TIMEOUT

    fabric = LocalFabric()
    cluster = Cluster(fabric, executor=executor)
    try:
        frozen, fine, other = cluster.launch(3)
        for _ in range(2):
            assert cluster.run("true").all_ok
        tree = children_map()
        stopped = [frozen.prototype.extra["pid"]] + descendants(frozen.prototype.extra["pid"], tree)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(2):  # the first finds the pooled connection silent; the second connects anew
                rs = cluster.run("echo hi", timeout=2)
                r = rs[frozen.name]
                assert rs[fine.name].ok and rs[other.name].ok
                assert r.error == "timeout", r
                assert r.duration < 2 + KILL_TIMEOUT + 1, r  # not a reconnect and a new 10 s handshake
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
    finally:
        cluster.close()
        fabric.terminate([p.id for p in fabric.discover()])


def test_a_host_without_sftp_fails_put_and_get_alone(cluster, machines, tmp_path):
    """No sftp subsystem on one machine: its put and get are its results; the others' transfers happen."""
    plain, fine = machines(2)
    config = pathlib.Path(os.environ["ECSHELL_HOME"]) / "local" / plain.id / "sshd_config"
    config.write_text("".join(line for line in config.read_text().splitlines(keepends=True)
                              if not line.startswith("Subsystem")))
    plain.close()
    os.kill(plain.prototype.extra["pid"], signal.SIGHUP)  # sshd re-reads its config
    time.sleep(0.5)
    payload = tmp_path / "payload"
    payload.write_text("x\n")
    for rs in (cluster.machines.put(str(payload), "/tmp/ecshell-nosftp"),
               cluster.machines.get("/etc/hostname", str(tmp_path / "got"))):
        assert rs[fine.name].ok, rs[fine.name]
        r = rs[plain.name]
        assert r.error == "unreachable" and "sftp subsystem" in r.message, r


# -- connections dying ---------------------------------------------------------


def test_pooled_connection_killed_between_commands_is_replaced_once(cluster, machines):
    (m,) = machines(1)
    assert m.run("true").ok and not m.run("true").reconnected
    connection = cluster.engine.pool.peek(m.endpoint)
    for pid in session_processes(m):
        os.kill(pid, signal.SIGKILL)
    # "Between commands": the death is seen before the next command goes out. (A command
    # sent in the instant before it is seen may have reached the machine: it is lost.)
    until = time.monotonic() + 5
    while connection.alive and time.monotonic() < until:
        time.sleep(0.01)
    r = m.run("echo again")
    assert r.ok and r.output == "again\n"
    assert r.reconnected
    assert not m.run("true").reconnected


def test_connection_killed_mid_command_is_lost_and_not_rerun(cluster, machines, tmp_path):
    (m,) = machines(1)
    counter = tmp_path / "runs"
    m.run("true")
    sessions = session_processes(m)

    def kill_later():
        time.sleep(0.5)
        for pid in sessions:
            os.kill(pid, signal.SIGKILL)

    threading.Thread(target=kill_later).start()
    r = m.run(f"echo started >> {counter}; echo partial; sleep 5")
    assert r.error == "lost"
    assert "not re-run" in r.message
    assert r.output == "partial\n"
    assert counter.read_text() == "started\n"
    assert m.run("echo pool works").ok


def test_command_timeout_kills_it_on_the_machine(cluster, machines):
    fleet = machines(3)
    token = f"ecshell-timeout-{fleet[0].id}"
    rs = fleet.run(f"echo begun; sleep 300 # {token}\n", timeout=1)
    for r in rs.results():
        assert r.error == "timeout"
        assert r.output == "begun\n"
        assert "killed on the machine" in r.message
    assert remote_processes(token) == []
    # the children in the process group died too
    rs = fleet.run(f"(sleep 301 # {token}-child\n) & sleep 302 # {token}-parent\n", timeout=1)
    assert all(r.error == "timeout" for r in rs.results())
    deadline = time.monotonic() + 3
    while remote_processes(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert remote_processes(token) == []
    assert fleet.run("echo still usable").all_ok


def test_total_timeout_stops_the_broadcast(cluster, machines):
    fleet = machines(4)
    token = f"ecshell-total-{fleet[0].id}"
    cluster.settings.fanout = 2
    rs = fleet.run(f"sleep 300 # {token}\n", total_timeout=1.0)
    assert len(rs) == 4
    assert {r.error for r in rs.results()} == {ErrorKind.TIMEOUT}
    assert sum("not started" in r.message for r in rs.results()) == 2
    assert remote_processes(token) == []


def test_ctrl_c_during_a_fifty_host_broadcast(cluster, machines):
    fleet = machines(50)
    token = f"ecshell-ctrlc-{fleet[0].id}"
    fast = fleet["node-[0-9]"]
    command = f'case $ECSHELL_MACHINE in node-[0-9]) echo quick;; *) echo slow; sleep 300 # {token}\n esac'

    def interrupt():
        time.sleep(1.5)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt).start()
    started = time.monotonic()
    rs = fleet.run(command)
    returned_after = time.monotonic() - started
    assert rs.interrupted
    assert len(rs) == 50
    for m in fleet:
        r = rs[m.name]
        if m in fast:
            assert r.ok and r.output == "quick\n"
        else:
            assert r.error == "interrupted", r
            assert r.output in ("slow\n", "")
    assert returned_after < 60
    assert remote_processes(token) == []
    assert busy_workers() == []
    again = fleet.run("echo after")
    assert again.all_ok and not again.interrupted


def test_ctrl_c_while_connecting_never_starts_the_command(cluster, machines, tmp_path):
    slow, fast = machines(2)
    slow.close()
    listener = slow.prototype.extra["pid"]
    ran = tmp_path / "ran"
    os.kill(listener, signal.SIGSTOP)  # its handshake waits until SIGCONT

    def interrupt_then_resume():
        time.sleep(0.7)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while node-0 is still connecting
        time.sleep(0.5)
        os.kill(listener, signal.SIGCONT)  # the connection completes within the cancel grace

    threading.Thread(target=interrupt_then_resume).start()
    try:
        rs = cluster.run(f"echo $ECSHELL_MACHINE >> {ran}; sleep 30")
    finally:
        os.kill(listener, signal.SIGCONT)
    assert rs.interrupted
    assert rs["node-0"].error == "interrupted"
    assert "not run" in rs["node-0"].message
    assert rs["node-1"].error == "interrupted"
    time.sleep(0.3)
    assert ran.read_text() == "node-1\n"
