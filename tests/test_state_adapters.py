"""Commands wrapped by adapters (once, retry, timeout, sudo), recipes, and diagnostics, on real machines."""

import os
import secrets
import shutil
import subprocess
import threading

import pytest

from procs import remote_processes
from ecshell import ErrorKind, MachineSet, Put, Shell, once, register_diagnostic, retry, service, sudo, timeout
from ecshell.diagnostics import Diagnostic, unregister_diagnostic
from ecshell.errors import ArgumentError

# A counter kept next to the machine's state directory (each local machine has its own).
COUNT = 'f="$ECSHELL_STATE_DIR/../{name}.count"; echo x >> "$f"; n=$(wc -l < "$f"); '


def counted(name, rest="true"):
    return Shell(COUNT.format(name=name) + rest)


def counts(machines, name):
    rs = machines.run(f'wc -l < "$ECSHELL_STATE_DIR/../{name}.count" 2>/dev/null || echo 0')
    return {r.name: int(r.output.strip()) for r in rs.results()}


def test_once_run_twice_does_the_work_once(machines):
    web = machines(2, name="web")
    step = once("installed")(counted("install"))
    first = web.execute(step)
    assert first.all_ok and not any(r.detail["skipped"] for r in first.results())
    second = web.execute(step)
    assert second.all_ok and all(r.detail["skipped"] for r in second.results())
    assert "skipped: installed set" in second["web-0"].message
    assert counts(web, "install") == {"web-0": 1, "web-1": 1}
    assert web.run('test -e "$ECSHELL_STATE_DIR/markers/installed"').all_ok


