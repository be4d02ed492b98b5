"""``ecshell --fabric local`` in a real terminal: tmux, keys typed, the screen read back.

The tmux server runs on a private socket (``tmux -L <unique>``) and is
killed when the test ends; every machine the shell launched is terminated
by pid from the test's isolated ECSHELL_HOME, passed or failed.
"""

import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from ecshell import LocalFabric

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (bootstrap.sh installs it)")

#: Seconds to wait for something to appear on the screen (generous: 2 busy cores).
PATIENCE = 60


def ecshell_command():
    """The installed ``ecshell`` script next to this Python, else the module."""
    script = os.path.join(os.path.dirname(sys.executable), "ecshell")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "ecshell.shell.console"]


class Terminal:
    def __init__(self, socket):
        self.socket = socket

    def tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True,
                              capture_output=True, text=True).stdout

    def start(self, command, env):
        line = " ".join(["env", *(f"{k}={v}" for k, v in env.items()), *command])
        self.tmux("-f", "/dev/null", "new-session", "-d", "-x", "160", "-y", "50", line)
        self.tmux("set-option", "-g", "remain-on-exit", "on")
        self.tmux("set-option", "-g", "history-limit", "5000")

    def type(self, text):
        self.tmux("send-keys", "-l", text)
        self.tmux("send-keys", "Enter")

    def screen(self):
        return self.tmux("capture-pane", "-p", "-J", "-S", "-5000")

    def wait_for(self, pattern, after=0):
        """The screen text once ``pattern`` appears past offset ``after``; fails with the screen."""
        until = time.monotonic() + PATIENCE
        while True:
            text = self.screen()
            found = re.search(pattern, text[after:], re.DOTALL)
            if found:
                return text, after + found.end()
            if time.monotonic() > until:
                pytest.fail(f"{pattern!r} did not appear within {PATIENCE}s; the screen:\n{text}")
            time.sleep(0.2)

    def kill(self):
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], check=False, capture_output=True)


@pytest.fixture
def terminal(isolated_home):
    term = Terminal(f"ecshell-test-{uuid.uuid4().hex[:12]}")
    try:
        yield term
    finally:
        term.kill()
        fabric = LocalFabric()
        fabric.terminate([p.id for p in fabric.discover()])


