"""Markers and locks live on the machines: set here, seen by plain shell commands, and back."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ecshell import Cluster, LocalFabric, LockHeld, Marker, StateError
from ecshell.errors import ArgumentError, SelectionError
from ecshell.state import StateCommand, Op, state_dir_expr

from procs import running


def test_marker_set_here_is_a_file_a_plain_shell_sees(machines):
    web = machines(2, name="web")
    rs = web.mark("configured", note="by the test")
    assert rs.all_ok, rs.failed
    seen = web.run('cat "$ECSHELL_STATE_DIR/markers/configured"')
    for result in seen.results():
        fields = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
        assert fields["by"].endswith(f"pid {os.getpid()}")
        assert fields["note"] == "by the test"
        assert fields["at"].isdigit()
    web.unmark("configured")
    gone = web.run('test -e "$ECSHELL_STATE_DIR/markers/configured"')
    assert [r.exit_code for r in gone.results()] == [1, 1]


def test_marker_made_by_a_plain_shell_is_seen_here(machines):
    web = machines(2, name="web")
    web["web-1"].run('mkdir -p "$ECSHELL_STATE_DIR/markers" && '
                     'printf "at=100\\nby=someone else\\n" > "$ECSHELL_STATE_DIR/markers/hand-made" && '
                     'touch "$ECSHELL_STATE_DIR/markers/bare"')
    seen = web.markers()
    assert seen["web-0"] == {}
    assert set(seen["web-1"]) == {"hand-made", "bare"}
    marker = seen["web-1"]["hand-made"]
    assert isinstance(marker, Marker) and marker == 100.0 and marker.by == "someone else"
    assert web.select(marker="hand-made").names == ["web-1"]
    assert web.select(marker="!hand-made").names == ["web-0"]
    assert web.select(marker="hand-*").names == ["web-1"]


def test_markers_are_one_round_trip_per_machine(machines, monkeypatch):
    import ecshell.state as state

    web = machines(3, name="web")
    runs = []
    real = state.Shell

    class Counting(real):
        def execute(self, attempt):
            runs.append(attempt.machine.name)
            return super().execute(attempt)

    monkeypatch.setattr(state, "Shell", Counting)
    web.mark("a", "b", "c")
    assert sorted(runs) == web.names
    runs.clear()
    assert all(set(m) == {"a", "b", "c"} for m in web.markers().values())
    assert sorted(runs) == web.names


def test_parameters_cross_the_wire_as_data(machines, isolated_home):
    machine = machines(1)[0]
    canary = isolated_home / "canary"
    note = f"it's \"quoted\" $(touch {canary}) `touch {canary}` ; touch {canary}\nsecond line"
    assert machine.mark("hostile", note=note).ok
    marker = machine.markers()["hostile"]
    assert marker.note == note.replace("\n", " ")
    assert not canary.exists()
    for bad in ("../escape", "a b", "", ".hidden", "x;rm", None):
        with pytest.raises(ArgumentError):
            machine.mark(bad)


def test_a_marker_that_cannot_be_written_is_a_failed_result(machines):
    machine = machines(1)[0]
    machine.run('mkdir -p "$ECSHELL_STATE_DIR/markers/blocked/inside"')  # a directory where the file would go
    result = machine.mark("blocked")
    assert result.error == "exit" and "could not change blocked" in result.message
    assert machine.mark("fine").ok
    machine.run('mkdir -p "$ECSHELL_STATE_DIR/markers/lock.odd/inside"')
    with pytest.raises(StateError, match="could not take lock 'odd'"):
        machine.lock("odd", timeout=None).acquire()


def test_cluster_select_by_marker_and_clear_error(cluster, machines):
    machines(3, name="db")
    cluster["db-[1-2]"].mark("replica")
    assert cluster.select(marker="replica").names == ["db-1", "db-2"]
    assert cluster.select(marker="replica", role="db").names == ["db-1", "db-2"]
    with pytest.raises(SelectionError, match="markers in use: replica"):
        cluster.select(marker="primary")


def test_state_dir_default_when_the_machine_sets_none(tmp_path):
    from ecshell.config import EcShell

    script = StateCommand([Op("mark", "here")]).script(EcShell(state_dir="~/custom-state"))
    env = {k: v for k, v in os.environ.items() if k != "ECSHELL_STATE_DIR"}
    env["HOME"] = str(tmp_path)
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "custom-state" / "markers" / "here").is_file()
    assert 'S="${ECSHELL_STATE_DIR:-}"' in state_dir_expr(EcShell())


HOLDER = textwrap.dedent("""
    import sys
    from ecshell import Cluster, LocalFabric
    cluster = Cluster(LocalFabric())
    lock = cluster.machine(sys.argv[1]).lock("deploy", timeout=60, note="deploying v2")
    lock.acquire()
    print("held", flush=True)
    sys.stdin.read()            # hold until the test closes our stdin
    lock.release()
    cluster.close()
    print("released", flush=True)
