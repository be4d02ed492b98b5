#!/usr/bin/env python3
"""Cloudlet benchmark: hand-out from a warm free list against a machine from scratch; moving 100 MB of state.

A script, not a test; it needs root and bubblewrap (real sandboxes). In a
temporary ECSHELL_HOME and HOME it launches local machines (real sshd on
127.0.0.1, LocalFabric): a store machine and a free list of two cloudlet
hosts, filled before anything is timed. Round after round, interleaved:

- hand-out:  ``cluster.cloudlet(user)`` for a new user on the warm free
             list (read the markers, take the store's lock, claim the slot,
             start the sandbox, write the record), then the same user again
             after a release, so her saved state (``--state-mb``, default 1)
             is restored on the way;
- scratch:   ``cluster.launch(1)``, the runtime recipe with
             ``--install-seconds`` of sleep standing in for installing
             bubblewrap (default 2 s; apt-get takes longer), then placing the
             cloudlet on that machine;
- move:      a cloudlet carrying ``--move-mb`` (default 100) of random bytes
             (incompressible) moved to the other host: save (tar on the host,
             to the controller, to the store), stop, send, restore, start.

Every machine started is terminated at the end, whatever happened.

    python benchmarks/cloudlets.py                    # 5 rounds, 3 moves of 100 MB
    python benchmarks/cloudlets.py --rounds 3 --moves 1

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


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def line(name, values):
    s = summary(values)
    return f"{name:<34} median {s['median']:.3f}s (min {s['min']:.3f}, max {s['max']:.3f}, n={s['n']})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--moves", type=int, default=3)
    parser.add_argument("--install-seconds", type=float, default=2.0)
    parser.add_argument("--state-mb", type=int, default=1)
    parser.add_argument("--move-mb", type=int, default=100)
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("bwrap") is None:
        sys.exit("cloudlets need root and bubblewrap (apt-get install bubblewrap)")

    from broadcast import scratch_home

    scratch_dir = scratch_home("ecshell-bench-cloudlets-")

    from ecshell import Cluster, LocalFabric, Shell, once
    from ecshell.cloudlets import DirectoryStore, runtime_recipe

    fabric = LocalFabric()
    cluster = Cluster(fabric)
    install = [once("bench-install")(Shell(f"sleep {args.install_seconds:g}"))]
    times = {"handout_new": [], "handout_restore": [], "scratch": [], "move": [], "save": []}
    try:
        store = cluster.launch(1, name="store")[0]
        pool = cluster.free_list("cloudlets", size=2, recipe=install + runtime_recipe())
        pool.fill()  # ahead of time: not measured
        cluster.cloudlets.configure(hosts=pool, store=DirectoryStore(
            store, os.path.join(store.prototype.extra["directory"], "cloudlets")))
        for number in range(args.rounds):
            user = f"user{number}"
            started = time.perf_counter()
            cloudlet = cluster.cloudlet(user)
            times["handout_new"].append(time.perf_counter() - started)
            assert cloudlet.run("uname -n").output == f"{user}\n"
            assert cloudlet.run(f"head -c {args.state_mb:d}M /dev/urandom > /root/state.bin").ok
            cloudlet.release()
            started = time.perf_counter()
            again = cluster.cloudlet(user)
            times["handout_restore"].append(time.perf_counter() - started)
            assert again.run("stat -c %s /root/state.bin").output == f"{args.state_mb * 1048576}\n"
            again.release()

            started = time.perf_counter()
            machine = cluster.launch(1, name="scratch")[0]
            outcome = machine.apply(install + runtime_recipe())
            placed = cluster.cloudlets.place(f"scratch{number}", on=machine)
            times["scratch"].append(time.perf_counter() - started)
            assert outcome.all_ok and placed.run("true").ok
            placed.release()
            cluster.terminate(machine)
            print(f"round {number + 1}: hand-out {times['handout_new'][-1]:.3f}s, with {args.state_mb} MB restored "
                  f"{times['handout_restore'][-1]:.3f}s; scratch {times['scratch'][-1]:.3f}s", flush=True)

        mover = cluster.cloudlet("mover")
        assert mover.run(f"head -c {args.move_mb:d}M /dev/urandom > /root/big.bin").ok
        for number in range(args.moves):
            started = time.perf_counter()
            mover.save()
            times["save"].append(time.perf_counter() - started)
            target = next(m for m in pool.scan()["free"] if m.name != mover.machine.name)
            started = time.perf_counter()
            mover = mover.move(target)
            times["move"].append(time.perf_counter() - started)
            assert mover.run("stat -c %s /root/big.bin").output == f"{args.move_mb * 1048576}\n"
            print(f"move {number + 1}: save {times['save'][-1]:.3f}s, move {times['move'][-1]:.3f}s", flush=True)
        mover.release()
    finally:
        cluster.close()
        fabric.terminate([p.id for p in fabric.discover()])
        shutil.rmtree(scratch_dir, ignore_errors=True)

    report = {
        "benchmark": "cloudlets",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "install_seconds": args.install_seconds, "state_mb": args.state_mb, "move_mb": args.move_mb,
        **{name: summary(values) for name, values in times.items() if values},
        "raw": times,
    }
    print(line("hand-out, new user (warm list):", times["handout_new"]))
    print(line(f"hand-out, {args.state_mb} MB state restored:", times["handout_restore"]))
    print(line(f"launch+configure+place (install {args.install_seconds:g}s):", times["scratch"]))
    print(line(f"save {args.move_mb} MB:", times["save"]))
    print(line(f"move {args.move_mb} MB between machines:", times["move"]))
    results = os.path.join(HERE, "results")
    os.makedirs(results, exist_ok=True)
    path = os.path.join(results, f"cloudlets-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"written {path}")


if __name__ == "__main__":
    main()
