"""The free list on real machines, and a shell killed mid-recipe whose successor rebuilds everything."""

import glob
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

from procs import remote_processes
from ecshell import Cluster, FreeList, FreeListEmpty, LocalFabric, MachineSet, Shell, once

COUNT = 'f="$ECSHELL_STATE_DIR/../{name}.count"; echo x >> "$f"; '


def counts(machines, name):
    rs = MachineSet(machines).run(f'wc -l < "$ECSHELL_STATE_DIR/../{name}.count" 2>/dev/null || echo 0')
    return {r.name: int(r.output.strip()) for r in rs.results()}


def owner_step(user):
    return Shell(f'echo {shlex.quote(user)} > "$ECSHELL_STATE_DIR/../owner"')


def test_free_list_hands_out_a_warm_machine_and_refills(cluster):
    recipe = [once("base")(Shell(COUNT.format(name="base")))]
    pool = cluster.free_list("web", size=2, recipe=recipe, last=owner_step)
    warm = pool.fill()
    assert len(warm) == 2
    # marked as such on the machines themselves
    assert warm.run('cd "$ECSHELL_STATE_DIR/markers" && test -e free.web && test -e pool.web').all_ok

    machine = pool.take(user="alice")
    assert machine.name in warm.names
    have = machine.markers()
    assert "free.web" not in have and have["taken.web"].note == "handed out to alice"
    assert machine.run('cat "$ECSHELL_STATE_DIR/../owner"').output == "alice\n"
    assert counts([machine], "base") == {machine.name: 1}  # only the last step ran at hand-out

    assert pool.wait(timeout=300)  # the background refill
    status = pool.status()
    assert status == {"free": 2, "configuring": 0, "taken": 1, "broken": 0}
    refilled = pool.scan()["free"]
    assert machine.name not in refilled.names
    assert set(counts(refilled, "base").values()) == {1}

    # a new shell rebuilds the list from the machines, and never hands out alice's machine
    with Cluster(LocalFabric()) as again:
        rebuilt = again.free_list("web", recipe=recipe, last=owner_step, size=2)
        groups = rebuilt.scan()
        assert groups["taken"].names == [machine.name]
        assert groups["free"].names == refilled.names
        other = rebuilt.take(user="bob", refill=False)
        assert other.name != machine.name
        assert other.markers()["taken.web"].note == "handed out to bob"


def test_two_takers_at_once_get_different_machines(cluster):
    pool = cluster.free_list("pair", size=2, recipe=[])
    pool.fill()
    got, errors = [], []

    def take(user):
        try:
            got.append(pool.take(user=user, refill=False))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=take, args=(u,)) for u in ("ann", "ben")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len({m.name for m in got}) == 2
    with pytest.raises(FreeListEmpty, match="no warm machine"):
        pool.take(user="cid", refill=False, timeout=0)


def test_failed_recipe_marks_the_machine_broken_not_free(cluster):
    pool = cluster.free_list("shaky", size=1, recipe=[Shell("echo failing on purpose; exit 7")])
    assert len(pool.fill()) == 0
    groups = pool.scan()
    assert len(groups["broken"]) == 1 and not groups["free"]
    broken = groups["broken"][0]
    assert "exit 7" in pool.problems[broken.name]
    assert "exit 7" in broken.markers()["broken.shaky"].note


RECIPE = """
from ecshell import Shell, once
COUNT = {count!r}
HANG = {hang!r}
TAG = {tag!r}
recipe = [
    once("base")(Shell(COUNT.format(name="base"))),
    once("slow")(Shell(COUNT.format(name="slow")
                       + 'if [ -e ' + HANG + ' ]; then touch "$ECSHELL_STATE_DIR/../started"; sleep 300; fi # ' + TAG)),
    once("final")(Shell(COUNT.format(name="final"))),
]
"""

SHELL = """
import sys
sys.path.insert(0, {scripts!r})
from ecshell import Cluster, LocalFabric
from recipe import recipe
cluster = Cluster(LocalFabric())
cluster.free_list("build", size=2, recipe=recipe).fill()
print("filled: the test expected to kill this shell before", flush=True)
"""


@pytest.fixture
def doomed_shell(tmp_path, isolated_home):
    """Another shell (a Python process) filling free list 'build'; the test kills it mid-recipe."""
    scripts = tmp_path / "scripts"  # not tmp_path: the ecshell home there would shadow the package
    scripts.mkdir()
    tag = "ecsh5-" + secrets.token_hex(4)
    hang = tmp_path / "hang"
    hang.write_text("")
    (scripts / "recipe.py").write_text(RECIPE.format(count=COUNT, hang=str(hang), tag=tag))
    (scripts / "shell.py").write_text(SHELL.format(scripts=str(scripts)))
    proc = subprocess.Popen([sys.executable, str(scripts / "shell.py")], stdout=subprocess.PIPE, text=True)
    sys.path.insert(0, str(scripts))
    try:
        import recipe

        yield proc, recipe.recipe, hang, tag
    finally:
        sys.path.remove(str(scripts))
        sys.modules.pop("recipe", None)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _kill_tagged(tag)


def _kill_tagged(tag):
    # The killed shell's remote commands were started without a PTY, so they outlive its
    # connection; they are found by the tag in their command line and killed with their group.
    for pid in remote_processes(tag):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def test_kill_a_shell_mid_recipe_and_rebuild_from_the_machines(isolated_home, cluster, doomed_shell):
    proc, recipe, hang, tag = doomed_shell
    home = os.environ["ECSHELL_HOME"]
    deadline = time.monotonic() + 240  # a bound on waiting for the other shell, not a speed check
    while len(glob.glob(os.path.join(home, "local", "*", "started"))) < 2:
        assert proc.poll() is None, "the other shell finished before it could be killed"
        assert time.monotonic() < deadline, "the other shell never reached the slow step"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _kill_tagged(tag)
    hang.unlink()

    with Cluster(LocalFabric()) as again:  # a new shell: only the fabric and the machines to go on
        assert list(FreeList.discover(again)) == ["build"]
        pool = again.free_list("build", size=2, recipe=recipe)
        groups = pool.scan()
        assert len(groups["configuring"]) == 2 and not groups["free"]
        members = groups["configuring"]
        for have in members.markers().values():
            assert "base" in have and "slow" not in have
            assert have["lock.once.slow"].by.endswith(f"pid {proc.pid}")
            assert have["lock.once.slow"].holder_gone()

        # the dead shell's claim on the slow step is reported, not broken silently
        assert len(pool.fill()) == 0
        assert len(again.machines) == 2  # nothing new was launched in their place
        for name in members.names:
            assert f"pid {proc.pid}" in pool.problems[name]
            assert "break_lock('once.slow')" in pool.problems[name]
        assert pool.status()["configuring"] == 2

        # a shell with another recipe does not touch them
        other = FreeList(again, "build", size=0, recipe=["echo another recipe"])
        assert len(other.fill()) == 0
        assert all("another recipe" in other.problems[name] for name in members.names)

        for machine in members:
            assert machine.break_lock("once.slow").by.endswith(f"pid {proc.pid}")
        warm = pool.fill()
        assert warm.names == members.names
        assert counts(warm, "base") == {n: 1 for n in warm.names}   # done before the kill: not redone
        assert counts(warm, "slow") == {n: 2 for n in warm.names}   # cut short, then run again
        assert counts(warm, "final") == {n: 1 for n in warm.names}
        assert pool.take(user="dana", refill=False).markers()["taken.build"].note == "handed out to dana"
