"""What ecshell-login adds to every `ssh host CMD`: its start-up before it execs /bin/sh.

    python benchmarks/login_shell.py [path/to/ecshell-login]

Runs `SHELL -c true` many times for /bin/sh, /bin/bash and ecshell-login
(default: the one next to this Python, else on PATH), interleaved, and
prints the median wall time of each. No SSH involved: this is the part the
login shell itself costs on the machine, on top of sshd's own per-session
work.
"""

import os
import shutil
import statistics
import subprocess
import sys
import time


def median_ms(argv, rounds):
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(argv, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main():
    login = sys.argv[1] if len(sys.argv) > 1 else None
    if login is None:
        beside = os.path.join(os.path.dirname(sys.executable), "ecshell-login")
        login = beside if os.path.exists(beside) else shutil.which("ecshell-login")
    if not login:
        sys.exit("no ecshell-login found: pip install -e . or give its path")
    shells = {"/bin/sh": ["/bin/sh"], "/bin/bash": ["/bin/bash"], "ecshell-login": [login]}
    for argv in shells.values():  # warm-up
        median_ms(argv + ["-c", "true"], 3)
    results = {name: [] for name in shells}
    for _ in range(5):
        for name, argv in shells.items():
            results[name].append(median_ms(argv + ["-c", "true"], 20))
    for name, values in results.items():
        print(f"{name:>14} -c true: {statistics.median(values):6.1f} ms (median of 5 x 20)")


if __name__ == "__main__":
    main()
