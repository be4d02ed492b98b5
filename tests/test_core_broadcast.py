"""Broadcast on real local sshd machines: outputs, exit codes, selection, transfers."""

import hashlib
import os
import subprocess
import tracemalloc

import pytest

from procs import running

from ecshell import Cluster, ErrorKind, LocalFabric, SelectionError



@pytest.fixture(autouse=True, params=["auto", "channel"])
def command_path(request, monkeypatch):
    """Every test here runs twice: through the per-machine executor and over one channel per command."""
    monkeypatch.setenv("ECSHELL_EXECUTOR", request.param)
    return request.param


def test_launch_runs_real_sshd_and_broadcast_folds(machines):
    web = machines(3, name="web")
    assert [m.state for m in web] == ["ready"] * 3
    for m in web:
        cmdline = open(f"/proc/{m.prototype.extra['pid']}/cmdline", "rb").read()
        assert b"sshd" in cmdline and m.id.encode() in cmdline
    rs = web.run("echo same; echo $ECSHELL_MACHINE >&2")
    assert rs.all_ok and len(rs.ok) == 3 and len(rs.failed) == 0
    assert rs["web-1"].output == "same\nweb-1\n"
    rs = web.run("uname -s")
    groups = rs.groups()
    assert len(groups) == 1
    output, members = groups[0]
    assert output == os.uname().sysname + "\n"
    assert members.names == ["web-0", "web-1", "web-2"]
    assert str(members) == "web-[0-2]"


def test_exit_codes_and_error_kinds(machines):
    web = machines(3, name="web")
    rs = web.run('exit $(( ${ECSHELL_MACHINE#web-} + 2 ))')
    assert [rs[n].exit_code for n in rs] == [2, 3, 4]
    assert all(rs[n].error == "exit" and rs[n].error is ErrorKind.EXIT for n in rs)
    assert not rs["web-0"].ok and len(rs.failed) == 3
    ok = web.run("true")
    assert ok["web-0"].ok and ok["web-0"].exit_code == 0 and ok["web-0"].error is None


def test_stdout_and_stderr_combined_in_arrival_order(machines):
    (m,) = machines(1)
    rs = m.run("echo 1; sleep 0.05; echo 2 >&2; sleep 0.05; echo 3; sleep 0.05; echo 4 >&2")
    assert rs.output == "1\n2\n3\n4\n"


def test_stdin_is_closed_unless_input_given(machines):
    (m,) = machines(1)
    assert m.run("cat; echo done").output == "done\n"
    r = m.run("wc -c; tr a-z A-Z", input=b"hello\n" * 3)
    assert r.output == "18\n"
    r = m.run("tr a-z A-Z", input="hello stdin\n")
    assert r.output == "HELLO STDIN\n"
    big = os.urandom(3 * 1024 * 1024)
    r = m.run("sha256sum", input=big)
    assert r.output.split()[0] == hashlib.sha256(big).hexdigest()


def test_no_pty_unless_asked(machines):
    (m,) = machines(1)
    assert m.run("tty").output == "not a tty\n"
    if os.geteuid() != 0:
        pytest.skip("an sshd run by an ordinary user cannot give a session a PTY (it must chown the "
                    "terminal to group tty, and aborts)")
    r = m.run("tty", pty=True)
    assert r.ok and r.output.startswith("/dev/pts/")


def test_invalid_utf8_and_nul_bytes_are_kept_exactly(machines):
    (m,) = machines(1)
    r = m.run(r"printf 'a\000b\377\376c\xe2\x82'")
    assert r.output_bytes == b"a\x00b\xff\xfec\xe2\x82"
    assert r.output == "a\x00b\ufffd\ufffdc\ufffd"


