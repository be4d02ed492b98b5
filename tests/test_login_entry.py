"""The sh entry point sshd runs as the login shell needs no Python for a command (issue 15, item 1).

Each test writes the entry point the installer writes (entry_script) for this
venv's Python, and runs it as sshd does: ``<entry> -c CMD``, or with no
arguments for a login. The reference is /bin/sh as the login shell.
"""

import os
import pty
import subprocess
import sys

import pytest

import ecshell.remote.login
from ecshell.remote.loginshell import entry_script

HOSTILE_ENV = {b"PATH": b"/usr/bin:/bin", b"LANG": b"C", b"ONLY_THIS": b"x y", b"BAD": b"\xff\xfe",
               b"SHLVL": b"7", b"PWD": b"/nonexistent", b"IFS": b"x", b"ENV": b"/nonexistent",
               b"PY": b"kept", b"arg": b"kept", b"TERM": b"xterm"}


@pytest.fixture
def entry(tmp_path):
    def write(python=sys.executable):
        path = tmp_path / "bin" / "ecshell-login"
        path.parent.mkdir(exist_ok=True)
        path.write_text(entry_script(python, ecshell.remote.login.__file__))
        path.chmod(0o755)
        return str(path)

    return write


@pytest.fixture
def broken_site(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text("raise SystemExit('broken on purpose')\n")
    return str(tmp_path / "site")


def run(argv, env=HOSTILE_ENV, **kwargs):
    return subprocess.run(argv, env=env, capture_output=True, cwd="/tmp", timeout=60, **kwargs)


def test_a_command_gives_what_sh_gives_byte_for_byte(entry):
    login = entry()
    script = 'cat /proc/$$/comm; echo "$0"; env -0; echo; echo err >&2; exit 5'
    # the reference: /bin/sh as the login shell, started as sshd starts it (argv[0] "sh")
    ours, reference = run([login, "-c", script]), run(["sh", "-c", script], executable="/bin/sh")
    assert ours.returncode == reference.returncode == 5
    assert ours.stderr == reference.stderr == b"err\n"
    assert ours.stdout == reference.stdout  # the environment too, in sh's own order
    assert ours.stdout.startswith(b"sh\nsh\n")


def test_signals_stdin_and_arguments_as_under_sh(entry):
    login = entry()
    assert run([login, "-c", "kill -TERM $$"]).returncode == run(["/bin/sh", "-c", "kill -TERM $$"]).returncode
    done = run([login, "-c", "yes | head -n 2; cat"], input=b"from stdin\n")
    assert (done.stdout, done.stderr, done.returncode) == (b"y\ny\nfrom stdin\n", b"", 0)
    done = run([login, "-c", 'echo "$0:$1"', "name", "arg"])
    assert done.stdout == b"name:arg\n"


@pytest.mark.parametrize("poison", ["home", "sitecustomize", "no python"])
def test_a_command_needs_no_python(entry, broken_site, poison):
    """The issue's probes: PYTHONHOME=/nonexistent, a broken sitecustomize, the venv's Python gone."""
    env = dict(HOSTILE_ENV)
    login = entry()
    if poison == "home":
        env[b"PYTHONHOME"] = b"/nonexistent"
    elif poison == "sitecustomize":
        env[b"PYTHONPATH"] = broken_site.encode()
    else:
        login = entry(python="/nonexistent/venv/bin/python")
    done = run([login, "-c", "echo ok; exit 3"], env=env)
    assert (done.stdout, done.stderr, done.returncode) == (b"ok\n", b"", 3)
    # no terminal and no command: sh reads the script on stdin, Python or not
    done = run([login], env=env, input=b"echo from-stdin; exit 4\n")
    assert (done.stdout, done.stderr, done.returncode) == (b"from-stdin\n", b"", 4)


def test_without_a_terminal_a_login_reads_stdin_as_a_login_sh(entry):
    done = run([entry()], input=b'echo "$0"; exit 3\n')
    assert (done.stdout, done.returncode) == (b"-sh\n", 3)


def on_a_terminal(argv, typed, env=HOSTILE_ENV):
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(argv[0], argv, env)
    out = b""
    try:
        os.write(fd, typed)
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
    return out, os.waitstatus_to_exitcode(status)


def test_a_terminal_login_without_a_python_that_starts_is_a_plain_login_sh(entry):
    login = entry(python="/nonexistent/venv/bin/python")
    out, code = on_a_terminal([login], b"echo sum=$((6*7)); exit 4\n")
    assert b"/nonexistent/venv/bin/python cannot start; this is a plain /bin/sh instead" in out
    assert b"sum=42" in out and code == 4


def test_a_dumb_terminal_gets_a_login_sh(entry):
    out, code = on_a_terminal([entry()], b"echo shell=$0; exit 6\n", env={**HOSTILE_ENV, b"TERM": b"dumb"})
    assert b"shell=-sh" in out and code == 6
