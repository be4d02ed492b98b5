"""ecshell-login as a real user's login shell, behind a real sshd.

The module builds one "machine": an OpenSSH sshd on a free loopback port with
a generated host key, where root (the operator's connection, as on a
LocalFabric machine) and a user account created here for the module log in
with a generated key. ``cluster.install_login_shell`` installs ecshell into a
venv under a temporary prefix once (the slow part: pip); tests that change
the user's shell put it back. Everything is undone at the end, even on
failure: sshd and every process under it stopped by pid, the user removed
with its home, every /etc/shells line naming this module's directory
removed (so /etc/shells is byte for byte what it was, and a concurrent run
of this module elsewhere keeps its own lines), the prefix deleted.

Needs root (useradd, /etc/shells, sshd's privilege separation) and the
OpenSSH client, scp, sftp, rsync and tmux.
"""

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from ecshell import Cluster
from ecshell.fabrics.base import Fabric, Prototype
from ecshell.fabrics.local import free_port, sshd_config
from ecshell.procs import children_map, descendants
from ecshell.ssh.keys import generate_ed25519
from ecshell.loginshell import remote_command, screen_text

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ssh", "scp", "sftp", "rsync", "tmux", "useradd")),
    reason="needs root, the OpenSSH client, scp, sftp, rsync, tmux and useradd")

MACHINE = "login-0"


class ExistingMachine(Fabric):
    """One machine that exists already, its host key pinned (what the tests hand the Cluster)."""

    kind = "existing"

    def __init__(self, prototype, **kwargs):
        super().__init__(**kwargs)
        self.prototype = prototype

    def discover(self):
        return [self.prototype]


