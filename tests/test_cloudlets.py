"""Cloudlets on real sandboxes: bubblewrap on LocalFabric machines, as root on this computer.

Every sandbox a test starts is a real bwrap holding real namespaces over a
real overlay mount; the cluster fixture terminates the machines afterwards,
which kills their sandboxes too (LocalFabric stops a machine's daemons), so
nothing outlives a test, passed or failed. ``leftovers`` checks it.
"""

import os
import shutil
import subprocess
import sys

import pytest

from ecshell import Cluster, LocalFabric
from ecshell.cloudlets import Cloudlet, DirectoryStore, runtime_recipe
from ec2_support import aws, moto_url  # noqa: F401
from procs import running
from test_terminal import ecshell_command, terminal  # noqa: F401

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="cloudlets mount overlays and make namespaces: root only"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (./bootstrap.sh --install-only)"),
]


@pytest.fixture
def fleet(cluster):
    """``fleet(hosts)``: a store machine and a free list of ``hosts`` warm cloudlet hosts, configured."""

    def make(hosts=2, slots=8):
        store = cluster.launch(1, name="store")[0]
        pool = cluster.free_list("cloudlets", size=hosts, recipe=runtime_recipe())
        assert len(pool.fill()) == hosts, pool.problems
        cluster.cloudlets.configure(hosts=pool, store=DirectoryStore(store, store_path(store)), slots=slots)
        return pool

    return make


def store_path(machine):
    """The store's directory: inside the store machine's own directory (its login home is this computer's)."""
    return os.path.join(machine.prototype.extra["directory"], "cloudlets")


def sandbox_traces(cloudlet):
    """What a running cloudlet holds on its host: its pids (holder, pid 1) and namespace links."""
    result = cloudlet.machine.run('d="$ECSHELL_STATE_DIR/cloudlets/' + cloudlet.owner + '"; '
                                  'cat "$d/holder" "$d/child"; echo "$d"')
    holder, child_line, directory = result.output.splitlines()
    child = int(child_line.split()[0])
    namespaces = {os.readlink(f"/proc/{child}/ns/{kind}") for kind in ("mnt", "pid", "uts", "ipc", "user")}
    namespaces.add(os.readlink(f"/proc/{holder}/ns/mnt"))  # where the overlay is mounted
    return {"pids": [int(holder), child], "namespaces": namespaces, "directory": directory}


def leftovers(traces):
    """Whatever of those traces still exists on this computer: running pids, and processes in their
    namespaces or seeing their overlay mount.

    Linux hands a freed namespace's number to the next namespace made (by
    anyone on this computer), so a process counts only if its mount table
    shows the sandbox's directory (sandboxes started since have their own).
    """
    found = [f"pid {pid} runs" for t in traces for pid in t["pids"] if running(pid)]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/mountinfo") as f:
                mounts = f.read()
            held = {os.readlink(f"/proc/{entry}/ns/{kind}") for kind in ("mnt", "pid", "uts", "ipc", "user")}
        except OSError:
            continue
        for t in traces:
            if t["directory"] + "/" in mounts:
                found.append(f"pid {entry} sees the overlay of {t['directory']}"
                             + (f" (namespaces {sorted(held & t['namespaces'])})" if held & t["namespaces"] else ""))
    return found


