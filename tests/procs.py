"""Process checks for tests: the "remote" machines are local sshd, so /proc tells the truth."""

import os
import subprocess


def running(pid):
    """True if the process exists and is not a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def remote_processes(pattern):
    """Pids of processes on the (local) machine whose command line contains ``pattern``."""
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if int(p) != os.getpid()]
