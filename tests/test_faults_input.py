"""Bad input and faults, on real local sshd machines: refused early with a message, never half done.

Large ranges, file modes, %get destinations, timeouts and stdin, launch limits,
machine names (at launch and read back from disk) and a LocalFabric launch
that fails half way. One home, one IPython shell and two machines (web-0,
web-1) are shared by the whole module; tests that need machines of their
own launch them in their own fabric directory, and every sshd is stopped by
pid at the end, passed or failed.
"""

import dataclasses
import json
import math
import os
import signal
import threading
import time

import pytest
from IPython.core.error import UsageError

from ipython_support import loaded_shell

from ecshell import ArgumentError, Cluster, FabricError, LocalFabric, Machine, MachineSet, SelectionError, Shell
from ecshell.shell.extension import extension_for


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """The module's isolated HOME and ECSHELL_HOME (what conftest's isolated_home does, once)."""
    tmp = tmp_path_factory.mktemp("faults")
    (tmp / "home" / ".ssh").mkdir(parents=True, mode=0o700)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp / "home"))
        mp.setenv("ECSHELL_HOME", str(tmp / "ecshell"))
        mp.delenv("SSH_AUTH_SOCK", raising=False)
        yield tmp


def sshd_under(directory):
    """Pids of the processes whose command line names ``directory`` (the sshd started there)."""
    found = []
    needle = str(directory).encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def stop_all(fabric):
    """Terminate what the fabric has on disk, then kill by pid anything still running from its directory.

    terminate runs in a thread of its own, so that a fabric whose lock a broken
    launch still holds cannot hang the clean-up.
    """
    try:
        in_thread(lambda: fabric.terminate([p.id for p in fabric.discover()]), 30)
    finally:
        for pid in sshd_under(fabric.directory):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def in_thread(call, seconds):
    """``(finished, outcome)`` of ``call()`` run in a daemon thread for at most ``seconds``."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), outcome


@pytest.fixture(scope="module")
def fleet(home):
    """A Cluster with two ready machines, web-0 and web-1."""
    fabric = LocalFabric()
    cluster = Cluster(fabric)
    try:
        cluster.launch(2, name="web")
        yield cluster
    finally:
        cluster.close()
        stop_all(fabric)


@pytest.fixture(scope="module")
def ip(fleet):
    """A real IPython shell with ecshell loaded; its cluster finds the fleet's machines on disk."""
    with loaded_shell() as shell:
        assert shell.user_ns["cluster"].machines.names == ["web-0", "web-1"]
        yield shell


@pytest.fixture
def session(ip):
    """The shell's Session, its ask and confirm_launch_above put back after the test."""
    session = extension_for(ip).session
    ask, above = session.ask, getattr(session.settings, "confirm_launch_above", None)
    try:
        yield session
    finally:
        session.ask = ask
        session.settings.confirm_launch_above = above


@pytest.fixture
def own_fabric(home, tmp_path):
    """``own_fabric(**settings)``: a LocalFabric in a directory of the test's own, stopped afterwards."""
    made = []

    def make(**settings):
        fabric = LocalFabric(directory=str(tmp_path / f"machines-{len(made)}"), **settings)
        made.append(fabric)
        return fabric

    try:
        yield make
    finally:
        for fabric in made:
            stop_all(fabric)


# -- 3: large ranges select without expanding ------------------------------------------


def test_a_huge_range_selects_at_once_and_only_expand_is_bounded(fleet, ip):
    started = time.perf_counter()
    assert fleet["web-[0-999999]"].names == ["web-0", "web-1"]
    assert time.perf_counter() - started < 1.0
    started = time.perf_counter()
    assert fleet["web-[1-99999999999999999999]"].names == ["web-1"]
    assert fleet["web-[0-9999999]!web-[1-5]"].names == ["web-0"]
    assert ip.run_line_magic("on", "--quiet web-[1-9999999] echo $ECSHELL_MACHINE").groups()[0][0] == "web-1\n"
    assert extension_for(ip).session.complete("%on web-[0-9999999]") == []  # names, never a range
    assert time.perf_counter() - started < 3.0  # one broadcast included
    with pytest.raises(SelectionError, match="bad range in target 'web-\\[3-'"):
        fleet["web-[3-"]
    # only expand() lists what a pattern stands for, and it refuses past its bound at once
    from ecshell.hostset import MAX_EXPANSION, expand

    assert len(expand(f"web-[1-{MAX_EXPANSION}]")) == MAX_EXPANSION
    started = time.perf_counter()
    with pytest.raises(SelectionError, match=f"stands for 1000000 names, more than ecshell lists \\({MAX_EXPANSION}\\)"):
        expand("web-[0-999999]")
    assert time.perf_counter() - started < 0.5