def test_launch_broadcast_fail_interrupt_and_leave(terminal, isolated_home):
    env = {"HOME": os.environ["HOME"], "ECSHELL_HOME": os.environ["ECSHELL_HOME"], "TERM": "xterm-256color",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    terminal.start(ecshell_command() + ["--fabric", "local"], env)
    _, at = terminal.wait_for(r"In \[1\]:")

    terminal.type("%launch 3")
    _, at = terminal.wait_for(r"<MachineSet node-\[0-2\] \(3\)>.*?In \[2\]:", at)

    terminal.tmux("send-keys", "-l", "%on node-")  # Tab: prompt_toolkit's menu offers targets, not Python names
    terminal.tmux("send-keys", "Tab")
    screen, _ = terminal.wait_for(r"%on node-\s.*(?=.*node-0)(?=.*node-1)(?=.*node-2)", at)
    menu = screen[at:]
    assert "node-*" in menu and "abs" not in menu and "breakpoint" not in menu
    terminal.tmux("send-keys", "C-c")  # close the menu
    terminal.tmux("send-keys", "C-c")  # drop the half-typed line
    _, at = terminal.wait_for(r"In \[2\]: *\n", screen.rfind("In [2]:"))

    terminal.type("%on all hostname")
    screen, at = terminal.wait_for(r"3 ok, 0 failed -- hostname.*?In \[3\]:", at)
    assert "---------------- node-[0-2] (3) ok" in screen  # one folded header for three hosts

    terminal.type("%on all 'exit 3'")
    screen, at = terminal.wait_for(r"0 ok, 3 failed -- exit 3.*?In \[4\]:", at)
    assert "---------------- node-[0-2] (3) exit 3" in screen

    terminal.type("%on all sleep 30")
    terminal.wait_for(r"running: node-\[0-2\]", at)  # the live progress line (erased later: keep `at`)
    terminal.tmux("send-keys", "C-c")
    screen, at = terminal.wait_for(r"interrupted node-\[0-2\] \(3\).*?0 ok, 3 failed -- sleep 30.*?In \[5\]:", at)
    assert "(interrupted: results shown are those that arrived)" in screen

    terminal.type("%on failed echo again")  # the shell is usable: re-target the interrupted hosts
    _, at = terminal.wait_for(r"3 ok, 0 failed -- echo again.*?In \[6\]:", at)

    assert "ecshell: 3 running (local)" in terminal.screen()  # the toolbar
    colour = terminal.tmux("capture-pane", "-p", "-e", "-J", "-S", "-5000")
    headers = [line for line in colour.splitlines() if "---------------- node-[0-2] (3)" in line]
    assert headers and all("\x1b[" in line for line in headers)  # folded headers are coloured

    terminal.type("%terminate all")  # all: the shell asks first
    _, at = terminal.wait_for(r"Terminate 3 machines node-\[0-2\]\? \[y/N\]", at)
    terminal.type("n")
    _, at = terminal.wait_for(r"nothing terminated.*?In \[7\]:", at)

    terminal.type("exit")  # machines still run: the shell says so on the way out
    screen, at = terminal.wait_for(r"3 machines still running \(node-\[0-2\]\)", at)


def test_leaving_the_shell_never_hangs(terminal, isolated_home, tmp_path):
    """``exit`` returns every time, after the executor, the pool, SFTP and a Ctrl-C were used.

    A thread started while the interpreter shuts down never runs, and
    ``Thread.start`` then waits forever (seen from a paramiko Channel's
    ``__del__`` closing an executor's channel at exit).
    """
    env = {"HOME": os.environ["HOME"], "ECSHELL_HOME": os.environ["ECSHELL_HOME"], "TERM": "xterm-256color",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    payload = tmp_path / "payload.txt"
    payload.write_text("payload\n")
    for round in range(4):
        terminal.kill()
        terminal.start(ecshell_command() + ["--fabric", "local"], env)
        _, at = terminal.wait_for(r"In \[1\]:")
        if round == 0:
            terminal.type("%launch 3")
            _, at = terminal.wait_for(r"<MachineSet node-\[0-2\] \(3\)>.*?In \[2\]:", at)
        for _ in range(3):  # the second command on a connection starts the executor; the third uses it
            terminal.type("%on all hostname")
            _, at = terminal.wait_for(r"3 ok, 0 failed -- hostname.*?In \[\d+\]:", at)
        # The local machines share this filesystem: each puts its own file ({name}: magics expand nothing).
        terminal.type(f"%put {payload} {tmp_path}/put-{round}-{{name}}.txt")
        _, at = terminal.wait_for(r"3 ok, 0 failed.*?In \[\d+\]:", at)
        terminal.type(f"%get {tmp_path}/put-{round}-node-0.txt {tmp_path}/got")
        _, at = terminal.wait_for(r"3 ok, 0 failed.*?In \[\d+\]:", at)
        terminal.type("%on all sleep 30")
        terminal.wait_for(r"running: node-\[0-2\]", at)
        terminal.tmux("send-keys", "C-c")
        _, at = terminal.wait_for(r"0 ok, 3 failed -- sleep 30.*?In \[\d+\]:", at)
        terminal.type("exit")
        until = time.monotonic() + 30
        while terminal.tmux("display-message", "-p", "#{pane_dead}").strip() != "1":
            if time.monotonic() > until:
                pytest.fail(f"round {round}: the shell did not exit within 30s; the screen:\n{terminal.screen()}")
            time.sleep(0.2)