def test_two_users_on_one_machine_are_isolated(cluster, fleet):
    fleet(hosts=1)
    alice, bob = cluster.cloudlet("alice"), cluster.cloudlet("bob")
    assert isinstance(alice, Cloudlet) and alice.machine.name == bob.machine.name  # one host, two sandboxes
    traces = [sandbox_traces(alice), sandbox_traces(bob)]

    # hostname, and root inside (in a user namespace of its own)
    assert alice.run("uname -n").output == "alice\n"
    assert bob.run("hostname").output == "bob\n"
    assert alice.run("id -u; pwd").output == "0\n/root\n"
    # a new cloudlet's /root and /home are its own (empty), and the machine's SSH host keys cannot be read
    assert alice.run("ls -A /root /home").output == "/home:\n\n/root:\n"
    host_keys = [f for f in os.listdir("/etc/ssh") if f.startswith("ssh_host_") and f.endswith("_key")]
    for key in host_keys:
        assert alice.run(f"cat /etc/ssh/{key} 2>/dev/null | wc -c").output == "0\n"
    # processes: alice's daemon keeps running between her commands, and bob never sees it
    assert alice.run("nohup python3 -c 'import time; time.sleep(600)' alice-daemon >/dev/null 2>&1 &").ok
    assert "alice-daemon" in alice.run("ps -eo args").output
    bobs = bob.run("ps -eo pid,args").output
    assert "alice-daemon" not in bobs and len(bobs.splitlines()) < 8, bobs
    # files, /tmp, and the host's own files are each one's own
    token = os.urandom(4).hex()
    assert alice.run(f"echo {token} > /root/secret-{token} && echo {token} > /tmp/scratch-{token}").ok
    assert alice.run(f"cat /root/secret-{token} /tmp/scratch-{token}").output == f"{token}\n{token}\n"
    assert not bob.run(f"cat /root/secret-{token}").ok
    assert not bob.run(f"cat /tmp/scratch-{token}").ok
    assert not os.path.exists(f"/root/secret-{token}") and not os.path.exists(f"/tmp/scratch-{token}")
    # the host's state directory (where both layers are) is hidden inside
    assert os.path.isdir(traces[0]["directory"] + "/upper")
    listed = bob.run(f"ls -A {traces[0]['directory']} {os.path.dirname(traces[0]['directory'])} 2>/dev/null")
    assert listed.output == "" and not bob.run(f"test -e {traces[0]['directory']}/upper").ok
    # results fold like machines'
    both = cluster["cloudlet:*"]
    assert both.names == ["cloudlet:alice", "cloudlet:bob"]
    groups = both.run("cat /etc/debian_version").groups()
    assert len(groups) == 1 and groups[0].machines.names == ["cloudlet:alice", "cloudlet:bob"]

    running_now = leftovers(traces)  # the check sees running sandboxes: pids, namespaces, the overlay
    assert len(running_now) >= 4 and any("namespaces" in found for found in running_now), running_now
    alice.release()
    bob.release()
    assert leftovers(traces) == []
    assert cluster.cloudlets.scan() == {}


def test_saved_state_follows_the_user_when_her_machine_is_terminated(cluster, fleet, tmp_path):
    fleet(hosts=2)
    alice = cluster.cloudlet("alice")
    first = alice.machine.name
    traces = [sandbox_traces(alice)]
    assert alice.run("mkdir -p /home/alice && echo kept > /home/alice/notes && rm /etc/motd").ok
    note = tmp_path / "put.txt"
    note.write_text("through put\n")
    assert alice.put(str(note), "/root/put.txt").ok
    assert alice.mark("configured").ok  # a marker inside the cloudlet travels with its state
    saved = alice.save()
    assert saved.machine == first and saved.size > 0
    assert alice.run("echo after-save > /home/alice/unsaved").ok

    cluster.terminate(alice.machine)  # the host is gone, with everything not saved
    assert leftovers(traces) == []

    again = cluster.cloudlet("alice")
    assert again.machine.name != first
    assert "gone" in again.notice and "changes made after that save are lost" in again.notice
    assert again.run("cat /home/alice/notes").output == "kept\n"
    assert not again.run("test -e /etc/motd").ok  # a deletion is state too (an overlay whiteout)
    assert not again.run("test -e /home/alice/unsaved").ok
    assert "configured" in again.markers()
    got = again.get("/root/put.txt", str(tmp_path / "back"))
    assert got.ok and (tmp_path / "back" / "cloudlet:alice" / "put.txt").read_text() == "through put\n"

    # a new shell finds it on its machine, from the markers there
    with Cluster(LocalFabric()) as other:
        other.cloudlets.configure(store=DirectoryStore(other.machine("store-0"), store_path(other.machine("store-0"))))
        found = other.cloudlets.find("alice")
        assert found is not None and found.machine.name == again.machine.name
        assert other.cloudlet("alice").run("cat /home/alice/notes").output == "kept\n"
    traces.append(sandbox_traces(again))
    cluster.terminate("all")
    assert leftovers(traces) == []