def _wait(predicate, what, limit=60.0):
    """Poll until ``predicate()`` is true; a bound on waiting, not a timing assertion."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def _write(path, data, mode=0o644):
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(path, mode)


class Host:
    """The machine: sshd, the user, the keys, and ways to reach it as a client would."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ecshell-login-test-")
        os.chmod(self.dir, 0o755)  # the user's sshd session reads its key file under here
        self.user = "ecl" + secrets.token_hex(4)
        self.prefix = os.path.join(self.dir, "prefix")
        self.entry = os.path.join(self.prefix, "bin", "ecshell-login")
        self.pid = None
        self.cluster = None
        self.user_created = False

    def start(self):
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", self.user], check=True, capture_output=True)
        self.user_created = True
        # A "!" password locks the account, and sshd without PAM refuses locked accounts.
        subprocess.run(["usermod", "-p", "*", self.user], check=True, capture_output=True)
        account = pwd.getpwnam(self.user)
        self.home = account.pw_dir
        private, public = generate_ed25519()
        self.key = os.path.join(self.dir, "id_ed25519")
        _write(self.key, private, 0o600)
        self.other_key = os.path.join(self.dir, "id_other")
        _write(self.other_key, generate_ed25519()[0], 0o600)
        os.makedirs(os.path.join(self.dir, "keys"), mode=0o755)
        for name in ("root", self.user):
            _write(os.path.join(self.dir, "keys", name), public + "\n")
        host_private, self.host_key = generate_ed25519()
        _write(os.path.join(self.dir, "ssh_host_ed25519_key"), host_private, 0o600)
        state = os.path.join(self.dir, "state")
        os.makedirs(os.path.join(state, "markers"))
        _write(os.path.join(state, "markers", "configured"), f"at={int(time.time())}\nby=root@test\nnote=\ntoken=\n")
        for path in (state, os.path.join(state, "markers")):
            os.chown(path, account.pw_uid, account.pw_gid)
        self.port = free_port()
        # Per-user authorized keys; sftp-server (not internal-sftp), so that sftp too goes
        # through the login shell.
        _write(os.path.join(self.dir, "sshd_config"), sshd_config(
            MACHINE, MACHINE, self.port, self.dir,
            {"SHLVL": "1", "ECSHELL_MACHINE": MACHINE, "ECSHELL_STATE_DIR": f"{self.dir}/state"},
            authorized_keys=f"{self.dir}/keys/%u", sftp="/usr/lib/openssh/sftp-server")
            # what a client may set (ssh -o SetEnv=...), as AcceptEnv, ~/.ssh/environment or pam_env allow
            + "AcceptEnv PYTHONHOME PYTHONPATH\n")
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        _write(self.known_hosts, f"[127.0.0.1]:{self.port} {self.host_key}\n")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", os.path.join(self.dir, "sshd_config"),
                                 "-E", os.path.join(self.dir, "sshd.log")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self.proc, self.pid = proc, proc.pid
        _wait(lambda: os.path.exists(os.path.join(self.dir, "sshd.pid")) or proc.poll() is not None, "sshd")
        assert proc.poll() is None, open(os.path.join(self.dir, "sshd.log")).read()
        prototype = Prototype(id=MACHINE, name=MACHINE, host="127.0.0.1", port=self.port, user="root",
                              identity_files=[self.key], host_keys=[self.host_key], identities_only=True)
        self.cluster = Cluster(ExistingMachine(prototype), home=os.path.join(self.dir, "ecshell-home"),
                               ssh_config="")

    def stop(self):
        errors = []
        if self.cluster is not None:
            self.cluster.close()
        if self.pid is not None:
            victims = [self.pid] + descendants(self.pid, children_map())
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()
        if self.user_created:
            # Anything still running as the user was started through this sshd; it is gone
            # with it, but make sure before removing the account.
            uid = pwd.getpwnam(self.user).pw_uid
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        if os.stat(f"/proc/{entry}").st_uid == uid:
                            os.kill(int(entry), signal.SIGKILL)
                    except (OSError, ProcessLookupError):
                        pass
            done = subprocess.run(["userdel", "-r", "-f", self.user], capture_output=True, text=True)
            if done.returncode not in (0, 12):  # 12: home directory could not be removed (mail spool)
                errors.append(f"userdel: {done.stderr}")
        if self.our_shells():
            with open("/etc/shells", "rb") as f:
                lines = f.read().splitlines(keepends=True)
            _write("/etc/shells", b"".join(line for line in lines if self.dir.encode() not in line))
        shutil.rmtree(self.dir, ignore_errors=True)
        assert not errors, errors

    # -- as a client ----------------------------------------------------------

    def ssh_options(self):
        return ["-F", "/dev/null", "-i", self.key, "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "KexAlgorithms=curve25519-sha256"]

    def ssh_argv(self, *args, tty=False, env=()):
        return (["ssh"] + self.ssh_options() + [f"-oSetEnv={e}" for e in env] + (["-tt"] if tty else ["-T"])
                + ["-p", str(self.port), f"{self.user}@127.0.0.1"] + list(args))

    def ssh(self, *args, input=None, env=()):
        return subprocess.run(self.ssh_argv(*args, env=env), input=input, capture_output=True, timeout=120)

    def our_shells(self):
        """The /etc/shells lines that point into this module's directory."""
        with open("/etc/shells") as f:
            return [line.strip() for line in f if self.dir in line]

    @property
    def shell(self):
        return pwd.getpwnam(self.user).pw_shell

    def install(self, **options):
        return self.cluster.install_login_shell(MACHINE, user=self.user, prefix=self.prefix, **options)

    def uninstall(self, **options):
        return self.cluster.uninstall_login_shell(MACHINE, user=self.user, prefix=self.prefix, **options)


def _explain(rs):
    return "\n".join(f"{r.name}: {r.status} {r.message}\n{r.output}" for r in rs.results())


@pytest.fixture(scope="module")
def host():
    machine = Host()
    try:
        machine.start()
        yield machine
    finally:
        machine.stop()


@pytest.fixture(scope="module")
def installed(host):
    """ecshell-login installed (once per module: pip is the slow part) as the user's shell."""
    rs = host.install()
    assert rs.all_ok, _explain(rs)
    yield host
    rs = host.uninstall()
    assert rs.all_ok, _explain(rs)
    assert host.shell == "/bin/bash"
    assert not os.path.exists(host.prefix)  # the install made it, and nothing else is in it


@pytest.fixture
def login(installed):
    """The installed host, with ecshell-login the user's shell again after a test that changed it."""
    assert installed.shell == installed.entry
    yield installed
    if installed.shell != installed.entry:
        rs = installed.install()
        assert rs.all_ok, _explain(rs)


# -- `-c`: exactly /bin/sh ---------------------------------------------------------

def test_command_gives_output_exit_code_and_separate_stderr(login):
    done = login.ssh("echo $((6*7)); echo oops >&2; exit 5")
    assert (done.stdout, done.stderr, done.returncode) == (b"42\n", b"oops\n", 5)


def test_command_runs_as_sh_with_the_environment_sshd_gave(login):
    # exec, not a child: the pid sshd started is sh itself
    done = login.ssh('cat /proc/$$/comm; echo "$0"; env')
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[:2] == ["sh", "sh"]
    env = dict(line.split("=", 1) for line in lines[2:] if "=" in line)
    assert env["SHELL"] == login.entry
    assert env["ECSHELL_MACHINE"] == MACHINE and env["USER"] == login.user
    # nothing Python added on the way (PEP 538 locale coercion, venv variables)
    assert not [k for k in env if k == "LC_CTYPE" or k.startswith("PYTHON") or k == "VIRTUAL_ENV"], env


def test_pipes_and_stdin_behave_as_under_sh(login):
    # SIGPIPE is back to default: `yes` dies quietly instead of reporting EPIPE
    done = login.ssh("yes | head -n 2; cat", input=b"from stdin\n")
    assert (done.stdout, done.stderr, done.returncode) == (b"y\ny\nfrom stdin\n", b"", 0)


def test_no_terminal_and_no_command_reads_commands_from_stdin(login):
    done = login.ssh(input=b"echo $((2+3))\necho to-stderr >&2\nexit 7\n")
    assert (done.stdout, done.stderr, done.returncode) == (b"5\n", b"to-stderr\n", 7)


def test_commands_need_no_python(login, tmp_path):
    """The issue's probes through sshd: a poisoned Python environment, and the venv's Python broken."""
    site = os.path.join(login.dir, "poisoned-site")
    os.makedirs(site, exist_ok=True)
    _write(os.path.join(site, "sitecustomize.py"), "raise SystemExit('broken on purpose')\n")
    for env in (["PYTHONHOME=/nonexistent"], [f"PYTHONPATH={site}"]):
        done = login.ssh("echo ok; exit 3", env=env)
        assert (done.stdout, done.stderr, done.returncode) == (b"ok\n", b"", 3), env
        done = login.ssh(input=b"echo from-stdin; exit 4\n", env=env)
        assert (done.stdout, done.returncode) == (b"from-stdin\n", 4), (env, done.stderr)
    python = os.path.join(login.prefix, "venv", "bin", "python")
    os.rename(python, python + ".saved")  # as an OS upgrade that breaks the venv's interpreter
    try:
        done = login.ssh("echo ok; exit 3")
        assert (done.stdout, done.stderr, done.returncode) == (b"ok\n", b"", 3)
        target = tmp_path / "copied"
        subprocess.run(["scp", "-q", "-P", str(login.port)] + login.ssh_options()
                       + [f"{login.user}@127.0.0.1:/etc/hostname", str(target)], check=True, timeout=120)
        assert target.read_bytes() == open("/etc/hostname", "rb").read()
    finally:
        os.rename(python + ".saved", python)


def test_scp_sftp_and_rsync_work_through_it(login, tmp_path):
    payload = secrets.token_bytes(300_000) + b"\x00\xff end"
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    target = f"{login.user}@127.0.0.1"
    port = str(login.port)
    base = login.ssh_options()

    # scp, legacy protocol: sshd runs `ecshell-login -c 'scp -t ...'`
    subprocess.run(["scp", "-O", "-q", "-P", port] + base + [str(source), f"{target}:scp-legacy.bin"],
                   check=True, capture_output=True, timeout=120)
    # scp over SFTP, and sftp itself: `ecshell-login -c /usr/lib/openssh/sftp-server`
    subprocess.run(["scp", "-q", "-P", port] + base + [str(source), f"{target}:scp-sftp.bin"],
                   check=True, capture_output=True, timeout=120)
    batch = tmp_path / "batch"
    batch.write_text(f"put {source} sftp.bin\nget sftp.bin {tmp_path / 'sftp-back.bin'}\n")
    subprocess.run(["sftp", "-q", "-b", str(batch), "-P", port] + base + [target],
                   check=True, capture_output=True, timeout=120)
    # rsync: `ecshell-login -c 'rsync --server ...'`, both directions
    rsh = " ".join(["ssh", "-p", port] + base)
    subprocess.run(["rsync", "-a", "-e", rsh, str(source), f"{target}:rsync.bin"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run(["rsync", "-a", "-e", rsh, f"{target}:rsync.bin", str(tmp_path / "rsync-back.bin")],
                   check=True, capture_output=True, timeout=120)

    for name in ("scp-legacy.bin", "scp-sftp.bin", "sftp.bin", "rsync.bin"):
        with open(os.path.join(login.home, name), "rb") as f:
            assert f.read() == payload, name
    assert (tmp_path / "sftp-back.bin").read_bytes() == payload
    assert (tmp_path / "rsync-back.bin").read_bytes() == payload


# -- interactive: IPython, or a plain shell that says why --------------------------

class Tmux:
    """A private tmux server (its own socket), killed afterwards."""

    def __init__(self):
        self.socket = "ecshell-login-" + secrets.token_hex(4)

    def __call__(self, *args):
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null"] + list(args),
                              capture_output=True, text=True, timeout=30)

    def start(self, argv):
        done = self("new-session", "-d", "-s", "t", "-x", "160", "-y", "48", " ".join(argv))
        assert done.returncode == 0, done.stderr

    def screen(self):
        return self("capture-pane", "-p", "-J", "-S", "-200", "-t", "t").stdout

    def wait_for(self, text, limit=60.0):
        try:
            return _wait(lambda: text in self.screen(), repr(text), limit)
        except AssertionError:
            raise AssertionError(f"{text!r} never appeared; the screen:\n{self.screen()}") from None

    def type(self, line):
        self("send-keys", "-t", "t", "-l", line)
        self("send-keys", "-t", "t", "Enter")

    def kill(self):
        self("kill-server")


@pytest.fixture
def tmux():
    t = Tmux()
    try:
        yield t
    finally:
        t.kill()


def test_interactive_login_is_ipython_with_the_machine_state(login, tmux):
    tmux.start(login.ssh_argv(tty=True))
    tmux.wait_for("In [1]:")
    screen = tmux.screen()
    assert f"ecshell-login on {MACHINE}" in screen
    assert "configured" in screen  # the marker set before logging in
    tmux.type("6*7")
    tmux.wait_for("Out[1]: 42")
    tmux.type('mark("from-ipython"); sorted(markers())')
    tmux.wait_for("['configured', 'from-ipython']")
    assert os.path.exists(os.path.join(login.dir, "state", "markers", "from-ipython"))
    tmux.type("exit")
    _wait(lambda: tmux("has-session", "-t", "t").returncode != 0, "the session to end")


def test_a_dumb_terminal_gets_sh_as_tools_like_tramp_expect(login, tmux):
    tmux.start(["env", "TERM=dumb"] + login.ssh_argv(tty=True))
    tmux.type("echo sum=$((6*7)) shell=$0")
    tmux.wait_for("sum=42 shell=-sh")
    assert "IPython" not in tmux.screen()
    tmux.type("exit")
    _wait(lambda: tmux("has-session", "-t", "t").returncode != 0, "the session to end")


@pytest.fixture
def broken_ipython(login):
    """IPython in the installed venv made to fail on import, and mended afterwards."""
    found = []
    for directory, dirs, names in os.walk(os.path.join(login.prefix, "venv", "lib")):
        if os.path.basename(directory) == "IPython" and "__init__.py" in names:
            found.append(os.path.join(directory, "__init__.py"))
            break
    assert found, "IPython not found in the venv"
    init = found[0]
    os.rename(init, init + ".saved")
    try:
        _write(init, 'raise ImportError("IPython broken on purpose by the test")\n')
        yield login
    finally:
        os.replace(init + ".saved", init)


def test_broken_ipython_falls_back_to_a_plain_shell_and_says_why(broken_ipython, tmux):
    host = broken_ipython
    # commands never needed IPython
    done = host.ssh("echo $((6*7)); exit 5")
    assert (done.stdout, done.returncode) == (b"42\n", 5)
    tmux.start(host.ssh_argv(tty=True))
    tmux.wait_for("IPython did not start")
    assert "IPython broken on purpose by the test" in tmux.screen()
    tmux.type("echo sum=$((6*7))")
    tmux.wait_for("sum=42")
    tmux.type("exit")
    _wait(lambda: tmux("has-session", "-t", "t").returncode != 0, "the session to end")


# -- installing and uninstalling -------------------------------------------------

def test_install_verifies_and_uninstall_restores(login):
    with open("/etc/shells") as f:
        assert login.entry in f.read().split()
    assert os.path.exists(os.path.join(login.prefix, "users", login.user + ".json"))

    rs = login.uninstall(remove=False)
    assert rs.all_ok, _explain(rs)
    assert login.shell == "/bin/bash"
    assert login.our_shells() == []
    assert not os.path.exists(os.path.join(login.prefix, "users", login.user + ".json"))
    done = login.ssh("echo $BASH_VERSION | cut -c1; exit 3")
    assert done.stdout != b"\n" and done.returncode == 3  # bash again

    rs = login.install()  # again: the venv is there already, so no pip this time
    assert rs.all_ok, _explain(rs)
    result = rs[MACHINE]
    assert "a command login gives stdout 42" in result.output
    assert "an interactive login shows the IPython prompt" in result.output
    assert result.detail["previous_shell"] == "/bin/bash"
    assert login.shell == login.entry


def _back_to_bash(host):
    rs = host.uninstall(remove=False)
    assert rs.all_ok, _explain(rs)
    assert host.shell == "/bin/bash"


def _unchanged(host):
    assert host.shell == "/bin/bash"
    assert host.our_shells() == []
    assert not os.path.exists(os.path.join(host.prefix, "users", host.user + ".json"))


def test_a_refused_fresh_login_stops_the_install_with_nothing_changed(login):
    _back_to_bash(login)
    # The fresh login as the user is attempted with a key the machine does not accept.
    rs = login.install(identity_files=[login.other_key])
    assert not rs.all_ok
    result = rs[MACHINE]
    assert result.error == "exit"
    assert "a fresh SSH login as" in result.message and "(auth)" in result.message, result.message
    assert "not changed" in result.message
    _unchanged(login)


def _switch(host):
    """Start the machine side of a switch by hand; the channel, once it reports the switch."""
    machine = host.cluster.machine(MACHINE)
    channel = machine.connection().open_session(timeout=10)
    channel.exec_command(remote_command("switch", {"prefix": host.prefix, "user": host.user, "timeout": 300}))
    seen = bytearray()

    def switched():
        while channel.recv_ready():
            seen.extend(channel.recv(65536))
        return b'"switched"' in seen or channel.exit_status_ready()

    _wait(switched, "the switch")
    assert b'"switched"' in seen, screen_text(bytes(seen))
    assert host.shell == host.entry
    return channel


def test_a_failed_check_after_the_switch_puts_everything_back(login):
    """What the controller sends when a fresh login with the new shell fails: ABORT."""
    _back_to_bash(login)
    channel = _switch(login)
    try:
        channel.sendall(b"ABORT\n")
        channel.shutdown_write()
        _wait(channel.exit_status_ready, "the machine to answer")
        out = b""
        while channel.recv_ready():
            out += channel.recv(65536)
        assert channel.recv_exit_status() == 3
        assert b'"restored": "/bin/bash"' in out, out
    finally:
        channel.close()
    _unchanged(login)


def test_broken_ipython_stops_the_install_before_anything_changes(broken_ipython):
    host = broken_ipython
    _back_to_bash(host)
    rs = host.install()
    assert not rs.all_ok
    assert "IPython cannot start" in rs[MACHINE].output, _explain(rs)
    assert host.shell == "/bin/bash"
    assert host.our_shells() == []


def test_the_machine_restores_the_shell_when_the_controller_vanishes(login):
    """The switch waits for COMMIT; a connection that ends without one undoes it."""
    _back_to_bash(login)
    channel = _switch(login)
    channel.close()  # as if the controller died: no COMMIT ever comes
    _wait(lambda: login.shell == "/bin/bash", "the machine to restore the shell")
    _wait(lambda: login.our_shells() == [], "/etc/shells to be restored")
    _unchanged(login)


def _switch_process(host):
    """The pid of the machine-side process running the switch op (under this module's sshd)."""
    for pid in descendants(host.pid, children_map()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv[1:2] == [b"-c"] and argv[3:4] == [b"switch"]:
            return pid
    return None


def test_the_shell_is_restored_when_the_switching_process_is_killed(login):
    """SIGKILL of the machine-side process that switched leaves it no chance: the rollback cannot be its job."""
    _back_to_bash(login)
    channel = _switch(login)
    try:
        pid = _switch_process(login)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: login.shell == "/bin/bash", "the shell to be restored", limit=20)
        _wait(lambda: login.our_shells() == [], "/etc/shells to be restored", limit=20)
        _unchanged(login)
    finally:
        channel.close()


def test_a_killed_switch_after_a_commit_changes_nothing(login):
    """The guard undoes only a switch the record still calls pending: a committed one stays."""
    import ecshell.remote.loginshell as machine_side

    assert machine_side.roll_back(login.prefix, login.user) is False
    assert login.shell == login.entry


def test_install_from_wheels_shipped_along(login):
    """wheels="ship": every wheel built here and shipped; pip on the machine uses no index."""
    second = os.path.join(login.dir, "prefix-shipped")
    os.mkdir(second)  # an empty directory made beforehand is taken; it stays after uninstall
    rs = login.cluster.install_login_shell(MACHINE, user=login.user, prefix=second, wheels="ship", deps="login")
    try:
        _write(os.path.join(second, "not-ours.txt"), "put here by someone else while installed\n")
        assert rs.all_ok, _explain(rs)
        entry = os.path.join(second, "bin", "ecshell-login")
        assert login.shell == entry
        assert rs[MACHINE].detail["previous_shell"] == login.entry
        shipped = os.listdir(os.path.join(second, "dist"))
        assert any(n.startswith("ipython-") for n in shipped) and any(n.startswith("ecshell-") for n in shipped)
        site = [d for d, _, _ in os.walk(os.path.join(second, "venv", "lib")) if d.endswith("site-packages")][0]
        assert os.path.isdir(os.path.join(site, "IPython")) and not os.path.exists(os.path.join(site, "boto3"))
        done = login.ssh("echo $((6*7)); exit 5")
        assert (done.stdout, done.returncode) == (b"42\n", 5)
    finally:
        rs = login.cluster.uninstall_login_shell(MACHINE, user=login.user, prefix=second)
    assert rs.all_ok, _explain(rs)
    assert login.shell == login.entry  # back to what it was before this install
    assert os.listdir(second) == ["not-ours.txt"]  # only what the install made is gone
    assert "kept what ecshell did not put there: not-ours.txt" in rs[MACHINE].output
    with open("/etc/shells") as f:
        assert second not in f.read()


def test_install_refuses_a_prefix_holding_files_not_its_own(login):
    """uninstall(remove=True) removes what the install made; a prefix such as /opt is refused before."""
    foreign = os.path.join(login.dir, "prefix-foreign")
    os.mkdir(foreign)
    _write(os.path.join(foreign, "not-ours.txt"), "was here first\n")
    rs = login.cluster.install_login_shell(MACHINE, user=login.user, prefix=foreign)
    assert not rs.all_ok
    assert "not ecshell's (not-ours.txt)" in rs[MACHINE].output, _explain(rs)
    assert os.listdir(foreign) == ["not-ours.txt"]
    assert login.shell == login.entry and foreign not in " ".join(login.our_shells())
