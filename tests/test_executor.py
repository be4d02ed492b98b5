"""The persistent executor: broadcast behaviours on both paths, identical results.

The machines are local sshd, so "on the machine" is this host: process
checks use /proc and pgrep for a marker string unique to each test.
"""

import contextlib
import hashlib
import os
import pathlib
import shutil
import signal
import sys
import threading
import time

import pytest
from conftest import _stop_everything
from procs import remote_processes, running

from ecshell import Cluster, LocalFabric
from ecshell.ssh import executor as executor_module


@pytest.fixture(params=["executor", "channel"])
def path(request, cluster):
    cluster.settings.executor = request.param
    return request.param


def executor_of(machine):
    return executor_module.peek(machine.connection())


def ready_executor(machine, limit=10.0):
    """The machine's executor once its background start (``auto``) is over, else None."""
    until = time.monotonic() + limit
    while time.monotonic() < until:
        executor = executor_of(machine)
        if executor is not None and executor.alive:
            return executor
        if executor_module.slot(machine.connection()).unavailable:
            return None
        time.sleep(0.02)
    return None


def gone(token, limit=10.0):
    """Wait (up to ``limit`` seconds) until no process carries ``token``; what is left."""
    until = time.monotonic() + limit
    while remote_processes(token) and time.monotonic() < until:
        time.sleep(0.05)
    return remote_processes(token)


def sleeper(token, seconds=300):
    """A command that sleeps in a process whose command line carries ``token``
    (bash replaces itself with the last command of a ``-c`` string, comment and all)."""
    return f"sh -c 'sleep {seconds}; exit 0' {token}"


def sleeping(token):
    """A pgrep pattern for the sleepers of :func:`sleeper` carrying ``token``, and nothing else
    (the shell that starts one has the token in its command line too, before it prints)."""
    return f"^sh -c sleep .* {token}"


def when_running(token, count, action, limit=30.0):
    """A started thread that calls ``action()`` once ``count`` processes carry ``token``."""

    def watch():
        until = time.monotonic() + limit
        while time.monotonic() < until:
            if len(remote_processes(token)) >= count:
                action()
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def one_machine(environment, **options):
    """``(cluster, machine)``: one LocalFabric machine whose sshd also sets ``environment``; all stopped after."""
    fabric = LocalFabric(environment={"SHLVL": "1", **environment})
    cluster = Cluster(fabric, **options)
    try:
        (m,) = cluster.launch(1)
        yield cluster, m
    finally:
        cluster.close()
        _stop_everything(fabric)


def test_exit_codes_combined_order_and_exact_bytes(path, machines):
    fleet = machines(2)
    rs = fleet.run("echo out; sleep 0.05; echo err >&2; sleep 0.05; printf '\\377\\000\\303(end'; "
                   "exit $(( ${ECSHELL_MACHINE#node-} + 3 ))")
    assert [rs[n].exit_code for n in rs] == [3, 4]
    assert all(rs[n].error == "exit" for n in rs)
    assert rs["node-0"].output_bytes == b"out\nerr\n\xff\x00\xc3(end"
    assert rs["node-0"].output == "out\nerr\n\ufffd\x00\ufffd(end"
    assert fleet.run("true").all_ok
    if path == "executor":
        assert all(executor_of(m) is not None and executor_of(m).alive for m in fleet)
    else:
        assert all(executor_of(m) is None for m in fleet)


def test_stdin_input_and_eof(path, machines):
    (m,) = machines(1)
    assert m.run("cat; echo done").output == "done\n"
    assert m.run("cat", input=b"a\x00b\xff\n").output_bytes == b"a\x00b\xff\n"
    big = os.urandom(2 * 1024 * 1024 + 7)
    r = m.run("sha256sum; wc -c </dev/null", input=big)
    assert r.ok and r.output.split()[0] == hashlib.sha256(big).hexdigest()
    # a command that does not read its input still finishes
    assert m.run("echo ignored", input=big).output == "ignored\n"


def test_timeout_kills_the_whole_process_group(path, machines):
    fleet = machines(2)
    token = f"ecshell-x7-timeout-{path}-{fleet[0].id}"
    seen = threading.Event()
    when_running(sleeping(token), 4, seen.set)
    rs = fleet.run(f"{sleeper(token + '-child')} & echo begun; {sleeper(token)}", timeout=1.5)
    assert seen.is_set()
    for r in rs.results():
        assert r.error == "timeout", r
        assert r.output == "begun\n"
        assert "killed on the machine" in r.message
        assert len(r.detail["run"]) == 16
    assert gone(token) == []
    assert fleet.run("echo still usable").all_ok