def test_once_from_two_threads_does_the_work_once(machines):
    machine = machines(1)[0]
    step = once("slow")(counted("slow", "sleep 1"))
    results = []
    threads = [threading.Thread(target=lambda: results.append(machine.execute(step))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts(MachineSet([machine]), "slow") == {machine.name: 1}
    # one did the work; the other either found it done or found it being done, and said by whom
    ran = [r for r in results if r.ok and not r.detail.get("skipped")]
    assert len(ran) == 1
    other = [r for r in results if r is not ran[0]][0]
    assert other.detail.get("skipped") or (
        "being done by" in other.message and "break_lock('once.slow')" in other.message)


def test_once_does_not_mark_a_failed_step(machines):
    machine = machines(1)[0]
    step = once("flaky")(counted("flaky", '[ "$n" -ge 2 ]'))
    assert machine.execute(step).error is ErrorKind.EXIT
    assert "flaky" not in machine.markers() and "lock.once.flaky" not in machine.markers()
    assert machine.execute(step).ok
    assert "flaky" in machine.markers()


def test_once_cut_short_by_a_timeout_gives_its_lock_back(machines):
    machine = machines(1)[0]
    result = machine.execute(timeout(0.5)(once("long")(Shell("sleep 60"))))
    assert result.error is ErrorKind.TIMEOUT
    have = machine.markers()
    assert "long" not in have and "lock.once.long" not in have
    assert machine.execute(once("long")(Shell("true"))).ok
    assert "long" in machine.markers()


def test_retry_recovers_from_a_failing_first_try(machines):
    web = machines(2, name="web")
    rs = web.execute(retry(3, backoff=0.01)(counted("try", '[ "$n" -ge 2 ]')))
    assert rs.all_ok
    assert [r.detail["tries"] for r in rs.results()] == [2, 2]
    assert "try 2 of 3" in rs["web-0"].message
    assert counts(web, "try") == {"web-0": 2, "web-1": 2}


def test_retry_gives_up_and_respects_error_kinds(machines):
    machine = machines(1)[0]
    result = machine.execute(retry(2, backoff=0)(counted("never", "exit 3")))
    assert result.exit_code == 3 and result.detail["tries"] == 2
    only_timeouts = retry(3, backoff=0, on="timeout")(counted("kinds", "exit 4"))
    assert machine.execute(only_timeouts).detail["tries"] == 1
    with pytest.raises(ArgumentError):
        retry(0)
    with pytest.raises(ArgumentError):
        timeout(-1)


def test_timeout_kills_the_command_and_composes_with_retry(machines):
    machine = machines(1)[0]
    tag = "ecsh5-" + secrets.token_hex(4)
    result = machine.execute(timeout(0.5)(Shell(f"sleep 60 # {tag}")))
    assert result.error is ErrorKind.TIMEOUT and "no exit after 0.5s" in result.message
    assert "killed on the machine" in result.message
    # per try: each of the two tries times out on its own
    both = machine.execute(retry(2, backoff=0)(timeout(0.3)(Shell(f"sleep 60 # {tag}"))))
    assert both.error is ErrorKind.TIMEOUT and both.detail["tries"] == 2
    # around the retries: the whole thing stops at the deadline, whatever the tries left
    whole = machine.execute(timeout(0.5)(retry(100, backoff=0.05)(Shell("exit 1"))))
    assert whole.error in (ErrorKind.TIMEOUT, ErrorKind.EXIT) and whole.detail["tries"] < 100
    # process groups are killed a second after TERM at the latest; wait for that, not a fixed time
    leftover = remote_processes(tag)
    if leftover:
        for pid in leftover:
            assert machine.run(f"while kill -0 {pid} 2>/dev/null; do sleep 0.1; done", timeout=30).ok


def test_adapters_compose_in_any_order(machines):
    machine = machines(1)[0]
    a = once("composed-a")(retry(2, backoff=0)(timeout(30)(counted("compose-a"))))
    b = timeout(30)(retry(2, backoff=0)(once("composed-b")(counted("compose-b"))))
    for step in (a, b):
        assert machine.execute(step).ok and machine.execute(step).ok
    assert counts(MachineSet([machine]), "compose-a") == {machine.name: 1}
    assert "once('composed-a', retry(2" in repr(a)
    with pytest.raises(ArgumentError, match="sudo applies to shell commands"):
        sudo("root")(Put(__file__, "/tmp/x"))


def test_recipe_stops_a_machine_at_its_first_failure(machines):
    web = machines(2, name="web")
    web["web-1"].mark("breaks")
    recipe = [
        counted("step1"),
        Shell('! test -e "$ECSHELL_STATE_DIR/markers/breaks"'),
        "echo third",
    ]
    outcome = web.apply(recipe)
    assert outcome.ok.names == ["web-0"] and list(outcome.failed) == ["web-1"]
    assert len(outcome.steps) == 3 and outcome.steps[2].machines.names == ["web-0"]
    assert outcome.steps[2]["web-0"].output == "third\n"


@pytest.fixture
def password_user():
    """A real user whose sudo rule needs a password; removed afterwards, whatever happens."""
    if os.geteuid() != 0 or shutil.which("sudo") is None or shutil.which("useradd") is None:
        pytest.skip("needs root, sudo and useradd (bootstrap.sh installs sudo)")
    name = "ecsh5" + secrets.token_hex(3)
    rule = f"/etc/sudoers.d/{name}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{secrets.token_hex(16)}\n", text=True, check=True)
        with open(rule, "w") as f:
            f.write(f"{name} ALL=(ALL:ALL) ALL\n")  # no NOPASSWD: sudo must ask for a password
        os.chmod(rule, 0o440)
        yield name
    finally:
        if os.path.exists(rule):
            os.unlink(rule)
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", "--remove", name], capture_output=True)


def test_sudo_runs_as_the_user_and_fails_fast_where_a_password_is_needed(machines, password_user):
    machine = machines(1)[0]
    as_root = machine.execute(sudo("root")(Shell("id -un")))
    assert as_root.ok and as_root.output == "root\n"
    as_user = machine.execute(sudo(password_user)(Shell("id -un; echo \"$HOME\"")))
    assert as_user.ok and as_user.output.split() == [password_user, f"/home/{password_user}"]
    # the password user asks sudo for root: no terminal, no password, so -n fails at once
    asks = machine.execute(sudo(password_user)(sudo("root")(Shell("id -un"))))
    assert asks.error is ErrorKind.EXIT and asks.exit_code == 1
    assert asks.detail["sudo"] == "password"
    assert "needs a password" in asks.message and "NOPASSWD" in asks.message
    # and wrapped in a timeout, it is sudo's answer that comes back, not the timeout
    bounded = machine.execute(timeout(60)(sudo(password_user)(sudo("root")(Shell("id -un")))))
    assert bounded.error is ErrorKind.EXIT and bounded.detail["sudo"] == "password"


def test_diagnostics_run_together_and_fold_into_the_machine(machines):
    web = machines(2, name="web")
    web.mark("configured")
    register_diagnostic("machine-name", "echo \"$ECSHELL_MACHINE\"", healthy=lambda v: v.startswith("web-"))
    register_diagnostic(Diagnostic("bad-parser", "echo 12", parse=lambda text: 1 / 0))
    try:
        seen = web.diagnose()
    finally:
        unregister_diagnostic("machine-name")
        unregister_diagnostic("bad-parser")
    assert seen.results.all_ok
    for name, checks in seen.items():
        assert {"disk", "load", "memory", "machine-name", "bad-parser"} <= set(checks)
        assert checks["disk"].ok and 0 <= checks["disk"].value["use_pct"] <= 100
        assert checks["memory"].value["total_kb"] > 0
        assert checks["load"].value["cores"] >= 1
        assert checks["machine-name"].ok and checks["machine-name"].value == name
        assert not checks["bad-parser"].ok and "ZeroDivisionError" in checks["bad-parser"].message
        facts = web[name][0].facts
        assert "configured" in facts["markers"] and "machine-name" in facts["diagnostics"]
    one = web[0].diagnose("disk", service("sshd"), service("no-such-service-ecsh5"))
    assert one["service:sshd"].ok and one["service:sshd"].value in ("active", "running")
    assert not one["service:no-such-service-ecsh5"].ok and one["service:no-such-service-ecsh5"].exit_code == 3
    with pytest.raises(ArgumentError, match="no diagnostic named"):
        web.diagnose("nope")
    hung = web.diagnose(Diagnostic("hangs", "sleep 60"), timeout=0.5)
    assert hung["web-0"] is None and hung.failed["web-0"].error is ErrorKind.TIMEOUT
