#!/usr/bin/env python3
"""What the login shell costs `ssh host true`: /bin/sh, ecshell-login's sh entry point, its Python one.

    sudo python benchmarks/login_ssh.py                 # 7 rounds x 15 calls per shell
    sudo python benchmarks/login_ssh.py --rounds 3 --calls 10

A script, not a test; needs root (it creates a user and switches that user's
shell, never another's). It starts a real sshd on 127.0.0.1 and times, for
each login shell in turn (interleaved, so load changes hit all alike):

- ``fresh``: ``ssh user@127.0.0.1 true``, a new connection each time (what a
  tool that does not multiplex pays);
- ``mux``: the same over an OpenSSH ControlMaster connection, so that only a
  session is set up: sshd's fork and the login shell running ``-c true``;
- ``local``: ``SHELL -c true`` run here, no SSH at all.

The shells: ``/bin/sh``; ``sh-entry``, the POSIX sh script the installer
writes (``entry_script``); ``python-entry``, the Python entry point
(``ecshell/remote/login.py`` run by ``/usr/bin/python3``, as pip's console
script runs it). Everything it made (sshd, the ControlMaster processes, the
user, the directory) is removed at the end, whatever happened. JSON goes to
benchmarks/results/.
"""

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ecshell.fabrics.local import free_port, sshd_config  # noqa: E402
from ecshell.remote import login as login_module  # noqa: E402
from ecshell.remote.loginshell import entry_script  # noqa: E402
from ecshell.ssh.keys import generate_ed25519  # noqa: E402

PYTHON = "/usr/bin/python3"


def write(path, text, mode=0o644):
    with open(path, "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode())
    os.chmod(path, mode)


class Lab:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ecshell-login-bench-")
        os.chmod(self.dir, 0o755)
        self.user = "eclb" + secrets.token_hex(4)
        self.sshd = None
        self.masters = []
        self.user_made = False

    def start(self):
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", self.user], check=True, capture_output=True)
        self.user_made = True
        subprocess.run(["usermod", "-p", "*", self.user], check=True, capture_output=True)
        private, public = generate_ed25519()
        self.key = os.path.join(self.dir, "id_ed25519")
        write(self.key, private, 0o600)
        os.makedirs(os.path.join(self.dir, "keys"))
        write(os.path.join(self.dir, "keys", self.user), public + "\n")
        host_private, host_public = generate_ed25519()
        write(os.path.join(self.dir, "ssh_host_ed25519_key"), host_private, 0o600)
        self.port = free_port()
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        write(self.known_hosts, f"[127.0.0.1]:{self.port} {host_public}\n")
        login_py = os.path.join(self.dir, "login.py")
        shutil.copy(login_module.__file__, login_py)
        os.chmod(login_py, 0o644)
        os.makedirs(os.path.join(self.dir, "bin"), mode=0o755)
        self.shells = {"/bin/sh": "/bin/sh",
                       "sh-entry": os.path.join(self.dir, "bin", "ecshell-login"),
                       "python-entry": os.path.join(self.dir, "bin", "ecshell-login-python")}
        write(self.shells["sh-entry"], entry_script(PYTHON, login_py), 0o755)
        with open(login_py) as f:
            write(self.shells["python-entry"], f"#!{PYTHON}\n" + f.read(), 0o755)
        write(os.path.join(self.dir, "sshd_config"), sshd_config(
            "bench", "bench", self.port, self.dir, {"SHLVL": "1"}, authorized_keys=f"{self.dir}/keys/%u"))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", os.path.join(self.dir, "sshd_config"),
                                      "-E", os.path.join(self.dir, "sshd.log")], start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(self.dir, "sshd.pid")):
            if self.sshd.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("sshd did not start: " + open(os.path.join(self.dir, "sshd.log")).read())
            time.sleep(0.05)

    def ssh(self, *extra):
        return (["ssh", "-F", "/dev/null", "-i", self.key, "-o", "IdentitiesOnly=yes",
                 "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                 "-o", "BatchMode=yes", "-o", "KexAlgorithms=curve25519-sha256", "-p", str(self.port)]
                + list(extra) + ["-T", f"{self.user}@127.0.0.1"])

    def use(self, shell):
        subprocess.run(["usermod", "-s", shell, self.user], check=True, capture_output=True)

    def master(self, name):
        """A ControlMaster connection made after the shell changed (sshd reads the shell at login)."""
        path = os.path.join(self.dir, f"mux-{len(self.masters)}")
        proc = subprocess.Popen(self.ssh("-o", "ControlMaster=yes", "-o", f"ControlPath={path}", "-N"),
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.masters.append(proc)
        deadline = time.monotonic() + 30
        while not os.path.exists(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"no ControlMaster for {name}")
            time.sleep(0.02)
        return path, proc

    def stop(self):
        for proc in self.masters + ([self.sshd] if self.sshd else []):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if self.user_made:
            subprocess.run(["userdel", "-r", "-f", self.user], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def timed(argv, calls):
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{argv[-2:]} failed: exit {done.returncode} {done.stderr[-300:]!r}")
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=15)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: it creates a user and sets that user's shell")
    lab = Lab()
    samples = {name: {"fresh": [], "mux": [], "local": []} for name in ("/bin/sh", "sh-entry", "python-entry")}
    load_before = os.getloadavg()
    try:
        lab.start()
        for round_ in range(args.rounds):
            for name, shell in lab.shells.items():
                lab.use(shell)
                samples[name]["local"] += timed([shell, "-c", "true"], args.calls)
                samples[name]["fresh"] += timed(lab.ssh() + ["true"], args.calls)
                path, proc = lab.master(name)
                samples[name]["mux"] += timed(lab.ssh("-o", f"ControlPath={path}") + ["true"], args.calls)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr)
    finally:
        lab.stop()
    medians = {name: {kind: statistics.median(v) * 1000 for kind, v in kinds.items()} for name, kinds in samples.items()}
    print(f"{'login shell':>14} {'ssh true (ms)':>14} {'multiplexed (ms)':>17} {'SHELL -c true (ms)':>19}")
    for name, m in medians.items():
        print(f"{name:>14} {m['fresh']:14.1f} {m['mux']:17.1f} {m['local']:19.2f}")
    base = medians["/bin/sh"]
    for name in ("sh-entry", "python-entry"):
        m = medians[name]
        print(f"{name} over /bin/sh: ssh {m['fresh'] - base['fresh']:+.1f} ms, multiplexed "
              f"{m['mux'] - base['mux']:+.1f} ms, local {m['local'] - base['local']:+.2f} ms")
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    out = os.path.join(ROOT, "benchmarks", "results", f"login_ssh-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(out, "w") as f:
        json.dump({"medians_ms": medians, "samples_s": samples, "rounds": args.rounds, "calls": args.calls,
                   "load_before": load_before, "load_after": os.getloadavg(), "python": PYTHON,
                   "ssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
                   "machine": platform.platform(), "cpus": os.cpu_count()}, f, indent=1)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
