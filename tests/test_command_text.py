"""The shell sees exactly the operator's command, and a timeout still kills what it started.

The kill token (ECSHELL_RUN) travels in the environment, never in the
command's text: on the channel path as an SSH ``env`` request (honoured
where sshd's AcceptEnv allows it; LocalFabric's machines allow it), on the
executor by the executor itself. Without AcceptEnv, a kill finds the
command as the session sshd started for its channel.
"""

import os
import pathlib
import re
import signal
import threading
import time

import pytest

from procs import remote_processes

PATHS = [("channel", True), ("executor", False), ("executor", True)]


def _use(cluster, m, mode, shortcut):
    cluster.settings.executor, cluster.settings.executor_shortcut = mode, shortcut
    assert m.run("true").ok and m.run("true").ok  # the executor is up where asked


def test_the_shell_sees_exactly_the_command_on_every_path(cluster, machines):
    """What ``ssh host CMD`` gives (bash -c CMD): errors on line 1, $_ is bash, no PIPESTATUS yet."""
    (m,) = machines(1)
    cases = {
        "nonexistent-cmd-x": b"bash: line 1: nonexistent-cmd-x: command not found\n",
        "echo $LINENO": b"1\n",
        'printf "%s|" "$_" "${PIPESTATUS[@]}"; echo': b"bash|\n",
        'printf "%s\\n" "$BASH_EXECUTION_STRING"': b'printf "%s\\n" "$BASH_EXECUTION_STRING"\n',
        "cd /nonexistent-dir": b"bash: line 1: cd: /nonexistent-dir: No such file or directory\n",
        "echo a\nnonexistent-cmd-y": b"a\nbash: line 2: nonexistent-cmd-y: command not found\n",
        "if then": b"bash: -c: line 1: syntax error near unexpected token `then'\n"
                   b"bash: -c: line 1: `if then'\n",
    }
    for mode, shortcut in PATHS:
        _use(cluster, m, mode, shortcut)
        for command, expected in cases.items():
            r = m.run(command)
            assert r.output_bytes == expected, (mode, shortcut, command, r.output_bytes)
        r = m.run("printenv ECSHELL_RUN")  # the token is still there, in the environment
        assert re.fullmatch(r"[0-9a-f]{16}\n", r.output), (mode, shortcut, r)


def test_a_result_says_which_path_ran_it(cluster, machines, tmp_path):
    (m,) = machines(1)
    seen = {}
    for mode, shortcut in PATHS:
        _use(cluster, m, mode, shortcut)
        seen[mode, shortcut] = (m.run("uname").via, m.run("uname; true").via, m.run("uname -z").via)
    assert seen == {("channel", True): ("channel",) * 3,
                    ("executor", False): ("executor",) * 3,
                    ("executor", True): ("shortcut", "executor", "shortcut")}
    local = tmp_path / "f"
    local.write_text("x")
    (put,) = cluster.machines.put(str(local), "/tmp/ecshell-via-test").results()
    assert put.via == "sftp"
    assert cluster.machines.run("true", timeout=5).results()[0].via in ("channel", "executor", "shortcut")


def _refuse_env_requests(m):
    """Take AcceptEnv out of the machine's sshd_config, as on a stock sshd: the token cannot travel.

    Call with the channel path on (``printenv`` must not run on the executor, which sets the token itself).
    """
    config = pathlib.Path(os.environ["ECSHELL_HOME"]) / "local" / m.id / "sshd_config"
    text = config.read_text()
    assert "AcceptEnv ECSHELL_RUN" in text
    config.write_text(text.replace("AcceptEnv ECSHELL_RUN", ""))
    os.kill(m.prototype.extra["pid"], signal.SIGHUP)  # sshd re-execs itself and re-reads its config
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # until a new connection is served by the new config
        m.close()
        if m.run("printenv ECSHELL_RUN").exit_code == 1:
            return
        time.sleep(0.1)
    raise AssertionError("the machine's sshd did not come back after SIGHUP")


def test_without_accept_env_a_timeout_kills_its_command_and_only_it(cluster, machines):
    """Two commands on one connection: the one that times out dies with its children, the other runs on."""
    cluster.settings.executor = "channel"
    (m,) = machines(1)
    _refuse_env_requests(m)
    tag = f"ecshell-text-{m.id}"
    results = {}

    def neighbour():
        results["other"] = m.run(f"sleep 3 # {tag}-other\necho survived")

    thread = threading.Thread(target=neighbour)
    thread.start()
    time.sleep(0.5)  # the neighbour's session is up first
    r = m.run(f"(sleep 301 # {tag}-child\n) & sleep 302 # {tag}-parent\n", timeout=1)
    thread.join()
    assert r.error == "timeout" and "killed on the machine" in r.message, r
    assert results["other"].ok and results["other"].output == "survived\n", results["other"]
    deadline = time.monotonic() + 3
    while remote_processes(f"{tag}-c") + remote_processes(f"{tag}-p") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert remote_processes(f"{tag}-c") + remote_processes(f"{tag}-p") == []
    # With the executor (the default), the token needs no AcceptEnv: the executor sets it.
    cluster.settings.executor = "executor"
    assert m.run("true").ok
    r = m.run(f"sleep 303 # {tag}-executor\n", timeout=1)
    assert r.error == "timeout" and "killed on the machine" in r.message, r
    assert remote_processes(f"{tag}-executor") == []


@pytest.mark.parametrize("accept_env", [True, False])
def test_an_interrupted_command_is_killed_with_or_without_accept_env(cluster, machines, accept_env):
    import ecshell.ssh.transport as transport

    cluster.settings.executor = "channel"
    (m,) = machines(1)
    if not accept_env:
        _refuse_env_requests(m)
    tag = f"ecshell-text-int-{m.id}-{accept_env}"
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C
    rs = cluster.machines.run(f"sleep 304 # {tag}\n")
    assert rs.interrupted
    (r,) = rs.results()
    assert r.error == "interrupted" and "killed on the machine" in r.message, r
    deadline = time.monotonic() + transport.KILL_TIMEOUT
    while remote_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert remote_processes(tag) == []


@pytest.mark.parametrize("mode", ["channel", "executor"])
def test_a_command_that_exits_before_its_input_is_sent_gives_its_own_exit(cluster, machines, mode, monkeypatch):
    """As ssh does: stdin the command never read is dropped, and its exit status is the result.

    The channel closed under the input being sent, and that was reported as
    'the server refused the command' (unreachable), for a command that ran.
    The input is held back here until the command has surely exited.
    """
    import ecshell.ssh.channel
    import ecshell.ssh.executor
    import ecshell.ssh.transport

    def late(send, finish, data):
        time.sleep(0.3)
        ecshell.ssh.transport.send_input(send, finish, data)

    monkeypatch.setattr(ecshell.ssh.channel, "send_input", late)
    monkeypatch.setattr(ecshell.ssh.executor, "send_input", late)
    cluster.settings.executor = mode
    (m,) = machines(1)
    assert m.run("true").ok and m.run("true").ok
    for data in (b"hello\nworld\n", b"x" * 200_000):
        r = m.run("exit 3", input=data)
        assert (r.exit_code, r.error) == (3, "exit"), r.message
