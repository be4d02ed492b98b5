#!/usr/bin/env python3
"""Executor benchmark: ecshell's persistent executor against its channel path and the peers.

A script, not a test. It launches local machines (real sshd on 127.0.0.1) in
a temporary ECSHELL_HOME and HOME, and measures, rounds interleaved between
the tools in one run:

- warm broadcast of ``hostname`` to 50 and 100 machines: ecshell with the
  executor, ecshell with one channel per command, and the peers of
  benchmarks/broadcast.py (asyncssh, paramiko + threads, parallel-ssh);
- the sequential round trip on one machine (one command after another);
- the executor's start-up cost per machine: wall time from "start" to its
  hello on an open connection, and the CPU the executor process used to
  get there (from /proc, the machines being local).

    python benchmarks/executor.py            # N = 50, 100; 10 rounds
    python benchmarks/executor.py --quick    # N = 10; 3 rounds

Every machine it started is terminated at the end, whatever happened. JSON
goes to benchmarks/results/ (gitignored). It borrows the machine fleet and
the peer tools from benchmarks/broadcast.py, so both measure the same way.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def _cluster(fleet, mode, fanout):
    from ecshell import Cluster
    from ecshell.fabrics.local import LocalFabric

    return Cluster(LocalFabric(directory=fleet.fabric.directory, key_file=fleet.fabric.key_file),
                   executor=mode, fanout=fanout)


class EcShellPath:
    """ecshell with ``c.EcShell.executor`` set to ``mode``, in the tool interface of broadcast.py."""

    def __init__(self, fleet, mode, fanout):
        self.name = f"ecshell-{mode}"
        self.fleet = fleet
        self.cluster = _cluster(fleet, mode, fanout)

    def connect_all(self, ports):
        self.warm(len(ports))

    def warm(self, n):
        import broadcast

        rs = self.cluster.machines[:n].run(broadcast.COMMAND)
        return [r.output if r.ok else f"{r.status}: {r.message}" for r in rs.values()]

    def interactive(self, count, machine_index=0):
        import broadcast

        machine = self.cluster.machines[machine_index]
        times = []
        for _ in range(count):
            t = time.perf_counter()
            r = machine.run(broadcast.COMMAND)
            times.append(time.perf_counter() - t)
            if r.output.strip() != broadcast.EXPECTED:
                raise RuntimeError(f"{self.name} interactive: {r!r} {r.message}")
        return times

    def close(self):
        self.cluster.close()


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def startup_cost(fleet, count):
    """Per machine: wall seconds to start an executor on an open connection, and its CPU seconds."""
    from ecshell.ssh import executor as executor_module

    cluster = _cluster(fleet, "channel", 64)
    try:
        machines = cluster.machines[:count]
        machines.run("true")  # open the connections; no executor yet
        walls, cpus = [], []
        for machine in machines:
            connection = machine.connection()
            t = time.perf_counter()
            executor = executor_module.ExecutorSession.start(connection, 30.0)
            walls.append(time.perf_counter() - t)
            cpus.append(_cpu_seconds(executor.pid))
            executor.close()
        return walls, cpus
    finally:
        cluster.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 10, 3 rounds: a smoke test")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sequential", type=int, default=200, help="commands in the sequential round trip")
    parser.add_argument("--peers", default="asyncssh,paramiko+threads,parallel-ssh")
    args = parser.parse_args()
    sizes = [10] if args.quick else [50, 100]
    rounds = 3 if args.quick else args.rounds
    sequential = 30 if args.quick else args.sequential

    import broadcast

    broadcast.raise_fd_limit(8192)
    home = broadcast.scratch_home("ecshell-bench-executor-")
    peer_classes = {"asyncssh": broadcast.AsyncsshTool, "paramiko+threads": broadcast.ParamikoTool,
                    "parallel-ssh": broadcast.PsshTool, "fabric": broadcast.FabricTool}
    report = {"loadavg_before": os.getloadavg(), "cases": {}, "cpus": os.cpu_count()}
    fleet, tools = None, []
    try:
        fleet = broadcast.Fleet(home, max(sizes))
        print(f"{len(fleet.prototypes)} machines up in {fleet.launch_seconds:.2f}s; "
              f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
        fanout = max(sizes)
        tools = [EcShellPath(fleet, "executor", fanout), EcShellPath(fleet, "channel", fanout)]
        for name in filter(None, args.peers.split(",")):
            tools.append(peer_classes[name](fleet))
        for tool in tools:
            tool.connect_all(fleet.ports)

        print(f"\nwarm broadcast of {broadcast.COMMAND!r}, median seconds of {rounds} rounds "
              f"(fanout {fanout} for ecshell)")
        names = [t.name for t in tools]
        print(f"{'N':>5}" + "".join(f"{n:>18}" for n in names) + f"{'executor/fastest peer':>24}")
        for n in sizes:
            samples, errors = broadcast.run_case(tools, "warm", n, rounds, print)
            medians = {k: (statistics.median(v) if v else None) for k, v in samples.items()}
            peers = [medians[t.name] for t in tools[2:] if medians[t.name]]
            ratio = medians["ecshell-executor"] / min(peers) if peers and medians["ecshell-executor"] else None
            report["cases"][f"warm-{n}"] = {"medians": medians, "samples": samples, "errors": errors,
                                            "executor_over_fastest_peer": ratio}
            print(f"{n:>5}" + "".join(f"{medians[k]:>18.4f}" if medians[k] else f"{'—':>18}" for k in names)
                  + (f"{ratio:>24.2f}" if ratio else f"{'—':>24}"), flush=True)

        print(f"\nsequential round trip on one machine, median ms of {sequential} "
              "(tools interleaved in blocks of 10)")
        times = {t.name: [] for t in tools if hasattr(t, "interactive")}
        for block in range(sequential // 10):
            for tool in tools:
                if tool.name in times:
                    times[tool.name] += tool.interactive(10)
        rtt = {k: statistics.median(v) * 1000 for k, v in times.items()}
        for k, v in rtt.items():
            print(f"  {k:<20}{v:8.2f} ms")
        if "asyncssh" in rtt:
            print(f"  executor / asyncssh: {rtt['ecshell-executor'] / rtt['asyncssh']:.2f}")
        report["round_trip_ms"] = rtt

        count = min(20, max(sizes))
        walls, cpus = startup_cost(fleet, count)
        print(f"\nexecutor start-up on an open connection, {count} machines one after another: "
              f"median {statistics.median(walls) * 1000:.1f} ms wall, "
              f"{statistics.median(cpus) * 1000:.0f} ms CPU of the executor process")
        report["startup"] = {"wall_s": walls, "executor_cpu_s": cpus}
        report["loadavg_after"] = os.getloadavg()
        print(f"\nload average before {report['loadavg_before'][0]:.2f}, after {report['loadavg_after'][0]:.2f}")
    finally:
        for tool in tools:
            try:
                tool.close()
            except Exception as exc:  # keep terminating machines whatever a tool did
                print(f"closing {tool.name}: {exc}")
        if fleet is not None:
            fleet.terminate()
        shutil.rmtree(home, ignore_errors=True)
    out = os.path.join(HERE, "results", f"executor-{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