# -- 7: %put modes are checked before anything is copied --------------------------------


def test_put_refuses_a_bad_mode_before_copying(fleet, ip, home):
    source = home / "run.sh"
    source.write_text("#!/bin/sh\necho hi\n")
    for i, mode in enumerate((-1, 0o10000, 77777777777, True, "644", 6.44)):
        dest = home / f"put-bad-{i}"
        with pytest.raises(ArgumentError, match="mode must be permission bits from 0 to 0o7777"):
            fleet.put(str(source), str(dest), mode=mode)
        assert not dest.exists(), f"mode {mode!r}: the file was copied before the mode was refused"
    for i, typed in enumerate(("-1", "77777777777", "8", "rwx", "0o", "10000")):
        dest = home / f"put-typed-{i}"
        with pytest.raises(UsageError, match="mode"):
            ip.run_line_magic("put", f"{source} {dest} all -m {typed}")
        assert not dest.exists(), f"-m {typed}: the file was copied before the mode was refused"
    for typed, expected in (("644", 0o644), ("0755", 0o755), ("0o600", 0o600)):
        dest = home / f"put-{typed}"
        assert ip.run_line_magic("put", f"{source} {dest} web-0 -m {typed}").all_ok
        assert dest.stat().st_mode & 0o7777 == expected


# -- 8 and 9: %get destinations, and a failed get keeps the earlier copy ---------------------


def test_get_into_an_existing_file_is_refused_before_anything_runs(fleet, ip, home):
    dest = home / "not-a-directory"
    dest.write_text("keep me")
    cluster = ip.user_ns["cluster"]
    before, history = len(cluster.history), len(fleet.history)
    with pytest.raises(UsageError, match="is a file.*give a directory"):
        ip.run_line_magic("get", f"/etc/hostname {dest}")
    with pytest.raises(ArgumentError, match="is a file"):
        fleet.get("/etc/hostname", str(dest / "deeper"))
    assert dest.read_text() == "keep me"
    assert len(cluster.history) == before and len(fleet.history) == history
    # a file where one machine's directory would go fails that machine only, as its result
    logs = home / "logs-8"
    logs.mkdir()
    (logs / "web-1").write_text("in the way")
    results = fleet.get("/etc/hostname", str(logs))
    assert results["web-0"].ok and (logs / "web-0" / "hostname").exists()
    assert results["web-1"].error == "exit" and "cannot write" in results["web-1"].message


def test_a_failed_get_leaves_the_earlier_copy_intact(fleet, home):
    remote = home / "remote-9.txt"
    remote.write_text("the first version\n")
    logs = home / "logs-9"
    assert fleet.get(str(remote), str(logs)).all_ok
    copy = logs / "web-0" / "remote-9.txt"
    assert copy.read_text() == "the first version\n"
    remote.unlink()
    failed = fleet.get(str(remote), str(logs))
    assert not failed.ok and len(failed.failed) == 2
    assert copy.read_text() == "the first version\n"
    assert sorted(os.listdir(logs / "web-0")) == ["remote-9.txt"]  # no partial file left beside it


# -- 10: timeouts and stdin ------------------------------------------------------------------


def test_timeouts_and_input_are_checked_with_a_message(fleet, ip):
    for bad in ("5", math.nan, math.inf, 0, -1, True, [5]):
        with pytest.raises(ArgumentError, match="timeout must be a number of seconds above 0"):
            fleet.run("true", timeout=bad)
    with pytest.raises(ArgumentError, match="total_timeout must be a number of seconds above 0"):
        fleet.machines.run("true", total_timeout="10")
    for bad in (123, ["a"], 1.5):
        with pytest.raises(ArgumentError, match="input is what the command reads on stdin: give bytes or a str"):
            fleet.run("cat", input=bad)
    for typed in ("nan", "inf", "-inf", "0", "-3", "soon"):
        with pytest.raises(UsageError, match="timeout"):
            ip.run_line_magic("on", f"-t {typed} all true")
    machine = fleet.machines[0]
    with pytest.raises(ArgumentError, match="timeout must be a number of seconds above 0"):
        machine.run("true", timeout="5")  # one machine, and a Shell built directly, are checked too
    with pytest.raises(ArgumentError, match="input is what the command reads on stdin"):
        Shell("cat", input=123)
    assert fleet.run("cat", target="web-0", input=bytearray(b"typed")).groups()[0][0] == "typed"
    assert fleet.run("sleep 5", target="web-0", timeout=0.5)["web-0"].error == "timeout"
    assert ip.run_line_magic("on", "-t 0.5 --quiet web-0 sleep 5")["web-0"].error == "timeout"