def test_move_carries_state_and_processes_stop(cluster, fleet):
    pool = fleet(hosts=2)
    alice = cluster.cloudlet("alice")
    traces = [sandbox_traces(alice)]
    assert alice.run("echo moving > /root/m && nohup sleep 600 >/dev/null 2>&1 &").ok
    target = next(m for m in pool.scan()["free"] if m.name != alice.machine.name)
    moved = alice.move(target)
    assert moved.machine.name == target.name
    assert leftovers(traces) == []  # the old sandbox and its sleep are gone
    assert moved.run("cat /root/m").output == "moving\n"
    assert "sleep 600" not in moved.run("ps -eo args").output
    traces.append(sandbox_traces(moved))
    moved.release()
    assert leftovers(traces) == []


def test_two_shells_placing_one_user_end_with_one_cloudlet(cluster, fleet):
    fleet(hosts=2)
    script = (
        "import sys\n"
        "from ecshell import Cluster, LocalFabric\n"
        "from ecshell.cloudlets import DirectoryStore\n"
        "c = Cluster(LocalFabric())\n"
        "store = c.machine('store-0')\n"
        "path = store.prototype.extra['directory'] + '/cloudlets'\n"
        "c.cloudlets.configure(hosts=c.free_list('cloudlets', size=2), store=DirectoryStore(store, path))\n"
        "print(c.cloudlet('carol').machine.name)\n"
        "c.close()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), os.environ.get("PYTHONPATH")) if p))
    shells = [subprocess.Popen([sys.executable, "-c", script], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [s.communicate(timeout=120) for s in shells]
    assert all(s.returncode == 0 for s in shells), outs
    hosts = {out.strip() for out, _ in outs}
    assert len(hosts) == 1, outs  # both shells got the same cloudlet
    placed = [m for m, marks in cluster.machines.reachable().markers().items() if marks and "cloudlet.carol" in marks]
    assert placed == list(hosts)
    status = cluster.machine(placed[0]).run('ls "$ECSHELL_STATE_DIR/cloudlets"').output.split()
    assert status == ["carol"]


def test_bad_names_are_refused_before_anything_runs(cluster):
    for bad in ("Alice", "al ice", "../x", "a" * 40, "", "x;rm -rf /", "-x"):
        with pytest.raises(Exception, match="lower-case letters"):
            cluster.cloudlet(bad)


def test_s3_store_keeps_state_and_locks_on_a_moto_server(cluster, fleet, aws):
    import boto3

    from ecshell.cloudlets import S3Store

    s3 = boto3.session.Session(region_name="us-east-1").client("s3", endpoint_url=aws)
    s3.create_bucket(Bucket="cloudlets")
    fleet(hosts=2)
    store = S3Store("cloudlets", region="us-east-1", endpoint_url=aws, lock_timeout=0.5)
    cluster.cloudlets.configure(store=store)
    alice = cluster.cloudlet("alice")
    assert alice.run("echo in-s3 > /root/kept").ok
    saved = alice.release()
    assert store.users() == ["alice"] and store.read("alice").saved.size == saved.size
    assert s3.head_object(Bucket="cloudlets", Key="cloudlets/alice.tar")["ContentLength"] == saved.size
    # the lock is one object created only if absent: a second taker waits, then is refused
    with store.lock("alice"):
        with pytest.raises(Exception, match="being placed by another shell"):
            with store.lock("alice"):
                pass
    assert "Contents" not in s3.list_objects_v2(Bucket="cloudlets", Prefix="cloudlets/locks/")
    again = cluster.cloudlet("alice")
    assert again.run("cat /root/kept").output == "in-s3\n"
    assert again.notice == ""  # released properly: nothing was lost
    again.release()


def test_a_timed_out_command_is_killed_inside_the_cloudlet(cluster, fleet):
    fleet(hosts=1)
    alice = cluster.cloudlet("alice")
    late = alice.run("sleep 97; echo never", timeout=1)
    assert late.error == "timeout"
    assert "sleep 97" not in alice.run("ps -eo args").output
    alice.release()


def test_login_gives_an_interactive_shell_inside(cluster, fleet):
    import pty
    import select
    import threading
    import time

    from ecshell.cloudlets.login import login

    fleet(hosts=1)
    alice = cluster.cloudlet("alice")
    master, slave = pty.openpty()  # a real terminal, as the operator's would be
    status = {}
    thread = threading.Thread(target=lambda: status.setdefault("exit", login(alice, stdin=slave, stdout=slave)),
                              daemon=True)
    thread.start()
    seen, typed, deadline = b"", False, time.monotonic() + 30
    try:
        while thread.is_alive() and time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                seen += os.read(master, 65536)
            if not typed and b"# " in seen:  # typed once the prompt shows, as a person would
                os.write(master, b"echo inside-$(uname -n)-$(id -u); exit 7\r")
                typed = True
        thread.join(5)
    finally:
        os.close(master)
        os.close(slave)
    assert b"inside-alice-0" in seen, seen
    assert status.get("exit") == 7, seen
    alice.release()


def test_cloudlet_magic_places_lists_and_cluster_shows_it_under_its_machine(ip_with_fleet):
    ip, cluster = ip_with_fleet
    placed = ip.run_line_magic("cloudlet", "alice")
    assert placed.name == "cloudlet:alice"
    listed = str(ip.run_line_magic("cloudlet", ""))
    assert "cloudlet:alice" in listed and placed.machine.name in listed
    table = str(ip.run_line_magic("cluster", "")).splitlines()
    row = next(i for i, line in enumerate(table) if line.startswith(placed.machine.name))
    assert table[row + 1].strip().startswith("cloudlet:alice")
    result = ip.run_line_magic("on", "cloudlet:alice uname -n")
    assert result["cloudlet:alice"].output == "alice\n"
    saved = ip.run_line_magic("cloudlet", "alice --release")
    assert saved.user == "alice"
    assert "no cloudlets running" in str(ip.run_line_magic("cloudlet", ""))


@pytest.fixture
def ip_with_fleet(isolated_home):
    from ipython_support import loaded_shell

    try:
        with loaded_shell() as shell:
            cluster = shell.user_ns["cluster"]
            store = cluster.launch(1, name="store")[0]
            pool = cluster.free_list("cloudlets", size=1, recipe=runtime_recipe())
            pool.fill()
            cluster.cloudlets.configure(hosts=pool, store=DirectoryStore(store, store_path(store)))
            yield shell, cluster
    finally:
        fabric = LocalFabric()
        fabric.terminate([p.id for p in fabric.discover()])


def test_a_stopped_sandbox_starts_again_over_its_layer_and_a_lost_layer_comes_from_the_store(cluster, fleet):
    from ecshell.cloudlets.runtime import RuntimeOp

    fleet(hosts=1)
    alice = cluster.cloudlet("alice")
    assert alice.run("echo saved > /root/a").ok
    alice.save()
    assert alice.run("echo unsaved > /root/b && nohup sleep 600 >/dev/null 2>&1 &").ok
    # the sandbox dies (as in a reboot of its host); its layer stays on the host
    assert alice.machine.execute(RuntimeOp("stop", {"name": "alice"})).ok
    assert not alice.run("true").ok
    again = cluster.cloudlet("alice")
    assert "had stopped" in again.notice
    assert again.run("cat /root/a /root/b").output == "saved\nunsaved\n"
    assert "sleep 600" not in again.run("ps -eo args").output
    # the layer is lost but the marker stays: the last save is placed instead
    assert alice.machine.execute(RuntimeOp("stop", {"name": "alice", "remove": True})).ok
    third = cluster.cloudlet("alice")
    assert third.run("cat /root/a").output == "saved\n"
    assert not third.run("test -e /root/b").ok
    assert "no longer holds it" in third.notice
    third.release()


def test_paths_a_machine_reports_are_taken_only_in_their_expected_form():
    from ecshell.cloudlets.runtime import reported_path

    good = {"archive": "/srv/state/cloudlets/alice/save.tar"}
    assert reported_path(good, "archive", "alice", "save.tar") == good["archive"]
    for bad in ("/srv/state/cloudlets/bob/save.tar", "relative/cloudlets/alice/save.tar",
                "/srv/../etc/cloudlets/alice/save.tar", "/srv/state/cloudlets/alice/save.tar\n", None, 3):
        with pytest.raises(Exception, match="refused"):
            reported_path({"archive": bad}, "archive", "alice", "save.tar")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (bootstrap.sh installs it)")
def test_cloudlet_login_in_a_real_terminal(terminal, isolated_home, tmp_path):
    """``%cloudlet alice --login`` in ecshell on tmux: a shell inside, resized with the window, and back."""
    env = {"HOME": os.environ["HOME"], "ECSHELL_HOME": os.environ["ECSHELL_HOME"], "TERM": "xterm-256color",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    if os.environ.get("PYTHONPATH"):  # a worktree run: the shell imports the same ecshell as this test
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    setup = tmp_path / "setup.py"
    setup.write_text(
        "from ecshell.cloudlets import DirectoryStore, runtime_recipe\n"
        "store = cluster.launch(1, name='store')[0]\n"
        "hosts = cluster.free_list('cloudlets', size=1, recipe=runtime_recipe()); hosts.fill()\n"
        f"cluster.cloudlets.configure(hosts=hosts, store=DirectoryStore(store, {str(tmp_path / 'store')!r}))\n")
    terminal.start(ecshell_command() + ["--fabric", "local"], env)
    _, at = terminal.wait_for(r"In \[1\]:")
    terminal.type(f"%run -i {setup}")
    _, at = terminal.wait_for(r"In \[2\]:", at)
    terminal.type("%cloudlet alice --login")
    _, at = terminal.wait_for(r"root@alice:~# ", at)
    terminal.type("echo in-$(hostname); tput cols")
    _, at = terminal.wait_for(r"in-alice\s+160\s+root@alice:~# ", at)
    terminal.tmux("resize-window", "-x", "100", "-y", "40")
    terminal.type("tput cols; exit 3")
    _, at = terminal.wait_for(r"\b100\b.*?exited with status 3.*?In \[3\]:", at)
    terminal.type("6*7")  # the local terminal is IPython's again
    terminal.wait_for(r"Out\[3\]: 42", at)


def test_without_hosts_or_store_the_message_says_what_to_configure(cluster, machines):
    from ecshell import ArgumentError

    with pytest.raises(ArgumentError, match=r"cluster.cloudlets.configure\(store=DirectoryStore"):
        cluster.cloudlet("alice")
    store = machines(1, name="store")[0]
    cluster.cloudlets.configure(store=DirectoryStore(store, store_path(store)))
    with pytest.raises(ArgumentError, match=r"no cloudlet hosts: cluster.cloudlets.configure\(hosts="):
        cluster.cloudlet("alice")
    with pytest.raises(ArgumentError, match="slots is how many"):
        cluster.cloudlets.configure(slots=0)
    assert not store.run(f"ls {store_path(store)}/*.json 2>/dev/null").output  # nothing was placed
