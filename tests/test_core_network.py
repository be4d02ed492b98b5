"""Faults beyond killing processes: a peer that vanishes, an unprivileged operator, streaming."""

import os
import pwd
import shutil
import subprocess
import threading
import time
import uuid

import pytest

from ecshell import Cluster, LocalFabric

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (iptables, useradd)")


def processes_carrying(text):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def iptables(*args):
    subprocess.run(["iptables", *args], check=True, capture_output=True)


@needs_root
@pytest.mark.skipif(shutil.which("iptables") is None, reason="iptables not installed")
def test_vanished_peer_is_noticed_in_seconds_and_reported_lost(cluster, machines):
    """Packets to and from one machine's port are dropped mid-command (the host vanished).

    paramiko's keepalive never notices this; TCP keepalive + TCP_USER_TIMEOUT
    on our socket must, within about dead_peer_timeout.
    """
    cluster.settings.dead_peer_timeout = 2.0
    (m,) = machines(1)
    m.close()
    assert m.run("true").ok  # a fresh connection with the 2 s setting
    rules = [["INPUT", "-i", "lo", "-p", "tcp", "--sport", str(m.port), "-j", "DROP"],
             ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(m.port), "-j", "DROP"]]

    def vanish():
        time.sleep(0.5)
        for rule in rules:
            iptables("-I", *rule)

    cutter = threading.Thread(target=vanish)
    cutter.start()
    try:
        r = m.run("echo before; sleep 60")
    finally:
        cutter.join()
        for rule in rules:
            subprocess.run(["iptables", "-D", *rule], capture_output=True)
    assert r.error == "lost", r
    print("vanished peer noticed after", r.duration)
    assert r.output == "before\n"
    assert r.duration < 30, "TCP_USER_TIMEOUT should end the wait long before the command would"
    # The command outlived its connection; the result names the token its processes carry.
    token = r.detail["run"]
    assert f"ECSHELL_RUN={token}" in r.message
    for pid in processes_carrying(f"ECSHELL_RUN={token}"):
        os.kill(pid, 9)


def test_streaming_callbacks_see_every_byte_as_it_arrives(machines):
    web = machines(3, name="web")
    seen = {m.name: [] for m in web}
    finished = []
    lock = threading.Lock()

    def on_output(machine, data):
        with lock:
            seen[machine.name].append((time.monotonic(), data))

    rs = web.run("echo first; sleep 0.4; printf 'second\\377'", on_output=on_output,
                 on_result=lambda r: finished.append((time.monotonic(), r.machine.name)))
    assert rs.all_ok
    for name, chunks in seen.items():
        assert b"".join(c for _, c in chunks) == rs[name].output_bytes == b"first\nsecond\xff"
        assert len(chunks) >= 2, "output must stream, not arrive at the end"
        assert chunks[-1][0] - chunks[0][0] > 0.2
    assert sorted(n for _, n in finished) == ["web-0", "web-1", "web-2"]


@pytest.fixture
def unprivileged_user():
    name = "ecsh" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", "--remove", name], capture_output=True)


@needs_root
def test_local_fabric_works_for_an_unprivileged_operator(cluster, machines, unprivileged_user):
    """The operator is not root: sshd runs as that user and logs in as that user.

    The child is forked after everything is imported (the interpreter's own
    directory may not be readable by the test user), then drops to the user.
    """
    machines(1)[0].run("true")  # loads every module the child needs
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the unprivileged operator
        code = 1
        try:
            os.close(reader)
            user = unprivileged_user
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            os.environ.update(HOME=user.pw_dir, ECSHELL_HOME=os.path.join(user.pw_dir, ".ecshell"))
            fabric = LocalFabric()
            c = Cluster(fabric)
            try:
                rs = c.launch(2, name="u").run("id -un; echo $ECSHELL_MACHINE")
                report = "|".join(rs[n].status + ":" + rs[n].output.replace("\n", " ") for n in rs)
                c.terminate("all")
                report += "|left:" + str(len(fabric.discover()))
            finally:
                c.close()
                fabric.terminate([p.id for p in fabric.discover()])
            os.write(writer, report.encode())
            code = 0
        except BaseException as exc:  # report, never return into pytest in the child
            os.write(writer, f"error: {exc!r}".encode())
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as f:
        report = f.read()
    _, status = os.waitpid(pid, 0)
    name = unprivileged_user.pw_name
    assert report == f"ok:{name} u-0 |ok:{name} u-1 |left:0", report
    assert os.waitstatus_to_exitcode(status) == 0
