"""A short interactive demo: launch local machines, broadcast, read folded results.

Run as ``ecshell-demo``; the IPython shell (``ecshell``) is the full tool.
"""

import sys


def main(argv=None):
    from IPython.lib.pretty import pretty

    from ecshell import Cluster, LocalFabric

    cluster = Cluster(LocalFabric())
    try:
        print("launching 3 local machines (real sshd on 127.0.0.1) ...")
        web = cluster.launch(3, name="demo")
        print(web)
        for command in ("hostname; echo $ECSHELL_MACHINE", "exit $((RANDOM % 2))"):
            print(f"\n$ {command}")
            print(pretty(web.run(command, timeout=10)))
        print("\ntype a shell command to broadcast (empty line to quit)")
        while True:
            try:
                command = input("demo> ").strip()
            except EOFError:
                break
            if not command:
                break
            print(pretty(web.run(command)))
    except KeyboardInterrupt:
        print()
    finally:
        cluster.terminate("demo-*") if len(cluster) else None
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
