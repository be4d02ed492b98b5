"""The ``ecshell`` command: IPython with the extension and the operator profile loaded.

::

    $ ecshell --fabric local        # machines are sshd processes on 127.0.0.1
    $ ecshell --fabric static --hosts h0,h1,ops@10.0.0.5:2222
    $ ecshell --fabric ec2 --EcShell.fanout=32 --Ec2Fabric.region=eu-west-1

Options it does not know go to IPython unchanged (``--Class.trait=value``
sets any traitlets option). IPython's directory defaults to
``<ECSHELL_HOME>/ipython`` (history, and your own ``profile_operator``),
so ecshell's shell keeps apart from your everyday IPython.
"""

import argparse
import os
import sys

FABRICS = ("local", "ec2", "static")


def operator_profile():
    """The operator profile's ipython_config.py shipped with ecshell, or None."""
    path = os.environ.get("ECSHELL_PROFILE")
    if path:
        return path
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "profiles", "operator", "ipython_config.py")
    return path if os.path.isfile(path) else None


def ipython_argv(argv):
    """(IPython's argv, traitlets Config) for the ``ecshell`` command line ``argv``."""
    from traitlets.config import Config

    from ..config import ecshell_home

    parser = argparse.ArgumentParser(
        prog="ecshell", description="IPython with ecshell loaded: a live `cluster` and the %on, %launch, "
        "%cluster, ... magics. Other options are passed to IPython.")
    parser.add_argument("--fabric", choices=FABRICS, help="what a bare Cluster() attaches (c.EcShell.default_fabric)")
    parser.add_argument("--hosts", help="comma-separated hosts for --fabric static (names from ~/.ssh/config "
                        "or user@host:port)")
    args, rest = parser.parse_known_args(argv)
    config = Config()
    if args.hosts:
        config.StaticFabric.hosts = [h for h in args.hosts.replace(",", " ").split() if h]
        args.fabric = args.fabric or "static"
    if args.fabric:
        config.EcShell.default_fabric = args.fabric
    given = " ".join(rest)
    ipython = []
    if "--ipython-dir" not in given and not os.environ.get("IPYTHONDIR"):
        directory = os.path.join(ecshell_home(), "ipython")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        ipython.append("--ipython-dir=" + directory)
    if "--profile" not in given:
        ipython.append("--profile=operator")
    profile = operator_profile()
    if profile and "--config" not in given:
        ipython.append("--config=" + profile)
    ipython.append("--ext=ecshell")
    return ipython + rest, config


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ipython, config = ipython_argv(argv)
    from IPython import start_ipython

    start_ipython(argv=ipython, config=config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