# -- 11: how many a launch may start ------------------------------------------------------------


def test_a_fabric_caps_one_launch_and_names_the_setting(own_fabric):
    from ecshell import Ec2Fabric

    fabric = own_fabric(max_launch=2)
    cluster = Cluster(fabric)
    try:
        with pytest.raises(ArgumentError, match="at most 2 machines.*c.LocalFabric.max_launch = 3"):
            cluster.launch(3)
        assert fabric.discover() == [] and sshd_under(fabric.directory) == []
        with pytest.raises(ArgumentError, match="at most 2 machines"):
            fabric.launch(3)
        started = time.perf_counter()
        with pytest.raises(ArgumentError, match="max_launch"):
            cluster.launch(10**6)
        assert time.perf_counter() - started < 0.5 and fabric.discover() == []
        for bad in (0, -1, 2.0, True, "2"):
            with pytest.raises(ArgumentError, match="count must be a positive whole number"):
                cluster.launch(bad)
    finally:
        cluster.close()
    assert LocalFabric().max_launch == 100 and Ec2Fabric().max_launch == 20
    with pytest.raises(ArgumentError, match="max_launch must be at least 1"):
        LocalFabric(max_launch=0)


def test_launch_in_the_shell_asks_above_confirm_launch_above(ip, session, capsys):
    cluster = ip.user_ns["cluster"]
    session.settings.confirm_launch_above = 1
    questions = []
    session.ask = lambda question: questions.append(question) or False
    assert ip.run_line_magic("launch", "2 --name big") is None
    assert questions == ["Launch 2 machines big-[0-1] on local? [y/N] "]
    assert "nothing launched" in capsys.readouterr().out
    assert cluster.machines.names == ["web-0", "web-1"]
    assert ip.run_line_magic("launch", "1 --name one").names == ["one-0"]  # at the limit: no question
    session.ask = None  # a session that cannot ask refuses, and says how to confirm
    with pytest.raises(UsageError, match="needs a confirmation: add -y"):
        ip.run_line_magic("launch", "2 --name big")
    # past the fabric's max_launch it is refused outright, without a question
    session.ask = lambda question: questions.append(question) or True
    with pytest.raises(UsageError, match="c.LocalFabric.max_launch"):
        ip.run_line_magic("launch", "101 --name huge")
    with pytest.raises(UsageError, match="cannot launch machines named 'role=db'"):
        ip.run_line_magic("launch", "5 --name role=db")
    assert len(questions) == 1
    try:
        assert ip.run_line_magic("launch", "2 --name big -y").names == ["big-0", "big-1"]
        assert len(questions) == 1
    finally:
        cluster.terminate("big-*,one-*")
    assert cluster.machines.names == ["web-0", "web-1"]


# -- 12: machine names ----------------------------------------------------------------------------


BAD_NAMES = ['x"\nForceCommand /bin/echo pwned\n#', "../../escape", "role=db", "w[1]", "-web", ".web",
             "web/0", "web 0", "wéb", "x" * 70, ""]


def test_bad_names_are_refused_at_launch_before_anything_starts(own_fabric):
    fabric = own_fabric()
    cluster = Cluster(fabric)
    try:
        for name in BAD_NAMES:
            with pytest.raises(ArgumentError, match="cannot launch machines named"):
                cluster.launch(1, name=name)
            with pytest.raises(ArgumentError, match="cannot launch machines named"):
                fabric.launch(1, name=name)
        assert fabric.discover() == [] and sshd_under(fabric.directory) == []
        assert not os.path.exists(fabric.directory) or os.listdir(fabric.directory) == []
    finally:
        cluster.close()
    from ecshell.hostset import name_problem, valid_name

    assert [n for n in ("web-0", "db_1", "a.b-2", "0web", "W" * 64) if not valid_name(n)] == []
    assert "target word" in name_problem("failed")
    assert "starts with '.'" in name_problem("../../escape")


