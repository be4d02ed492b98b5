#!/usr/bin/env python3
"""Free list benchmark: hand out a warm machine against launch + configure from scratch.

A script, not a test. In a temporary ECSHELL_HOME and HOME it launches local
machines (real sshd on 127.0.0.1, LocalFabric) and, round after round,
interleaved, measures the wall time until an operator holds a machine that
has run the whole recipe and the per-user last step:

- scratch:  ``cluster.launch(1)`` (waits until really ready), then the recipe
            and the last step, as ``machine.apply(recipe + [last])``;
- hand-out: ``pool.take(user)`` from a free list filled beforehand (the fill
            is not timed: it is what the free list does ahead of time). The
            hand-out reads the pool's markers, claims ``taken.<pool>`` on the
            machine and runs the last step.

Local machines have nothing to install, so the recipe stands in for real
configuration with ``--install-seconds`` of sleep in one step (default 2 s,
a fast package install; real ones take minutes, which only widens the gap)
plus steps that write a config file and a 4 MB cache. Every machine started
is terminated at the end, whatever happened.

    python benchmarks/freelist.py                 # 5 rounds, 2 s install
    python benchmarks/freelist.py --rounds 3 --install-seconds 0   # the bare overheads

JSON goes to benchmarks/results/.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing
sys.path.insert(0, HERE)  # benchmarks/broadcast.py


def recipe(install_seconds):
    from ecshell import Shell, once

    return [
        once("packages")(Shell(f"sleep {install_seconds:g}")),
        once("config")(Shell('printf "listen 8080\\nworkers 4\\n" > "$ECSHELL_STATE_DIR/../app.conf"')),
        once("cache")(Shell('head -c 4194304 /dev/zero > "$ECSHELL_STATE_DIR/../cache.bin"')),
    ]


def last(user):
    from ecshell import Shell, quote

    return Shell(f'echo {quote(user)} > "$ECSHELL_STATE_DIR/../owner"')


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--install-seconds", type=float, default=2.0)
    args = parser.parse_args()

    from broadcast import scratch_home

    scratch_dir = scratch_home("ecshell-bench-freelist-")

    from ecshell import Cluster, LocalFabric

    fabric = LocalFabric()
    cluster = Cluster(fabric)
    steps = recipe(args.install_seconds)
    pool = cluster.free_list("bench", size=1, recipe=steps, last=last)
    times = {"scratch": [], "handout": []}
    try:
        pool.fill()
        for number in range(args.rounds):
            started = time.perf_counter()
            machine = cluster.launch(1, name="scratch")[0]
            outcome = machine.apply(steps + [last("user%d" % number)])
            times["scratch"].append(time.perf_counter() - started)
            assert outcome.all_ok, outcome.failed
            cluster.terminate(machine)

            pool.fill()  # ahead of time: not measured
            started = time.perf_counter()
            handed = pool.take(user="user%d" % number, refill=False)
            times["handout"].append(time.perf_counter() - started)
            assert handed.facts["handed_out"].ok
            cluster.terminate(handed)
            print(f"round {number + 1}: scratch {times['scratch'][-1]:.3f}s  hand-out {times['handout'][-1]:.3f}s",
                  flush=True)
    finally:
        cluster.close()
        fabric.terminate([p.id for p in fabric.discover()])
        shutil.rmtree(scratch_dir, ignore_errors=True)

    report = {
        "benchmark": "freelist",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "install_seconds": args.install_seconds,
        "scratch": summary(times["scratch"]),
        "handout": summary(times["handout"]),
        "raw": times,
    }
    report["speedup_median"] = report["scratch"]["median"] / report["handout"]["median"]
    print(f"launch+configure from scratch: median {report['scratch']['median']:.3f}s "
          f"(min {report['scratch']['min']:.3f}, max {report['scratch']['max']:.3f})")
    print(f"hand-out from the free list:   median {report['handout']['median']:.3f}s "
          f"(min {report['handout']['min']:.3f}, max {report['handout']['max']:.3f})")
    print(f"hand-out is {report['speedup_median']:.1f}x faster (medians, install step {args.install_seconds:g}s)")
    results = os.path.join(HERE, "results")
    os.makedirs(results, exist_ok=True)
    path = os.path.join(results, f"freelist-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"written {path}")


if __name__ == "__main__":
    main()
