#!/usr/bin/env python3
"""Where the CPU of a warm broadcast goes, per host: client, sshd, executor, the commands.

    python benchmarks/cpu_split.py                 # 100 machines, 10 rounds, both paths
    python benchmarks/cpu_split.py -n 50 --rounds 20 --command 'uname -a'

Launches N local machines (temporary ECSHELL_HOME, always terminated), warms
ecshell's pool and executors, then for each path (executor, channel) runs
``--rounds`` warm broadcasts and reads, before and after, the CPU time
(user + system, from /proc) of:

- client:    this process (ecshell, paramiko, the SSH crypto of the client side);
- sshd:      the machines' sshd processes, listeners and per-connection ones,
             and the children they reaped (on the channel path: the shells);
- executor:  the executor processes, and the children they reaped (the shells
             and the commands they ran);
- machine:   the whole box (/proc/stat), which also counts anything else running.

Each figure is microseconds of CPU per host per broadcast. The machines being
local, this splits the whole cost of a broadcast between its parts, which is
what bounds it on a machine whose cores are all busy.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from ecshell.procs import descendants  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        head, rest = f.read().rsplit(")", 1)
    fields = rest.split()
    comm = head.split("(", 1)[1]
    ppid = int(fields[1])
    own = int(fields[11]) + int(fields[12])
    reaped = int(fields[13]) + int(fields[14])
    return comm, ppid, own, reaped


def processes():
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                table[int(name)] = _stat(name)
            except (OSError, IndexError, ValueError):
                pass
    return table


def machine_cpu():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user, nice, system, idle, iowait, irq, softirq, steal: steal is the hypervisor's, not ours
    return sum(fields[:7]) - fields[3] - fields[4], fields[6]


def snapshot(roots):
    table = processes()
    children = {}
    for pid, (_, ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    split = {"client": 0, "sshd": 0, "executor": 0}
    tree = {pid for root in roots if root in table for pid in [root] + descendants(root, children)}
    for pid in tree:
        comm, _, own, reaped = table[pid]
        part = "executor" if comm.startswith("python") else "sshd"
        split[part] += own + reaped
    self_ = table[os.getpid()]
    split["client"] = self_[2]
    split["machine"], split["softirq"] = machine_cpu()
    return split


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--command", default="hostname")
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="ecshell-cpu-")
    os.environ["ECSHELL_HOME"] = home
    os.environ["HOME"] = home
    import broadcast
    from ecshell import Cluster
    from ecshell.fabrics.local import LocalFabric

    fleet = broadcast.Fleet(home, args.n)
    try:
        roots = [int(p.extra["pid"]) for p in fleet.fabric.discover() if p.extra.get("pid")]
        print(f"{args.n} machines, {len(roots)} sshd listeners; {args.rounds} rounds of "
              f"{args.command!r} per path; microseconds of CPU per host per broadcast")
        print(f"{'path':>10} {'client':>8} {'sshd':>8} {'executor':>9} {'softirq':>8} {'machine':>8} {'wall ms':>8}")
        for mode in ("executor", "channel"):
            cluster = Cluster(LocalFabric(directory=fleet.fabric.directory, key_file=fleet.fabric.key_file),
                              executor=mode, fanout=args.n)
            machines = cluster.machines[:args.n]
            for _ in range(3):
                machines.run(args.command)
            time.sleep(0.5)
            before, t = snapshot(roots), time.perf_counter()
            for _ in range(args.rounds):
                rs = machines.run(args.command)
                assert all(r.ok for r in rs.values()), rs
            wall = (time.perf_counter() - t) / args.rounds
            after = snapshot(roots)
            per = {k: (after[k] - before[k]) / TICKS / args.rounds / args.n * 1e6 for k in after}
            print(f"{mode:>10} {per['client']:8.0f} {per['sshd']:8.0f} {per['executor']:9.0f} "
                  f"{per['softirq']:8.0f} {per['machine']:8.0f} {wall * 1000:8.1f}")
            cluster.close()
    finally:
        fleet.terminate()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