def test_ctrl_c_interrupts_keeps_what_arrived_and_kills(path, machines):
    fleet = machines(3)
    token = f"ecshell-x7-ctrlc-{path}-{fleet[0].id}"
    command = (f'case $ECSHELL_MACHINE in node-0) echo quick;; '
               f'*) echo slow; {sleeper(token)};; esac')
    fired, quick_done = threading.Event(), threading.Event()

    def interrupt():
        if quick_done.wait(30):  # node-0's answer is in: it must be kept
            fired.set()
            os.kill(os.getpid(), signal.SIGINT)

    def on_result(result):
        if result.name == "node-0":
            quick_done.set()

    watcher = when_running(sleeping(token), 2, interrupt)
    rs = fleet.run(command, on_result=on_result)
    watcher.join()
    assert fired.is_set()
    assert rs.interrupted
    assert rs["node-0"].ok and rs["node-0"].output == "quick\n"
    for name in ("node-1", "node-2"):
        assert rs[name].error == "interrupted", rs[name]
        assert rs[name].output == "slow\n"
    assert gone(token) == []
    assert fleet.run("echo pool works").all_ok


def test_executor_killed_mid_command_is_lost_then_restarted_once(cluster, machines, tmp_path):
    cluster.settings.executor = "auto"
    (m,) = machines(1)
    assert m.run("true").ok and m.run("true").ok  # auto starts the executor with a second command
    counter = tmp_path / "runs"
    connection = m.connection()
    for round_ in (1, 2):
        executor = ready_executor(m)  # auto starts it in the background
        assert executor is not None and executor.alive
        token = f"ecshell-x7-lost{round_}-{m.id}"
        when_running(sleeping(token), 1, lambda pid=executor.pid: os.kill(pid, signal.SIGKILL))
        r = m.run(f"echo started >> {counter}; echo partial; {sleeper(token)}")
        assert r.error == "lost", r
        assert "not re-run" in r.message and "executor" in r.message
        assert r.output == "partial\n"
        assert counter.read_text() == "started\n" * round_
        assert gone(token) == [], "the watcher kills a dead executor's commands"
        assert not running(executor.pid)
        again = m.run("echo again")
        assert again.ok and again.output == "again\n" and not again.reconnected
        assert m.connection() is connection
        if round_ == 1:
            assert ready_executor(m).pid != executor.pid
    # died twice: this connection now uses one channel per command
    assert not executor_of(m).alive
    assert "died 2 times" in executor_module.slot(connection).unavailable
    assert m.run("echo channel").output == "channel\n"


def test_connection_killed_mid_command_is_lost_and_not_rerun(path, machines, tmp_path):
    from ecshell.procs import children_map, descendants

    (m,) = machines(1)
    assert m.run("true").ok
    listener = m.prototype.extra["pid"]
    sessions = [pid for pid in descendants(listener, children_map())
                if open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"sshd")]
    assert sessions
    counter = tmp_path / "runs"
    token = f"ecshell-x7-connlost-{path}-{m.id}"

    def kill_sessions():
        for pid in sessions:
            os.kill(pid, signal.SIGKILL)

    when_running(sleeping(token), 1, kill_sessions)
    try:
        r = m.run(f"echo started >> {counter}; echo partial; {sleeper(token, 20)}")
        assert r.error == "lost" and "not re-run" in r.message, r
        assert r.output == "partial\n"
        assert counter.read_text() == "started\n"
        if path == "executor":
            assert gone(token) == [], "the executor's watcher kills its commands when sshd goes"
        assert m.run("echo pool works").ok
    finally:
        # On the channel path the command outlives its connection (OpenSSH without a PTY).
        for pid in remote_processes(token):
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)  # its group: the sleep too
            except ProcessLookupError:
                pass


def test_executor_channel_closed_kills_its_commands(cluster, machines):
    cluster.settings.executor = "executor"
    (m,) = machines(1)
    assert m.run("true").ok
    executor = executor_of(m)
    token = f"ecshell-x7-close-{m.id}"
    when_running(sleeping(token), 2, executor.close)
    r = m.run(f"{sleeper(token + '-child')} & {sleeper(token)}")
    assert r.error == "lost"
    assert gone(token) == []
    until = time.monotonic() + 10
    while running(executor.pid) and time.monotonic() < until:
        time.sleep(0.05)
    assert not running(executor.pid)
    assert m.run("echo restarted").ok


