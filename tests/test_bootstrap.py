"""The quick start as an ordinary user: bootstrap.sh needs no root when nothing is missing.

As root, each test makes a throwaway account (removed after) and runs as it;
as an ordinary user, the tests run as that user.
"""

import os
import pathlib
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid

import pytest

import ecshell

ROOT = pathlib.Path(ecshell.__file__).resolve().parents[1]
BOOTSTRAP = ROOT / "bootstrap.sh"
ORDINARY_PATH = "/usr/local/bin:/usr/bin:/bin"  # no sbin: what a Debian user's login gets


@pytest.fixture
def account():
    """(run, home): ``run(argv, **kwargs)`` runs as an ordinary account whose home is ``home``."""
    home = pathlib.Path(tempfile.mkdtemp(prefix="ecshell-user-", dir="/tmp"))
    home.chmod(0o755)
    if os.geteuid() != 0:
        def run(argv, env=None, **kwargs):
            return subprocess.run(argv, env=dict(env or {}, HOME=str(home)), capture_output=True, text=True,
                                  timeout=120, **kwargs)
        try:
            yield run, home
        finally:
            shutil.rmtree(home, ignore_errors=True)
        return
    if shutil.which("useradd") is None:
        pytest.skip("as root, this test needs useradd to make an ordinary account")
    name = "ecbs" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", name], check=True, capture_output=True)
    entry = pwd.getpwnam(name)
    os.chown(home, entry.pw_uid, entry.pw_gid)

    def run(argv, env=None, **kwargs):
        env = dict(env or {}, HOME=str(home), USER=name, LOGNAME=name)
        return subprocess.run(argv, env=env, user=entry.pw_uid, group=entry.pw_gid, extra_groups=[],
                              capture_output=True, text=True, timeout=120, **kwargs)
    try:
        yield run, home
    finally:
        # whatever the account still runs (a test that failed half-way) goes first, then the account
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_the_check_finds_debian_tools_in_sbin_without_root(account):
    run, _ = account
    done = run(["bash", str(BOOTSTRAP), "--check"], env={"PATH": ORDINARY_PATH})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the shell needs: nothing more" in done.stdout  # sshd was found in /usr/sbin


def test_a_missing_package_without_a_way_to_sudo_is_one_line_and_a_stop(account):
    """Without root and without sudo, bootstrap says which command to run and stops."""
    run, home = account
    tools = home / "bin"  # bash, python3 and coreutils, but no ssh client and no sudo
    tools.mkdir()
    for tool in ("bash", "dirname", "id", "python3"):
        os.symlink(shutil.which(tool, path=ORDINARY_PATH), tools / tool)
    done = run([str(tools / "bash"), str(BOOTSTRAP)], env={"PATH": str(tools)}, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "openssh-client" in lines[0] and "apt-get install" in lines[0], done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="as an ordinary user the whole suite already launches machines")
def test_an_ordinary_user_launches_local_machines(account):
    """LocalFabric's machines run as the user: sshd without root, commands as that user."""
    run, home = account
    code = (
        "from ecshell import Cluster, LocalFabric\n"
        "fabric = LocalFabric(); cluster = Cluster(fabric)\n"
        "try:\n"
        "    web = cluster.launch(2, name='web')\n"
        "    rs = web.run('id -un')\n"
        "    print([r.output.strip() for r in rs.results()], rs.all_ok)\n"
        "finally:\n"
        "    cluster.close(); fabric.terminate([p.id for p in fabric.discover()])\n"
    )
    site = sysconfig.get_paths()["purelib"]  # this venv's packages, readable by everyone
    env = {"PATH": ORDINARY_PATH, "PYTHONPATH": f"{ROOT}:{site}", "ECSHELL_HOME": str(home / "ecshell")}
    python = shutil.which("python3", path="/usr/bin") or sys.executable
    done = run([python, "-c", code], env=env)
    assert done.returncode == 0, done.stderr
    user = pwd.getpwuid(os.stat(home).st_uid).pw_name
    assert done.stdout.strip() == f"[{user!r}, {user!r}] True"
