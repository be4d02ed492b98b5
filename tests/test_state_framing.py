"""What a state file holds is data, never a record of the state protocol (issue 15, item 6).

Every kind of file in a machine's state directory gets hostile contents: lines
that look like the records the state scripts print (OP, NOW, ERR, M, WAS, DIAG).
"""

import os
import pathlib

import pytest

from ecshell import LockHeld, once, Shell

FORGED = ("\x1eOP 0 ok\n\x1eOP x y\n\x1eNOW abc\n\x1eERR forged error\n\x1eM forged\nat=1\nby=forger\n"
          "\x1eWAS lock.deploy\nby=forger\n\x1eDIAG 0 0\nZm9yZ2Vk\n")
HOSTILE = f"at=100\nby=someone pid 1\n{FORGED}note=after the records\n"

#: a file of every kind the state directory holds: a marker, a lock, once's marker and lock, free-list markers
KINDS = ("configured", "lock.deploy", "step", "lock.once.step", "pool.build", "free.build", "taken.build")


def state_markers(machine):
    return pathlib.Path(machine.run('printf %s "$ECSHELL_STATE_DIR"').output) / "markers"


def write_hostile(machine, names=KINDS):
    directory = state_markers(machine)
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text(HOSTILE)
    return directory


def test_hostile_contents_in_every_kind_of_file_are_read_as_data(machines):
    machine = machines(1, name="app")[0]
    write_hostile(machine)
    seen = machine.markers()
    assert set(seen) == set(KINDS)
    for name in KINDS:
        assert seen[name] == 100.0 and seen[name].by == "someone pid 1", name
        assert seen[name].note == "after the records"
    assert set(machine.locks()) == {"deploy", "once.step"}
    result = machine.mark("new")
    assert result.ok and result.message in (None, ""), result.message
    assert set(result.detail["markers"]) == set(KINDS) | {"new"}
    assert result.detail["now"] is not None and result.detail["now"] > 1e9


def test_a_forged_op_record_does_not_take_a_held_lock(machines):
    machine = machines(1, name="app")[0]
    with machine.lock("deploy", timeout=0):
        write_hostile(machine, ("configured",))
        with pytest.raises(LockHeld):
            machine.lock("deploy", timeout=0).acquire()
    # the lock file itself holding the forged records
    write_hostile(machine, ("lock.deploy",))
    with pytest.raises(LockHeld):
        machine.lock("deploy", timeout=0).acquire()


def test_breaking_a_lock_reports_its_real_holder(machines):
    machine = machines(1, name="app")[0]
    write_hostile(machine, ("lock.deploy",))
    broken = machine.break_lock("deploy")
    assert broken is not None and broken.by == "someone pid 1"
    assert "lock.deploy" not in machine.markers()


def test_once_and_diagnostics_read_past_hostile_files(machines):
    machine = machines(1, name="app")[0]
    write_hostile(machine, ("configured", "lock.once.other"))
    result = machine.execute(once("step")(Shell("echo did it")))
    assert result.ok and "did it" in result.output
    assert "step" in machine.markers()
    found = machine.diagnose("disk")
    assert found["disk"].value != "forged"
    assert found["disk"].ok


def test_a_hostile_file_name_is_not_a_marker(machines):
    machine = machines(1, name="app")[0]
    directory = write_hostile(machine, ())
    with machine.lock("deploy", timeout=0):
        (directory / "x\n\x1eOP 0 ok").write_text("")
        (directory / "y\x1eM forged").write_text("")
        with pytest.raises(LockHeld):
            machine.lock("deploy", timeout=0).acquire()
        assert set(machine.markers()) == {"lock.deploy"}
    assert sorted(os.listdir(directory)) == sorted(["x\n\x1eOP 0 ok", "y\x1eM forged"])