def test_machine_without_python3_uses_the_channel_path(isolated_home, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "bash", "cat", "echo", "printf", "sleep"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    with one_machine({"PATH": str(bin_dir)}, executor="auto") as (cluster, m):
        for _ in range(2):  # the second command tries to start the executor
            r = m.run("echo $PATH; exit 3")
            assert r.exit_code == 3 and r.output == f"{bin_dir}\n"
        assert ready_executor(m) is None and executor_of(m) is None
        assert "no python3" in executor_module.slot(m.connection()).unavailable
        cluster.settings.executor = "executor"
        r = m.run("echo never")
        assert r.error == "unreachable" and "no python3" in r.message
        assert "executor = 'auto'" in r.message


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_fifty_megabytes_exact_bounded_and_a_stalled_reader_stalls_nothing_else(cluster, machines):
    cluster.settings.executor = "executor"
    (m,) = machines(1)
    fleet = cluster.machines
    assert m.run("true").ok
    line = b"ecshell executor fifty megabytes\n"
    size = 50_000_000
    expected = hashlib.sha256((line * (size // len(line) + 1))[:size]).hexdigest()
    reading, release = threading.Event(), threading.Event()
    peak, sampling = [_rss()], threading.Event()
    base = peak[0]

    def slow_reader(machine, data):
        reading.set()
        release.wait(60)

    def sample():
        while not sampling.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    results = []
    big = threading.Thread(target=lambda: results.append(fleet.run(
        f"yes '{line.decode().strip()}' | head -c {size}", on_output=slow_reader)))
    big.start()
    try:
        assert reading.wait(30)
        # The big command's reader is stuck; the same executor still serves another command.
        other = m.run("echo not stalled")
        assert other.ok and other.output == "not stalled\n"
    finally:
        release.set()
        big.join(120)
    sampling.set()
    sampler.join()
    (rs,) = results
    r = rs[m.name]
    assert r.ok and r.output_size == size
    assert r.output_path is not None  # spilled to disk, not held in memory
    digest = hashlib.sha256()
    with open(r.output_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    assert digest.hexdigest() == expected
    assert peak[0] - base < 30_000_000, f"memory grew by {(peak[0] - base) / 1e6:.1f} MB"


IDENTICAL = [
    ("env | grep -v ^ECSHELL_RUN= | sort; echo ${#ECSHELL_RUN}", None, None),
    ("pwd; echo $0 $-; umask; ulimit -a; trap; [ -t 0 ] || echo no tty", None, None),
    ("grep -E '^(Sig(Pnd|Blk|Ign|Cgt)|NoNewPrivs|Cap)' /proc/self/status; ls /proc/$$/fd", None, None),
    ("exit 255", None, None),
    ("echo before; kill -TERM $$", None, None),
    ("printf '\\000\\377\\376x'; echo err >&2; exit 1", None, None),
    ("cat; echo; cat", b"in\x00put\xff", None),
    ("echo begun; sleep 30", None, 1),
]


def test_identical_resultsets_on_both_paths(cluster, machines):
    fleet = machines(3)
    for command, given, timeout in IDENTICAL:
        seen = {}
        for mode in ("channel", "executor"):
            cluster.settings.executor = mode
            rs = fleet.run(command, input=given, timeout=timeout)
            seen[mode] = [(r.name, r.exit_code, r.error, r.status, r.output_bytes, r.message, r.reconnected)
                          for r in rs.results()]
            seen[mode + " groups"] = [(out, ms.names) for out, ms in rs.groups()]
        assert seen["channel"] == seen["executor"], command
        assert seen["channel groups"] == seen["executor groups"], command
    assert all(executor_of(m).alive for m in fleet)


def test_ctrl_c_while_the_executor_starts_runs_nothing(isolated_home, tmp_path):
    # A python3 that never says hello (it only reads its stdin): the start is cut short.
    bin_dir = tmp_path / "slowbin"
    bin_dir.mkdir()
    for tool in ("sh", "cat", "echo"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    (bin_dir / "python3").write_text("#!/bin/sh\ncat >/dev/null\n")
    (bin_dir / "python3").chmod(0o755)
    marker = tmp_path / "ran"
    # executor="executor": 'auto' would not wait for the start
    with one_machine({"PATH": str(bin_dir)}, executor="executor") as (cluster, m):
        seen = threading.Event()
        when_running(str(bin_dir / "python3"), 1, seen.set)
        rs = cluster.machines.run(f"echo ran > {marker}", total_timeout=1.5)
        r = rs[m.name]
        assert seen.is_set()
        assert r.error == "timeout" and "was not run" in r.message, r.message
        assert not marker.exists()
        assert gone(str(bin_dir / "python3")) == []  # closing the channel ended the start


def test_auto_starts_the_executor_in_the_background(cluster, machines):
    cluster.settings.executor = "auto"
    fleet = machines(2)
    assert fleet.run("echo first").all_ok  # over channels, and no executor starts for one command
    assert all(executor_of(m) is None for m in fleet)
    assert fleet.run("echo again").all_ok  # over channels still: no command waits for python3
    executors = [ready_executor(m) for m in fleet]
    assert all(e is not None for e in executors)
    sent = [e._next_id for e in executors]
    assert fleet.run("echo second").all_ok
    assert [executor_of(m) for m in fleet] == executors
    assert [e._next_id for e in executors] == [n + 1 for n in sent]


# -- the shortcut: commands bash would only look up and exec ----------------------

#: Each runs through the shortcut, or (the last five) falls back to the shell; run
#: without a kill token so that the environment itself can be compared byte for byte.
SHORTCUT_CASES = [
    ("env", None),
    ("grep -e SigBlk -e SigIgn -e SigCgt -e Cap -e Umask -e NoNewPrivs /proc/self/status", None),  # not SigQ: system-wide
    ("cat /proc/self/limits", None),
    ("ls /proc/self/fd", None),
    ("  /usr/bin/id   -u\t", None),
    ("tr a-z A-Z", b"some input\n"),
    ("sha256sum", b"\x00\xff" * 70000),
    ("ls /nonexistent-ecshell", None),
    ("nosuchcommand-ecshell", None),  # not on PATH: the shell's own message
    ("/etc", None),  # a directory
    ("/etc/hostname", None),  # not executable
    ("echo builtin", None),  # a builtin
    ("FOO=1 env", None),  # an assignment
]


def test_shortcut_gives_what_the_shell_gives(cluster, machines):
    fleet = machines(2)
    cluster.settings.kill_on_cancel = False
    cluster.settings.executor = "executor"
    assert fleet.run("true").all_ok
    assert all(executor_of(m).hello["shortcut"] == "on" for m in fleet)
    assert all(executor_of(m).hello["spawn"] == "fork_exec" for m in fleet)  # the probe did not turn it off
    for command, given in SHORTCUT_CASES:
        seen = {}
        for mode, shortcut in (("channel", False), ("executor", False), ("executor", True)):
            cluster.settings.executor, cluster.settings.executor_shortcut = mode, shortcut
            rs = fleet.run(command, input=given)
            seen[mode, shortcut] = [(r.name, r.exit_code, r.error, r.output_bytes, r.message) for r in rs.results()]
        assert seen["channel", False] == seen["executor", False] == seen["executor", True], command


def test_shortcut_timeout_and_ctrl_c_kill_the_program(cluster, machines):
    fleet = machines(2)
    cluster.settings.executor = "executor"
    marker = f"{300 + int(fleet[0].id.split('-')[-1], 16) % 1000}.{os.getpid()}"  # sleep NNN.PID
    assert fleet.run("true").all_ok
    seen = threading.Event()
    when_running(f"sleep {marker}", 2, seen.set)
    rs = fleet.run(f"sleep {marker}", timeout=1.5)
    assert seen.is_set()
    assert all(r.error == "timeout" and "killed on the machine" in r.message for r in rs.results()), rs
    assert gone(f"sleep {marker}") == []

    when_running(f"sleep {marker}", 2, lambda: os.kill(os.getpid(), signal.SIGINT))
    rs = fleet.run(f"sleep {marker}")
    assert rs.interrupted and all(r.error == "interrupted" for r in rs.results())
    assert gone(f"sleep {marker}") == []


def test_startup_files_that_matter_turn_the_shortcut_off(isolated_home, tmp_path):
    rc = tmp_path / "bash_env"
    rc.write_text("")
    with one_machine({"BASH_ENV": str(rc)}, executor="executor") as (cluster, m):
        assert m.run("hostname").output == os.uname().nodename + "\n"
        assert executor_of(m).hello["shortcut"] == "on"  # an empty BASH_ENV changes nothing
        # A function that shadows the program, added after the probe: the probe runs again.
        rc.write_text("hostname() { echo from-a-function; }\n")
        assert m.run("hostname").output == "from-a-function\n"
        rc.write_text("echo chatty\n")
        assert m.run("hostname").output == "chatty\n" + os.uname().nodename + "\n"
        rc.write_text("umask 077\n")
        assert m.run("grep Umask /proc/self/status").output == "Umask:\t0077\n"
        rc.write_text("")
        assert m.run("grep Umask /proc/self/status").output == "Umask:\t0022\n"


def test_shortcut_takes_only_words_bash_would_exec_unchanged():
    from ecshell.remote import executor as executor_remote

    class Probed:  # what Shortcut reads of the executor, as after a successful probe
        env = {b"HOME": b"/nonexistent-home"}
        shell = "/bin/bash"

    shortcut = executor_remote.Shortcut(Probed())
    shortcut.why, shortcut.stamps = None, shortcut._stamps()  # as after a probe that found it usable
    shortcut.env = {b"PATH": b"/usr/bin:/bin", b"_": b"/usr/bin/env", b"ECSHELL_RUN": b"probe"}
    shortcut.path = [b"/nonexistent-dir/", b"", b"/usr/bin", b"/bin"]
    shortcut.builtins = frozenset([b"echo", b"cd"])
    path, argv, env = shortcut.command(b" uname  -a\t", b"tok")
    assert (path, argv) == (b"/usr/bin/uname", [b"uname", b"-a"])
    assert list(env.items()) == [(b"PATH", b"/usr/bin:/bin"), (b"_", b"/usr/bin/uname"), (b"ECSHELL_RUN", b"tok")]
    assert b"ECSHELL_RUN" not in shortcut.command(b"uname", None)[2]
    assert shortcut.command(b"/usr/bin/uname -s", None)[0] == b"/usr/bin/uname"
    for command in (b"echo hi", b"cd /", b"if", b"time ls", b"A=1 ls", b"ls *", b"ls ~", b"ls $HOME", b"ls 'a'",
                    b"ls a;b", b"ls a|b", b"ls >x", b"ls\nls", b"ls {a,b}", b"ls # x", b"ls \\a", b"ls \xc3\xa9",
                    b"no-such-program-ecshell", b"/etc", b"", b"+x", b"-x", b"%1"):
        assert shortcut.command(command, None) is None, command
    shortcut.hashed = frozenset([b"uname"])  # the start-up ran ``hash -p /usr/bin/id uname``
    assert shortcut.command(b"uname", None) is None


def _pythons():
    """Every distinct python3 interpreter on this machine (pyenv's too), by version."""
    import glob
    import subprocess

    found = {}
    for path in [shutil.which("python3")] + sorted(glob.glob("/root/.pyenv/versions/3.*/bin/python3")):
        if path and os.access(path, os.X_OK):
            version = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2])"],
                                     capture_output=True, text=True).stdout.strip()
            found.setdefault(version, path)
    return sorted(found.values())


@pytest.mark.parametrize("python", _pythons())
def test_spawn_calls_fork_exec_right_on_this_python(python, tmp_path):
    """The executor calls subprocess's private fork_exec with each version's signature."""
    import subprocess

    from ecshell.remote import executor as executor_remote

    source = executor_remote.__file__
    check = f"""
import os, sys
namespace = {{"__name__": "executor_remote"}}
exec(compile(open({source!r}).read(), "executor_remote", "exec"), namespace)
spawn = namespace["spawn"]
print("fast" if namespace["FORK_EXEC"][0] is not None else "popen")
out_r, out_w = os.pipe()
in_r, in_w = os.pipe()
os.write(in_w, b"in"); os.close(in_w)
pid = spawn([b"sh", b"-c", b"cat; echo \\" $A $$\\"; echo err >&2; exit 3"], "/bin/sh", {{b"A": b"a"}}, in_r, out_w)
os.close(out_w)
out = b""
while True:
    part = os.read(out_r, 1000)
    if not part:
        break
    out += part
_, status = os.waitpid(pid, 0)
assert out == b"in a %d\\nerr\\n" % pid, out
assert os.getsid(0) != pid and os.WEXITSTATUS(status) == 3
try:
    spawn([b"x"], b"/nonexistent-ecshell", {{}}, 0, 1)
except OSError as exc:
    assert exc.errno == 2, exc
else:
    raise AssertionError("no error")
print("fast" if namespace["FORK_EXEC"][0] is not None else "popen")
"""
    expected = subprocess.run([python, "-c", "import sys; print('fast' if (3, 6) <= sys.version_info[:2] <= (3, 13) "
                               "else 'popen')"], capture_output=True, text=True).stdout.strip()
    result = subprocess.run([python, "-I", "-S", "-c", check], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [expected, expected]  # before and after: never fell back


def test_silent_commands_still_give_the_server_its_window_back(cluster, machines):
    # Frames are read in paramiko's transport thread, which must not send: the SSH
    # window they used is sent back by the workers, output or not.
    cluster.settings.executor = "executor"
    (m,) = machines(1)
    assert m.run("true").ok
    executor = executor_of(m)
    executor.channel.in_window_threshold = 500  # paramiko's own is a tenth of the window
    for _ in range(60):  # about 30 bytes of frames each, no output
        assert m.run("true").ok
    assert executor._window_due == 0
    assert executor.channel.in_window_sofar <= 500
    assert executor_of(m) is executor and executor.alive


def test_the_shipped_executor_speaks_the_protocol_the_client_imports():
    """What goes over the wire is ecshell/remote/executor.py itself, and its frames are the client's."""
    import base64
    import re
    import zlib

    from ecshell.remote import executor as remote

    packed = re.search(r"b64decode\('([A-Za-z0-9+/=]+)'\)", executor_module.wire()).group(1)
    shipped = zlib.decompress(base64.b64decode(packed))
    with open(remote.__file__, "rb") as f:
        assert shipped == f.read()
    namespace = {"__name__": "shipped"}  # not __main__: define, do not run
    exec(compile(shipped, "shipped", "exec"), namespace)
    for name in ("RUN", "INPUT", "INPUT_EOF", "CANCEL", "GRANT", "HELLO", "STARTED", "OUTPUT", "EXIT",
                 "FAILED", "KILLED", "FLAG_INPUT", "FLAG_NO_SHORTCUT"):
        assert namespace[name] == getattr(executor_module, name), name
    for name in ("HEADER", "STATUS", "U32"):
        assert namespace[name].format == getattr(executor_module, name).format, name
    kinds = [namespace[n] for n in ("RUN", "INPUT", "INPUT_EOF", "CANCEL", "GRANT")]
    events = [namespace[n] for n in ("HELLO", "STARTED", "OUTPUT", "EXIT", "FAILED", "KILLED")]
    assert len(set(kinds)) == 5 and len(set(events)) == 6  # no two frame kinds alike


def _thread_starts(monkeypatch):
    """The names of the threads started from now on."""
    started = []
    real = threading.Thread.start

    def start(thread):
        started.append(thread.name)
        return real(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    return started


def test_an_executor_channel_that_closes_starts_no_thread(cluster, machines, monkeypatch):
    """Its close reaches the frame sink with the channel's lock held: no closer thread there.

    At interpreter exit a Channel's ``__del__`` takes this path, and a thread
    started then never runs: ``exit`` hung in ``Thread.start``.
    """
    cluster.settings.executor = "executor"
    (m,) = machines(1)
    assert m.run("true").ok
    session = ready_executor(m)
    started = _thread_starts(monkeypatch)
    session.channel.close()
    assert session.dead and "ecshell-executor-close" not in started


def test_while_the_interpreter_exits_a_dying_executor_starts_no_thread(cluster, machines, monkeypatch):
    cluster.settings.executor = "executor"
    (m,) = machines(1)
    assert m.run("true").ok
    session = ready_executor(m)
    monkeypatch.setattr(sys, "is_finalizing", lambda: True)
    started = _thread_starts(monkeypatch)
    os.kill(session.pid, signal.SIGKILL)  # its channel reaches EOF: the sink sees it in paramiko's thread
    until = time.monotonic() + 10
    while not session.dead and time.monotonic() < until:
        time.sleep(0.02)
    assert session.dead and "ecshell-executor-close" not in started


@pytest.mark.parametrize("greeting", [
    "echo 'Python 4.0 (not the one you expected)'",  # something else answers as python3
    r"printf 'H\000\000\000\000\000\000\000\005abcde'",  # a hello frame whose JSON is garbage
])
def test_a_garbled_executor_greeting_is_that_machines_result_never_an_exception(isolated_home, tmp_path,
                                                                                greeting, capfd):
    bin_dir = tmp_path / "oddbin"
    bin_dir.mkdir()
    for tool in ("sh", "cat", "echo", "printf", "true"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    (bin_dir / "python3").write_text(f"#!/bin/sh\n{greeting}\ncat >/dev/null\n")
    (bin_dir / "python3").chmod(0o755)
    fabric = LocalFabric(environment={"SHLVL": "1", "PATH": str(bin_dir)})
    try:
        cluster = Cluster(fabric, executor="executor")
        (m,) = cluster.launch(1)
        for _ in range(2):  # the second asks the same connection again: answered at once, no hang
            r = m.run("true", timeout=5)
            assert r.error == "unreachable" and "executor" in r.message, r
            assert r.duration < 5, r  # known as soon as the first bytes came, not after a start timeout
        cluster.close()
        cluster = Cluster(fabric, executor="auto")  # the channel path serves such a machine
        assert all(cluster.machine(m.name).run("true").ok for _ in range(3))
        time.sleep(0.5)  # a background start that failed would have printed by now
        cluster.close()
    finally:
        _stop_everything(fabric)
    assert "Traceback" not in capfd.readouterr().err


def test_a_forced_command_sees_every_command(cluster, machines, tmp_path):
    """sshd's ForceCommand (audit logging, restricted shells) is the server owner's policy.

    The executor would run every later command past it, so a machine whose
    sshd forces a command is served over one channel per command.
    """
    import pathlib

    cluster.settings.executor = "auto"
    (m,) = machines(1)
    log = tmp_path / "seen"
    wrapper = tmp_path / "audit"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$SSH_ORIGINAL_COMMAND" >> {log}\n'
                       'exec /bin/bash -c "$SSH_ORIGINAL_COMMAND"\n')
    wrapper.chmod(0o755)
    config = pathlib.Path(os.environ["ECSHELL_HOME"]) / "local" / m.id / "sshd_config"
    config.write_text(config.read_text() + f"ForceCommand {wrapper}\n")
    m.close()
    os.kill(m.prototype.extra["pid"], signal.SIGHUP)  # sshd re-reads its config
    time.sleep(0.5)
    for n in range(5):
        r = m.run(f"echo command-{n}")
        assert r.ok and r.output == f"command-{n}\n", r
        if n == 1:
            time.sleep(1.0)  # the second command started the executor in the background: let it come up
    seen = log.read_text()
    assert all(f"echo command-{n}" in seen for n in range(5)), seen
    assert "forces a command" in executor_module.slot(m.connection()).unavailable


def test_a_command_past_the_kernels_argument_limit_fails_alike_on_every_path(cluster, machines):
    """sshd runs ``bash -c CMD``; Linux refuses one argument of 128 KiB or more (perror, exit 1)."""
    (m,) = machines(1)
    cases = [": " + "a" * 140_000 + "; echo ran",  # shell syntax: never the shortcut
             "/bin/echo " + " ".join(["word"] * 30_000),  # literal words, 150 KB: the shortcut would exec it
             "/bin/echo " + " ".join(["w"] * 64_000)]  # just under the limit: runs everywhere
    seen = {}
    for mode, shortcut in (("channel", True), ("executor", False), ("executor", True)):
        cluster.settings.executor, cluster.settings.executor_shortcut = mode, shortcut
        assert m.run("true").ok and m.run("true").ok  # the executor is up where asked
        seen[mode, shortcut] = [(r.exit_code, r.error, r.output_bytes) for r in (m.run(c) for c in cases)]
    assert seen["channel", True] == seen["executor", False] == seen["executor", True]
    too_long, words, fits = seen["channel", True]
    import pwd

    shell = pwd.getpwuid(os.getuid()).pw_shell.encode()  # the machines are local: the login shell is ours
    assert too_long == words == (1, "exit", shell + b": Argument list too long\n")
    assert fits[0] == 0 and fits[2].startswith(b"w w")


def test_the_shortcut_leaves_job_specs_and_option_words_to_bash(isolated_home, tmp_path):
    """``%job`` is fg's job spec to bash, never a program on PATH, whatever PATH holds; ``-x`` and ``+x``
    are options to ``bash -c`` as sshd runs it."""
    bin_dir = tmp_path / "oddbin"
    bin_dir.mkdir()
    for name in ("%job", "-dash", "+plus"):
        (bin_dir / name).write_text("#!/bin/sh\necho the program ran\n")
        (bin_dir / name).chmod(0o755)
    with one_machine({"PATH": f"{bin_dir}:/usr/bin:/bin"}, executor="executor",
                     kill_on_cancel=False) as (cluster, m):
        assert m.run("true").ok
        for command in ("%job", "-dash", "+plus"):
            seen = {}
            for mode, shortcut in (("channel", False), ("executor", True)):
                cluster.settings.executor, cluster.settings.executor_shortcut = mode, shortcut
                r = m.run(command)
                seen[mode] = (r.exit_code, r.error, r.output_bytes)
            assert seen["executor"] == seen["channel"], (command, seen)


def test_a_command_killed_by_a_signal_names_it_on_every_path(cluster, machines):
    (m,) = machines(1)
    seen = {}
    for mode, shortcut in (("channel", True), ("executor", False), ("executor", True)):
        cluster.settings.executor, cluster.settings.executor_shortcut = mode, shortcut
        assert m.run("true").ok and m.run("true").ok  # the executor is up where asked
        seen[mode, shortcut] = [(r.error, r.exit_code, r.signal, r.status, r.message)
                                for r in (m.run("kill -TERM $$"), m.run("kill -KILL $$"), m.run("exit 3"))]
    assert seen["channel", True] == seen["executor", False] == seen["executor", True]
    term, kill, three = seen["channel", True]
    assert term == ("exit", None, "TERM", "exit (SIGTERM)", "killed by SIGTERM")
    assert kill[2] == "KILL" and three == ("exit", 3, None, "exit 3", "")


#: (what $BASH_ENV holds, then the commands run) where bash does more than look up and exec the first
#: word. ``{dir}`` is a folder of the test's. A list of steps changes a file between commands.
STARTUP_CASES = [
    ("hash -p /usr/bin/id hostname\n", ["hostname", "uname"]),  # bash runs id
    ("BASH_CMDS[uname]=/usr/bin/id\n", ["uname"]),
    ("exec 7</etc/hostname\n", ["readlink /proc/self/fd/7"]),  # an inherited descriptor
    ("exec 2>/dev/null\n", ["ls /nonexistent-ecshell"]),  # stderr redirected
    ("EXECIGNORE='*/hostname'\n", ["hostname"]),  # not found by bash
    ("set -k\n", ["/bin/echo A=1 B"]),  # A=1 goes to the environment, not argv
    # exported changes that are not idempotent: the start-up must run once per command, as under sshd,
    # not once more for the executor's own start
    ("PATH=/opt/ecshell-x:$PATH\nexport COUNT=$((COUNT + 1))\n", ["printenv PATH COUNT", "env"]),
    ("export LINENO BASH_COMMAND\n", ["printenv LINENO BASH_COMMAND"]),  # what bash gives each command anew
    ("set -v\n", ["ls /nonexistent-ecshell"]),  # bash echoes the command line (on stderr)
    # a function in a file sourced by $BASH_ENV, written after the shortcut was probed
    (". {dir}/functions\n", ["hostname", ("{dir}/functions", "hostname() { echo from-a-sourced-function; }\n"),
                             "hostname"]),
    # a file sourced only once it exists
    ("[ -f {dir}/later ] && . {dir}/later\n", ["hostname", ("{dir}/later", "hostname() { echo later; }\n"),
                                                 "hostname"]),
    # every file of a folder
    ("for f in {dir}/rc.d/*.sh; do [ -e \"$f\" ] && . \"$f\"; done\n", ["hostname", ("{dir}/rc.d/a.sh", "alias x=y\n"
                                                                    "hostname() { echo rc.d; }\n"), "hostname"]),
    # state a program prints: what it prints next time is not in any start-up file
    ('eval "$(cat {dir}/defs)"\n', ["hostname", ("{dir}/defs", "hostname() { echo from-eval; }\n"), "hostname"]),
]


@pytest.mark.parametrize("startup,steps", STARTUP_CASES, ids=[c[0].strip()[:30] for c in STARTUP_CASES])
def test_the_shortcut_declines_what_the_start_up_changes(isolated_home, tmp_path, startup, steps):
    """bash's start-up can change how a first word is found or what its program inherits beyond what
    a probe of the top-level start-up files sees; each time, the shortcut gives what bash gives."""
    folder = tmp_path / "startup"
    (folder / "rc.d").mkdir(parents=True)
    (folder / "functions").write_text("")
    (folder / "defs").write_text("")
    rc = tmp_path / "bash_env"
    rc.write_text(startup.format(dir=folder))
    with one_machine({"BASH_ENV": str(rc)}, executor="executor", kill_on_cancel=False) as (cluster, m):
        assert m.run("true").ok
        for step in steps:
            if isinstance(step, tuple):
                name, text = step
                pathlib.Path(name.format(dir=folder)).write_text(text)
                continue
            seen = {}
            for mode, shortcut in (("channel", False), ("executor", False), ("executor", True)):
                cluster.settings.executor, cluster.settings.executor_shortcut = mode, shortcut
                r = m.run(step)
                seen[mode, shortcut] = (r.exit_code, r.error, r.output_bytes)
            assert seen["executor", True] == seen["channel", False] == seen["executor", False], (step, seen)


def test_a_stock_start_up_keeps_the_shortcut(isolated_home, tmp_path):
    """Debian's /etc/bash.bashrc and ~/.bashrc return at once for a command: the shortcut stays on."""
    rc = tmp_path / "bash_env"
    rc.write_text('[ -z "$PS1" ] && return\ncase $- in\n    *i*) ;;\n      *) return;;\nesac\n')
    with one_machine({"BASH_ENV": str(rc)}, executor="executor") as (cluster, m):
        assert m.run("true").ok
        assert executor_of(m).hello["shortcut"] == "on"


def test_the_shortcut_comes_back_once_the_start_up_allows_it(isolated_home, tmp_path):
    rc = tmp_path / "bash_env"
    rc.write_text("x=$(date)\n")  # a program's output: the shortcut cannot know it
    with one_machine({"BASH_ENV": str(rc)}, executor="executor") as (cluster, m):
        assert m.run("true").ok
        assert m.run("hostname").via == "executor"
        rc.write_text("x=1\n")
        assert m.run("hostname").via == "shortcut"
        rc.write_text("x=$(date)\n")
        assert m.run("hostname").via == "executor"


def test_the_environment_handed_to_the_executor_is_whole_or_not_used():
    """The start command hands over at most HANDOVER_MAX bytes of the login shell's environment (in hex,
    one exec argument); one that long may have been cut, and the executor then reads its own."""
    from ecshell.remote import executor as executor_remote

    given = b"A=1\0PATH=/opt/x:/usr/bin\0_=/bin/sh\0"
    assert executor_remote.initial_environment(given.hex(" ")) == {b"A": b"1", b"PATH": b"/opt/x:/usr/bin"}
    with open("/proc/self/environ", "rb") as f:
        own = {k: v for k, _, v in (i.partition(b"=") for i in f.read().split(b"\0") if b"=" in i)}
    own.pop(b"_", None)
    cut = (b"BIG=" + b"x" * executor_remote.HANDOVER_MAX)[:executor_remote.HANDOVER_MAX]
    assert executor_remote.initial_environment(cut.hex()) == own
    assert executor_remote.initial_environment("not hex") == own
    assert f"-N {executor_remote.HANDOVER_MAX} " in executor_module.wire()
    assert 3 * executor_remote.HANDOVER_MAX + executor_remote.HANDOVER_MAX // 16 + 1 < executor_remote.MAX_ARG_STRLEN


def test_a_nul_byte_that_reaches_the_executor_fails_that_command_only(cluster, machines):
    """Shell refuses it first; the executor must not die of one that comes anyway."""
    from ecshell.ssh.executor import ExecutorTransport
    from ecshell.ssh.transport import Request

    cluster.settings.executor = "executor"
    (m,) = machines(1)
    assert m.run("true").ok
    transport = ExecutorTransport.live(m.connection())
    process = transport.start(Request("echo a\0b"))
    with pytest.raises(Exception, match="NUL byte"):
        process.read(None, threading.Event())
    process.close()
    r = m.run("echo after")
    assert r.ok and r.output == "after\n" and r.via in ("executor", "shortcut")
    assert ExecutorTransport.live(m.connection()).session is transport.session  # the same executor lives on