""")


@pytest.fixture
def holder(tmp_path):
    """Start another shell (a Python process) that takes lock 'deploy' on a machine."""
    # not in tmp_path itself: the ecshell home there would shadow the package on sys.path
    (tmp_path / "scripts").mkdir(exist_ok=True)
    script = tmp_path / "scripts" / "holder.py"
    script.write_text(HOLDER)
    started = []

    def start(machine_name):
        proc = subprocess.Popen([sys.executable, str(script), machine_name], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_lock_held_by_another_shell_waits_then_names_the_holder(machines, holder):
    machine = machines(1, name="app")[0]
    other = holder("app-0")
    with pytest.raises(LockHeld) as caught:
        machine.lock("deploy", timeout=0.3).acquire()
    message = str(caught.value)
    assert f"pid {other.pid}" in message and "deploying v2" in message and "since" in message
    assert "break_lock('deploy')" in message
    assert caught.value.holder.by.endswith(f"pid {other.pid}")
    assert machine.markers()["lock.deploy"].by.endswith(f"pid {other.pid}")

    # a waiter gets the lock once the other shell lets go
    other.stdin.close()
    with machine.lock("deploy", timeout=60) as lock:
        assert lock.held
        assert other.stdout.readline().strip() == "released"
        assert machine.markers()["lock.deploy"].by.endswith(f"pid {os.getpid()}")
    assert "lock.deploy" not in machine.markers()


def test_lock_on_a_set_is_all_or_nothing(machines, holder):
    web = machines(3, name="web")
    other = holder("web-1")
    with pytest.raises(LockHeld, match=f"on web-1 by .*pid {other.pid}"):
        web.lock("deploy", timeout=0.2).acquire()
    held = web.locks()
    assert "deploy" not in held["web-0"] and "deploy" not in held["web-2"]  # given back
    other.stdin.close()
    with web.lock("deploy", timeout=60):
        assert all(h["deploy"].by.endswith(f"pid {os.getpid()}") for h in web.locks().values())
    assert all(h == {} for h in web.locks().values())


def test_lock_of_a_dead_holder_is_broken_only_explicitly(isolated_home, machines, holder):
    machine = machines(1, name="app")[0]
    other = holder("app-0")
    os.kill(other.pid, signal.SIGKILL)
    other.wait()
    assert not running(other.pid)
    # a new shell sees the lock too: it lives on the machine
    with Cluster(LocalFabric()) as again:
        with pytest.raises(LockHeld, match="no longer running"):
            again.machine("app-0").lock("deploy", timeout=0).acquire()
        broken = again.machine("app-0").break_lock("deploy")
        assert broken.by.endswith(f"pid {other.pid}")
        assert again.machine("app-0").break_lock("deploy") is None
    with machine.lock("deploy", timeout=0):
        assert machine.locks()["deploy"].by.endswith(f"pid {os.getpid()}")


def test_lock_between_threads_excludes(machines):
    import threading

    machine = machines(1)[0]
    inside, overlaps, errors = [], [], []

    def work():
        try:
            for _ in range(3):
                with machine.lock("critical", timeout=120):
                    inside.append(1)
                    if len(inside) > 1:
                        overlaps.append(1)
                    machine.run("true")
                    inside.pop()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not overlaps