def test_fifty_megabytes_kept_complete_with_bounded_memory(machines):
    (m,) = machines(1)
    size = 50 * 1024 * 1024
    tracemalloc.start()
    try:
        r = m.run(f"head -c {size} /dev/urandom | tee /tmp/ecshell-50mb-{m.id}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.ok, r
    try:
        with open(f"/tmp/ecshell-50mb-{m.id}", "rb") as f:
            expected = hashlib.sha256(f.read()).hexdigest()
    finally:
        os.unlink(f"/tmp/ecshell-50mb-{m.id}")
    data = r.output_bytes
    assert len(data) == size
    assert hashlib.sha256(data).hexdigest() == expected
    assert r.output_path is not None and os.path.getsize(r.output_path) == size
    assert peak < 24 * 1024 * 1024, f"peak traced memory {peak} bytes while receiving 50 MB"


def test_stdout_and_stderr_over_8mb_each_at_once(machines):
    (m,) = machines(1)
    n = 9 * 1024 * 1024
    r = m.run(f"head -c {n} /dev/zero & head -c {n} /dev/zero >&2; wait", timeout=60)
    assert r.ok, r
    assert r.output_size == 2 * n


def test_hundred_machines_in_one_broadcast(machines):
    fleet = machines(100, name="n")
    rs = fleet.run("echo $ECSHELL_MACHINE")
    assert len(rs) == 100 and rs.all_ok
    assert {rs[n].output.strip() for n in rs} == {f"n-{i}" for i in range(100)}
    assert len(rs.groups()) == 100


def test_fanout_bounds_concurrency(cluster, machines):
    fleet = machines(6, name="f")
    cluster.settings.fanout = 2
    rs = fleet.run("date +%s.%N; sleep 0.3; date +%s.%N")
    assert rs.all_ok
    spans = [tuple(float(x) for x in rs[n].output.split()) for n in rs]
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap == 2, spans


def test_selection_by_glob_range_and_tag(cluster, machines):
    machines(4, name="web")
    machines(2, name="db", tags={"role": "db", "tier": "back"})
    assert cluster["web-*"].names == ["web-0", "web-1", "web-2", "web-3"]
    assert cluster["web-[1-2]"].names == ["web-1", "web-2"]
    assert cluster["web-[0,3],db-1"].names == ["db-1", "web-0", "web-3"]
    assert cluster.select(role="db").names == ["db-0", "db-1"]
    assert cluster.select(role="web").names == ["web-0", "web-1", "web-2", "web-3"]
    assert cluster.machine("web-2").tags == {"role": "web"}
    assert len(cluster.machines) == 6


def test_selection_mistakes_say_what_to_type(cluster, machines):
    machines(2, name="web")
    with pytest.raises(SelectionError, match=r"no machine named 'web-9'; machines are: web-\[0-1\]"):
        cluster["web-9"]
    with pytest.raises(SelectionError, match="selects no machine"):
        cluster["db-*"]
    with pytest.raises(SelectionError, match="bad range"):
        cluster["web-[0-"]
    with pytest.raises(SelectionError, match="no machine has role=db; tags in use: role=web"):
        cluster.select(role="db")
    with pytest.raises(SelectionError, match="no machine named 'nope'"):
        cluster.machine("nope")
    empty = cluster["web-*"] - cluster["web-*"]
    with pytest.raises(SelectionError, match="selection is empty"):
        empty.run("true")


def test_put_and_get_over_the_pooled_connection(tmp_path, machines):
    web = machines(3, name="web")
    src = tmp_path / "app.bin"
    payload = os.urandom(300_000)
    src.write_bytes(payload)
    state = {m.name: m.prototype.extra["state_dir"] for m in web}
    shared = tmp_path / "remote"
    shared.mkdir()
    # The "machines" share this host's filesystem: {name} gives each its own copy.
    rs = web.put(str(src), str(shared) + "/{name}.bin")
    assert rs.all_ok, rs
    for m in web:
        assert (shared / f"{m.name}.bin").read_bytes() == payload
    assert rs["web-0"].detail == {"path": f"{shared}/web-0.bin", "size": len(payload)}
    one = web["web-0"].put(str(src), str(shared) + "/")  # a directory: the file keeps its name
    assert one.all_ok and (shared / "app.bin").read_bytes() == payload
    for m in web:
        assert m.run(f"cp {shared}/{m.name}.bin $ECSHELL_STATE_DIR/app.bin && "
                     "echo $ECSHELL_MACHINE >> $ECSHELL_STATE_DIR/app.bin").ok
    for m in web:
        rs = web[m.name].get(state[m.name] + "/app.bin", str(tmp_path / "logs"))
        assert rs.all_ok
    for m in web:
        got = (tmp_path / "logs" / m.name / "app.bin").read_bytes()
        assert got == payload + f"{m.name}\n".encode()
    missing = web.get("/nonexistent/file", str(tmp_path / "none"))
    assert not missing.all_ok and missing["web-0"].error == "exit"
    assert "nonexistent" in missing["web-0"].message


def test_machines_are_found_again_by_a_new_cluster(isolated_home):
    first = Cluster(LocalFabric())
    try:
        web = first.launch(2, name="web")
        pids = [m.prototype.extra["pid"] for m in web]
        first.close()
        second = Cluster(LocalFabric())
        assert second.machines.names == ["web-0", "web-1"]
        assert [m.state for m in second.machines] == ["running", "running"]
        assert second.ready().names == ["web-0", "web-1"]
        assert second.run("echo hi").all_ok
        more = second.launch(1, name="web")
        assert more.names == ["web-2"]
        second.terminate("all")
        for pid in pids:
            assert not running(pid)
        assert len(Cluster(LocalFabric()).machines) == 0
    finally:
        fabric = LocalFabric()
        fabric.terminate([p.id for p in fabric.discover()])


def test_terminate_stops_exactly_its_processes_and_sessions(cluster, machines):
    web = machines(2, name="web")
    keep = machines(1, name="keep")
    web.run("sleep 0.1")  # leaves pooled sessions (sshd children) behind
    listener = web[0].prototype.extra["pid"]
    children = subprocess.run(["pgrep", "-P", str(listener)], capture_output=True, text=True).stdout.split()
    assert children, "a pooled connection should have an sshd child"
    cluster.terminate(web)
    for pid in [listener] + [int(c) for c in children]:
        assert not running(pid), f"process {pid} survived terminate"
    assert cluster.machines.names == ["keep-0"]
    assert keep.run("true").all_ok


def test_stopped_machine_is_not_ready_and_start_brings_it_back(cluster, machines):
    (m,) = machines(1)
    cluster.stop(m)
    assert m.state == "stopped"
    with pytest.raises(SelectionError, match="no running machine"):
        cluster.run("true")
    cluster.start(m)
    assert m.state == "ready"
    assert cluster.run("echo back")["node-0"].output == "back\n"


def test_run_on_cluster_keeps_history(cluster, machines):
    machines(2)
    rs = cluster.run("echo a")
    assert cluster.history[-1] is rs
