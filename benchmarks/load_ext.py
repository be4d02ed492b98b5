#!/usr/bin/env python3
"""What ``%load_ext ecshell`` adds to an IPython session (target: under 150 ms).

A script, not a test. Each round is a fresh Python process (imports are
cached per process, so only a fresh one measures the real cost) in a
temporary ECSHELL_HOME and HOME. The process builds an ``InteractiveShell``
(not timed: that is IPython's own start-up) and then times
``%load_ext ecshell`` alone, which includes importing ecshell's modules,
building ``cluster`` from the shell's config (LocalFabric discovery of the
machines on disk) and registering magics, completion and display hooks. It
also reports whether paramiko or boto3 got imported (they must not be).

    python benchmarks/load_ext.py                  # 9 rounds, no machines on disk
    python benchmarks/load_ext.py --machines 10    # with 10 local machines to discover

With ``--machines N`` it launches N real local machines first (sshd on
127.0.0.1) and terminates them at the end, whatever happened. JSON goes to
benchmarks/results/.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config
config = Config()
config.HistoryManager.hist_file = ":memory:"
shell = InteractiveShell.instance(config=config)
t1 = time.perf_counter()
shell.run_line_magic("load_ext", "ecshell")
t2 = time.perf_counter()
print(json.dumps({"ipython_s": t1 - t0, "load_ext_s": t2 - t1,
                  "machines": len(shell.user_ns["cluster"]),
                  "paramiko": "paramiko" in sys.modules, "boto3": "boto3" in sys.modules}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--machines", type=int, default=0, help="local machines on disk to discover")
    args = parser.parse_args()

    scratch = tempfile.mkdtemp(prefix="ecshell-bench-load-")
    env = dict(os.environ, HOME=os.path.join(scratch, "home"), ECSHELL_HOME=os.path.join(scratch, "ecshell"))
    os.makedirs(env["HOME"])
    fabric = None
    try:
        if args.machines:
            os.environ.update(HOME=env["HOME"], ECSHELL_HOME=env["ECSHELL_HOME"])
            from ecshell import LocalFabric

            fabric = LocalFabric()
            fabric.launch(args.machines, name="bench")
        runs = []
        for _ in range(args.rounds):
            out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        loads = [r["load_ext_s"] for r in runs]
        summary = {
            "benchmark": "load_ext", "rounds": args.rounds, "machines_on_disk": args.machines,
            "load_ext_median_ms": round(statistics.median(loads) * 1000, 1),
            "load_ext_min_ms": round(min(loads) * 1000, 1),
            "load_ext_max_ms": round(max(loads) * 1000, 1),
            "ipython_start_median_ms": round(statistics.median(r["ipython_s"] for r in runs) * 1000, 1),
            "paramiko_imported": any(r["paramiko"] for r in runs),
            "boto3_imported": any(r["boto3"] for r in runs),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        print(json.dumps(summary, indent=1))
        results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
        os.makedirs(results, exist_ok=True)
        with open(os.path.join(results, f"load_ext-{args.machines}.json"), "w") as f:
            json.dump({"summary": summary, "runs": runs}, f, indent=1)
        verdict = "under" if summary["load_ext_median_ms"] < 150 else "OVER"
        print(f"%load_ext ecshell: median {summary['load_ext_median_ms']} ms ({verdict} the 150 ms target)")
    finally:
        if fabric is not None:
            fabric.terminate([p.id for p in fabric.discover()])
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
