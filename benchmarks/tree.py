#!/usr/bin/env python3
"""Tree-mode benchmark: the controller's CPU per broadcast through gateways, against the direct path.

A script, not a test. It launches G gateway machines and N target machines
(real sshd on 127.0.0.1, through LocalFabric, in a temporary ECSHELL_HOME and
HOME), then broadcasts ``hostname`` to the N targets directly (cold: connecting
and starting the executors; warm: pooled) and through the gateways with
ClusterShell's tree mode (``c.EcShell.gateways``), checks that both give the
same results, and records per broadcast the wall time, this process's CPU
seconds and the CPU of the child processes it waited for (the tree's ssh
clients to the gateways). The gateways and targets share this machine, so
the whole machine's CPU is recorded too (from /proc/stat). Every machine is
terminated at the end, whatever happened.

    python benchmarks/tree.py --targets 200 --gateways 4 --rounds 3

JSON goes to benchmarks/results/ (gitignored).
"""

import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing
sys.path.insert(0, HERE)

from broadcast import loadavg, median, raise_fd_limit, ru_maxrss_mb, scratch_home  # noqa: E402

COMMAND = "hostname"


def machine_cpu_seconds():
    """CPU seconds the whole machine has spent (user, nice, system, irq, softirq), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6]
    return busy / os.sysconf("SC_CLK_TCK")


def measured(run):
    """(result, figures) of ``run()``: wall seconds, this process's and its children's CPU, the machine's."""
    before, machine = os.times(), machine_cpu_seconds()
    started = time.perf_counter()
    result = run()
    wall = time.perf_counter() - started
    after = os.times()
    return result, {
        "wall": wall,
        "controller_cpu": (after.user - before.user) + (after.system - before.system),
        "children_cpu": (after.children_user - before.children_user)
                        + (after.children_system - before.children_system),
        "machine_cpu": machine_cpu_seconds() - machine,
    }


def outcome(rs):
    return {name: (r.output, r.status) for name, r in rs.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)

    def log(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    raise_fd_limit(max(4096, 16 * (args.targets + args.gateways)))
    home = scratch_home("ecshell-tree-bench-")

    from ecshell import Cluster, LocalFabric

    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:], "command": COMMAND,
              "targets": args.targets, "gateways": args.gateways, "cpus": os.cpu_count(),
              "loadavg_before": loadavg()}
    fabric = LocalFabric(start_timeout=120.0)
    cluster = Cluster(fabric, gateways=["gw-*"])
    try:
        log(f"launching {args.gateways} gateways and {args.targets} targets in {home}")
        cluster.launch(args.gateways, name="gw")
        launched = 0
        while launched < args.targets:  # LocalFabric launches at most 100 in one call
            launched += len(cluster.launch(min(100, args.targets - launched), name="node"))
        nodes = cluster["node-*"]
        samples = {"direct_cold": [], "direct_warm": [], "tree": []}
        nodes.close()  # the readiness check pooled connections: the cold broadcast opens them again
        _, figures = measured(lambda: nodes.run(COMMAND, transport="direct"))
        samples["direct_cold"].append(figures)
        reference = None
        for round_ in range(args.rounds + 1):
            direct, d = measured(lambda: nodes.run(COMMAND, transport="direct"))
            tree, t = measured(lambda: nodes.run(COMMAND, transport="tree"))
            if outcome(tree) != outcome(direct):
                different = [n for n in direct if outcome(direct)[n] != outcome(tree)[n]][:5]
                raise RuntimeError(f"the tree and the direct path differ, e.g. on {different}")
            reference = outcome(direct)
            if round_ == 0:
                log(f"warm-up: direct {d['wall']:.2f}s, tree {t['wall']:.2f}s (the tree's first includes the install)")
                report["tree_first"] = t
                continue
            samples["direct_warm"].append(d)
            samples["tree"].append(t)
            log(f"round {round_}: direct {d['wall']:.2f}s cpu {d['controller_cpu']:.2f}s; tree {t['wall']:.2f}s "
                f"cpu {t['controller_cpu']:.2f}s + children {t['children_cpu']:.2f}s, machine {t['machine_cpu']:.1f}s")
        report["ok"] = sum(1 for output, status in reference.values() if status == "ok")
        report["samples"] = samples
        report["median"] = {mode: {k: median([s[k] for s in xs]) for k in xs[0]} for mode, xs in samples.items() if xs}
        report["ru_maxrss_mb"] = ru_maxrss_mb()
    finally:
        cluster.close()
        try:
            fabric.terminate([p.id for p in fabric.discover()])
        except Exception as exc:
            log(f"terminate failed: {exc}")
        shutil.rmtree(home, ignore_errors=True)
    report["loadavg_after"] = loadavg()
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, f"tree-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\n{COMMAND!r} to {args.targets} targets, {args.gateways} gateways; load {report['loadavg_before']} before, "
          f"{report['loadavg_after']} after; median of {args.rounds} rounds, seconds:")
    for mode, m in report["median"].items():
        print(f"  {mode:<12} wall {m['wall']:7.3f}  controller CPU {m['controller_cpu']:6.3f}  "
              f"its children {m['children_cpu']:6.3f}  whole machine {m['machine_cpu']:7.2f}")
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
