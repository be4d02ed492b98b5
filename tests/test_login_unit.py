"""ecshell-login without sshd: the standard-library-only path, shipped as a lone file (issue 6)."""

import os
import shutil
import subprocess
import sys

import pytest

import ecshell.remote.login

LOGIN = ecshell.remote.login.__file__


def test_importing_it_loads_no_third_party_module():
    code = ("import sys, ecshell.remote.login; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'IPython', 'traitlets', 'paramiko', 'prompt_toolkit', 'boto3', 'pygments', 'ClusterShell'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.fixture
def lone(tmp_path):
    """login.py copied alone into an empty directory, run by a Python that sees no site-packages."""
    path = tmp_path / "login.py"
    shutil.copy(LOGIN, path)
    return [sys.executable, "-I", "-S", str(path)]


def test_shipped_alone_it_runs_commands_as_sh(lone):
    done = subprocess.run(lone + ["-c", 'echo $((6*7)); echo "$0:$1" >&2; exit 5', "name", "arg"],
                          capture_output=True)
    assert (done.stdout, done.stderr, done.returncode) == (b"42\n", b"name:arg\n", 5)


def test_without_a_terminal_it_reads_commands_from_stdin(lone):
    done = subprocess.run(lone, input=b"echo $0; exit 3\n", capture_output=True)
    assert (done.stdout, done.returncode) == (b"-sh\n", 3)  # no arguments: a login, as sshd starts it


def test_the_environment_reaches_sh_unchanged_even_in_the_c_locale(lone):
    env = {"PATH": "/usr/bin:/bin", "ONLY_THIS": "x y", "LANG": "C"}
    done = subprocess.run(lone + ["-c", "env"], env=env, capture_output=True, text=True, check=True)
    seen = dict(line.split("=", 1) for line in done.stdout.splitlines())
    seen.pop("PWD", None)  # sh's own
    assert seen == env  # no LC_CTYPE from Python's locale coercion


def test_without_ipython_a_terminal_login_falls_back_and_says_why(lone):
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: a login on a terminal, with no IPython to be found
        os.execv(lone[0], lone)
    try:
        os.write(fd, b"echo sum=$((6*7)); exit 4\n")
        out = b""
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
    finally:
        _, status = os.waitpid(pid, 0)
    assert b"IPython did not start (ModuleNotFoundError: No module named 'IPython')" in out
    assert b"sum=42" in out
    assert os.waitstatus_to_exitcode(status) == 4


def test_markers_helpers_follow_the_state_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("ECSHELL_STATE_DIR", str(tmp_path))
    ecshell.remote.login.mark("configured", note="by a test")
    assert list(ecshell.remote.login.markers()) == ["configured"]
    with open(tmp_path / "markers" / "configured") as f:
        assert "note=by a test\n" in f.read()
    with pytest.raises(ValueError):
        ecshell.remote.login.mark("../escape")
    assert ecshell.remote.login.unmark("configured") and not ecshell.remote.login.unmark("configured")
    assert "no markers in" in ecshell.remote.login.status()


def test_install_refuses_bad_arguments_before_touching_a_machine():
    from ecshell.errors import ArgumentError
    from ecshell.loginshell import install_login_shell

    for kwargs, words in (({"user": "Not A User"}, "login name"), ({"user": "ops", "wheels": "pypi"}, "'ship'"),
                          ({"user": "ops", "deps": "some"}, "'login'"), ({"user": "ops", "prefix": "opt"}, "absolute")):
        with pytest.raises(ArgumentError, match=words):
            install_login_shell([], **kwargs)


def test_local_fabric_machines_are_this_host_and_refused(machines):
    """Installing on a LocalFabric machine would change this host's own account: refused."""
    from ecshell.errors import ArgumentError
    from ecshell.loginshell import install_login_shell

    web = machines(1, name="web")
    with pytest.raises(ArgumentError, match="LocalFabric machines, i.e. this host"):
        install_login_shell(web, user="root")