def test_a_name_read_back_from_disk_is_data(own_fabric, caplog):
    from ecshell.fabrics.local import sshd_config

    fabric = own_fabric()
    machine_id = fabric.launch(1, name="victim")[0].id
    fabric.stop([machine_id])
    meta_path = os.path.join(fabric.directory, machine_id, "meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["name"] = 'x"\nForceCommand /bin/echo pwned\n#'
    meta["id"] = "../../escape"
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    cluster = Cluster(fabric)
    try:
        assert cluster.machines.names == [machine_id]  # listed under its id, with a warning
        assert cluster.machine(machine_id).id == machine_id
        assert f"local machine {machine_id}: its recorded name is refused" in caplog.text
        cluster.start(machine_id)
        with open(os.path.join(fabric.directory, machine_id, "sshd_config")) as f:
            assert "ForceCommand" not in f.read()
        result = cluster.run("echo $ECSHELL_MACHINE", target=machine_id)[machine_id]
        assert result.ok and result.output == f"{machine_id}\n"
    finally:
        cluster.close()
    with pytest.raises(ArgumentError, match="cannot write .* into an sshd_config"):
        sshd_config('x"\nForceCommand y', "lm-0", 22, "/tmp/m", {"A": "1"})
    with pytest.raises(ArgumentError, match="cannot write .* into an sshd_config"):
        sshd_config("x", "lm-0", 22, "/tmp/m", {"A": "1\nForceCommand y"})


@pytest.mark.parametrize("name", ["../../escape", "..", "a/../../escape"])
def test_get_never_writes_outside_its_destination(fleet, home, name):
    web0 = fleet.machine("web-0")
    renamed = Machine(dataclasses.replace(web0.prototype, name=name), web0.fabric, fleet.engine)
    dest = home / "deep" / "dest"
    try:
        results = MachineSet([renamed]).get("/etc/hostname", str(dest))
    finally:
        renamed.close()
    result = results.results()[0]
    assert result.error == "exit" and "cannot be a directory name" in result.message
    assert not (home / "escape").exists()
    assert not (home / "deep").exists() or os.listdir(home / "deep") == ["dest"]
    assert not dest.exists() or os.listdir(dest) == []


# -- 13: a LocalFabric launch that fails half way -----------------------------------------------


def test_a_failed_launch_neither_hangs_nor_leaves_an_sshd(own_fabric, tmp_path):
    # An "sshd" that never listens (it never writes its pid file): the launch fails every time,
    # whatever the machine's load (a tiny start_timeout raced a real sshd's start).
    silent = tmp_path / "silent-sshd"
    silent.write_text("#!/bin/sh\nwhile :; do sleep 1; done\n")
    silent.chmod(0o755)
    fabric = own_fabric(start_timeout=0.3, sshd=str(silent))
    finished, outcome = in_thread(lambda: fabric.launch(3, name="slow"), 20)
    assert finished, "LocalFabric.launch hung after an sshd failed to start"
    assert isinstance(outcome.get("error"), FabricError)
    assert "did not start listening within 0.3s" in str(outcome["error"])
    assert sshd_under(fabric.directory) == []
    assert os.listdir(fabric.directory) == []  # no meta left behind, with or without a pid
    # the fabric still works afterwards (its lock was not left held)
    real_sshd = LocalFabric.class_traits()["sshd"].default_value
    fabric.sshd, fabric.start_timeout = real_sshd, 10.0
    machine_id = fabric.launch(1, name="ok")[0].id
    assert len(sshd_under(fabric.directory)) == 1
    # a restart that fails keeps the machine, stopped, with nothing running and no stale pid
    fabric.stop([machine_id])
    fabric.sshd, fabric.start_timeout = str(silent), 0.3
    finished, outcome = in_thread(lambda: fabric.start([machine_id]), 20)
    assert finished, "LocalFabric.start hung after an sshd failed to start"
    assert isinstance(outcome.get("error"), FabricError)
    assert sshd_under(fabric.directory) == []
    assert [p.id for p in fabric.discover()] == [machine_id]
    with open(os.path.join(fabric.directory, machine_id, "meta.json")) as f:
        assert json.load(f)["pid"] is None
    fabric.sshd, fabric.start_timeout = real_sshd, 10.0
    assert [p.state for p in fabric.start([machine_id])] == ["running"]


def test_an_interrupted_launch_leaves_nothing(own_fabric, monkeypatch):
    fabric = own_fabric()
    spawned = []
    real_spawn = LocalFabric._spawn

    def spawn_then_interrupt(self, meta, new_port=False):
        proc = real_spawn(self, meta, new_port)
        spawned.append(proc.pid)
        if len(spawned) == 2:
            raise KeyboardInterrupt
        return proc

    monkeypatch.setattr(LocalFabric, "_spawn", spawn_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        fabric.launch(3, name="cut")
    assert sshd_under(fabric.directory) == []
    assert os.listdir(fabric.directory) == []


def test_a_command_holding_a_nul_byte_is_refused_before_anything_runs(fleet):
    """ssh cannot send one and sshd cannot hand one to the shell: the channel path lost its connection,
    and the executor died of it (twice, and the machine's later commands were unreachable)."""
    for command in ("echo a\0b", ["printf", "%s", "a\0b"]):
        with pytest.raises(ArgumentError, match="NUL byte.*stdin"):
            fleet.run(command)
    assert fleet.run("echo still fine").all_ok
