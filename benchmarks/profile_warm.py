#!/usr/bin/env python3
"""Where ecshell's time goes in a warm broadcast over one channel per command: a breakdown by phase.

(The executor path, the default, has no such phases: see benchmarks/cpu_split.py.)

    python benchmarks/profile_warm.py            # 100 machines, 7 rounds
    python benchmarks/profile_warm.py -n 50 --rounds 5

Launches N local machines (temporary ECSHELL_HOME, always terminated), opens
the pool, then times warm broadcasts of ``hostname`` with light wrappers
around each step of a host's command (installed only in this process):

- queue:   broadcast start -> a worker thread takes the host
- pool:    the pooled connection looked up (Attempt.connect)
- open:    SSH channel open, one round trip (Connection.open_session)
- exec:    exec request, one round trip; sshd forks the shell before it answers
- read:    stdin EOF sent, output read to EOF (Shell._read minus _finish)
- status:  the exit status after EOF (Shell._finish)
- close:   channel close and the Result built (what is left of run_one)
- collect: last worker done -> broadcast() returned (the main thread's handoff)

It also reports the CPU seconds this process used per broadcast against the
whole machine's (from /proc/stat): the rest is sshd, the shells, and anyone
else on the box. Each phase is a per-host median, in milliseconds; they
overlap between hosts, so they do not add up to the wall time.
"""

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def machine_cpu():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / ticks


def instrument():
    """Wrap the steps of a host's command; returns the per-thread record store."""
    import paramiko

    from ecshell import commands, engine
    from ecshell.ssh import connection

    local = threading.local()
    records = []
    lock = threading.Lock()

    def stamp(name):
        local.rec[name] = time.perf_counter()

    def wrap(owner, attr, before, after):
        original = getattr(owner, attr)

        def wrapper(*a, **k):
            if getattr(local, "rec", None) is not None:
                stamp(before)
            try:
                return original(*a, **k)
            finally:
                if getattr(local, "rec", None) is not None:
                    stamp(after)

        wrapper.__wrapped__ = original
        setattr(owner, attr, wrapper)

    run_one = engine.Engine.run_one

    def run_one_wrapper(self, *a, **k):
        local.rec = {"start": time.perf_counter()}
        try:
            return run_one(self, *a, **k)
        finally:
            local.rec["end"] = time.perf_counter()
            with lock:
                records.append(local.rec)
            local.rec = None

    engine.Engine.run_one = run_one_wrapper
    wrap(commands.Attempt, "connect", "pool0", "pool1")
    wrap(connection.Connection, "open_session", "open0", "open1")
    wrap(paramiko.Channel, "exec_command", "exec0", "exec1")
    wrap(commands.Shell, "_finish", "status0", "status1")
    return records


def phases(rec, t0):
    def d(a, b):
        return (rec[b] - rec[a]) * 1000 if a in rec and b in rec else None

    return {
        "queue": (rec["start"] - t0) * 1000,
        "pool": d("pool0", "pool1"),
        "open": d("open0", "open1"),
        "exec": d("exec0", "exec1"),
        "read": d("exec1", "status0"),
        "status": d("status0", "status1"),
        "close": d("status1", "end"),
        "total": d("start", "end"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100, help="machines (default 100)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--fanout", type=int, default=None)
    parser.add_argument("--no-kill-on-cancel", action="store_true",
                        help="run with kill_on_cancel off (no pid line before the command)")
    args = parser.parse_args(argv)

    home = tempfile.mkdtemp(prefix="ecshell-profile-")
    os.environ["ECSHELL_HOME"] = os.path.join(home, "ecshell")
    os.environ["HOME"] = home
    os.environ.pop("SSH_AUTH_SOCK", None)
    import broadcast

    broadcast.raise_fd_limit(4096)
    fleet = None
    try:
        fleet = broadcast.Fleet(home, args.n)
        cluster = broadcast._cluster(fleet, args.fanout)
        cluster.settings.executor = "channel"  # the phases timed are the channel path's
        if args.no_kill_on_cancel:
            cluster.settings.kill_on_cancel = False
        machines = cluster.machines
        machines.run("hostname")  # connect
        machines.run("hostname")
        records = instrument()
        walls, cpus, machine_cpus, per_phase = [], [], [], {}
        for _ in range(args.rounds):
            records.clear()
            gc.collect()
            c0, m0 = time.process_time(), machine_cpu()
            t0 = time.perf_counter()
            rs = machines.run("hostname")
            t1 = time.perf_counter()
            cpus.append(time.process_time() - c0)
            machine_cpus.append(machine_cpu() - m0)
            walls.append(t1 - t0)
            assert len(rs.ok) == args.n, rs.failed
            last_end = max(r["end"] for r in records)
            per_host = [phases(r, t0) for r in records]
            for name in per_host[0]:
                values = [p[name] for p in per_host if p[name] is not None]
                per_phase.setdefault(name, []).append(statistics.median(values))
            per_phase.setdefault("last worker done", []).append((last_end - t0) * 1000)
            per_phase.setdefault("collect", []).append((t1 - last_end) * 1000)
        cluster.close()
        print(f"warm broadcast of 'hostname' to {args.n} machines, fanout {cluster.settings.fanout}, "
              f"kill_on_cancel {cluster.settings.kill_on_cancel}, {args.rounds} rounds; "
              f"load {os.getloadavg()}")
        print(f"  wall median            {statistics.median(walls) * 1000:8.1f} ms")
        print(f"  this process CPU       {statistics.median(cpus) * 1000:8.1f} ms per broadcast")
        print(f"  whole machine CPU      {statistics.median(machine_cpus) * 1000:8.1f} ms per broadcast "
              f"(sshd, shells, and other users of the box)")
        print("  per-host phase medians (ms), median over rounds:")
        for name, values in per_phase.items():
            print(f"    {name:<22} {statistics.median(values):8.2f}")
    finally:
        if fleet is not None:
            fleet.terminate()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
