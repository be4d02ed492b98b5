"""Fixtures: real local sshd machines in an isolated ecshell home, always stopped.

Every test runs with ECSHELL_HOME and HOME pointing into its own temporary
directory, so the operator's ~/.ssh, ~/.aws and ~/.ecshell never leak in or
get written to. Machines are real OpenSSH sshd processes on 127.0.0.1,
started by LocalFabric and terminated (by pid) when the test ends, passed or
failed.
"""

import os
import signal

import pytest

from ecshell import Cluster, LocalFabric


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("ECSHELL_HOME", str(tmp_path / "ecshell"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / ".aws" / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / ".aws" / "credentials"))
    return tmp_path


def _stop_everything(fabric):
    """Terminate every machine the fabric has on disk, even if the test broke the cluster."""
    try:
        fabric.terminate([p.id for p in fabric.discover()])
    except Exception:
        # Last resort: kill the listeners by the pids recorded on disk.
        for prototype in fabric.discover():
            pid = prototype.extra.get("pid")
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def cluster(isolated_home):
    """A Cluster over a LocalFabric in an isolated home; every machine stopped afterwards."""
    fabric = LocalFabric()
    c = Cluster(fabric)
    try:
        yield c
    finally:
        c.close()
        _stop_everything(fabric)


@pytest.fixture
def machines(cluster):
    """``machines(n, name="node")``: launch n ready local machines in the test's cluster."""

    def launch(n, name="node", **kwargs):
        return cluster.launch(n, name=name, **kwargs)

    return launch
