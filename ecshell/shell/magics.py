"""The shell's magics: parse what the operator typed, call :class:`ecshell.session.Session`.

Each magic is a short body over the plain core; nothing here is needed to
use ecshell from Python. Operator mistakes (a target that selects nothing, a
bad argument) come back as IPython ``UsageError``s: one line, no traceback.

No magic here lets IPython expand ``$var`` or ``{expr}`` in its line: names and
tags come from cloud APIs others can write, and a completed ``{...}`` would run.
"""

import argparse
import shlex

from IPython.core.error import UsageError
from IPython.core.magic import (
    Magics,
    line_cell_magic,
    line_magic,
    magics_class,
    no_var_expand,
)
from IPython.core.magic_arguments import argument, magic_arguments

from .. import arguments
from ..errors import EcShellError

#: The magics this module defines (the extension never registers one whose name is taken).
NAMES = ("cluster", "launch", "on", "ready", "terminate", "put", "get", "cost", "cloudlet")


def _parse(magic, line):
    """Split like a POSIX shell (as ssh does with its arguments), then argparse."""
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot read {line!r}: {exc}") from None
    return magic.parser.parse_args(argv)


def _seconds(text):
    """argparse type of ``-t``: seconds above 0, finite (``nan`` and ``inf`` are refused)."""
    try:
        return arguments.required_seconds("timeout", float(text))
    except (ValueError, EcShellError):
        raise argparse.ArgumentTypeError(f"give the seconds each host may take, a number above 0 "
                                         f"like -t 30; not {text!r}") from None


class _Errors:
    """Turn ecshell's operator errors into UsageError (message only)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if isinstance(value, EcShellError):
            raise UsageError(str(value)) from None
        return False


@magics_class
class EcShellMagics(Magics):
    """%cluster %launch %on/%%on %ready %terminate %put %get %cost %cloudlet over one Session."""

    def __init__(self, shell, session):
        super().__init__(shell)
        self.session = session

    @line_magic
    @no_var_expand
    @magic_arguments()
    @argument("--no-markers", action="store_true", help="do not read markers from the machines (faster)")
    def cluster(self, line):
        """A table of machines: name, fabric, id, state, address, uptime, cost so far, markers.

        Examples
        --------
        ::

            In [1]: %cluster
            name    fabric  id           state  address          uptime   cost     markers
            web-0   local   lm-1a2b3c4d  ready  127.0.0.1:40211  0:03:12  $0.0000  configured
            3 machines, 3 running, $0.0000/h
        """
        args = _parse(self.cluster, line)
        with _Errors():
            return self.session.machine_table(markers=not args.no_markers)

    @line_magic
    @no_var_expand
    @magic_arguments()
    @argument("count", type=int, help="how many machines")
    @argument("--name", default="node", help="name prefix: machines are NAME-0, NAME-1, ... (default: node)")
    @argument("--type", dest="instance_type", help="instance type (EC2), e.g. t3.micro")
    @argument("--image", help="image id (EC2), e.g. ami-0123456789abcdef0")
    @argument("--fabric", help="which attached fabric launches them (default: the first)")
    @argument("--no-wait", action="store_true", help="return at once; %%ready checks them later")
    @argument("-y", "--yes", action="store_true", help="do not ask, even for more than confirm_launch_above")
    def launch(self, line):
        """Launch machines and (by default) wait until they are really ready.

        Asks first for more than ``c.EcShell.confirm_launch_above`` machines,
        unless -y; a fabric never starts more than its ``max_launch`` in one go.

        Examples
        --------
        ::

            In [1]: %launch 3 --name web
            Out[1]: <MachineSet web-[0-2] (3)>

            In [2]: %launch 2 --name db --no-wait

            In [3]: %launch 40 --name batch -y
        """
        args = _parse(self.launch, line)
        if args.count < 1:
            raise UsageError(f"count must be at least 1, not {args.count}; e.g. %launch 3")
        with _Errors():
            return self.session.launch(args.count, name=args.name, instance_type=args.instance_type,
                                       image=args.image, fabric=args.fabric, wait=not args.no_wait,
                                       yes=args.yes)

    @line_cell_magic
    @no_var_expand
    @magic_arguments()
    @argument("-t", "--timeout", type=_seconds, help="seconds the command may run on each host")
    @argument("--quiet", action="store_true", help="no live progress or streamed output")
    @argument("--transport", choices=("direct", "tree", "ssm"),
              help="what carries it (default: each machine's own: gateways, Ec2Fabric.transport, else direct)")
    @argument("target", metavar="TARGET", help="all, a name, a glob (web-*), a range (web-[0-3]), "
                                               "a tag (role=db), marker=NAME, ok or failed")
    @argument("command", metavar="CMD", nargs=argparse.REMAINDER,
              help="the shell command (the cell, for %%%%on); none after 'failed': the last one again")
    def on(self, line, cell=None):
        """Broadcast a shell command to TARGET; returns the ResultSet, shown folded.

        The words after TARGET are joined as ssh joins them: quote a command
        as one word ('exit 3') or write it plainly. ``$VAR`` and ``{expr}``
        are never expanded here: the remote shell sees them. ``%on failed``
        with no command runs the last command again where it failed. Options
        go before TARGET. Every ResultSet is kept in ``cluster.history``.

        Examples
        --------
        ::

            In [1]: %on all hostname
            ---------------- web-[0-2] (3) ok
            web.example
            3 ok, 0 failed -- hostname

            In [2]: r = %on web-[0-1] echo $HOME

            In [3]: %on role=db 'exit 3'

            In [4]: %on failed

            In [5]: %%on -t 60 web-*
               ...: cd /srv/app
               ...: git pull && make
        """
        args = _parse(self.on, line)
        if cell is not None:
            if args.command:
                raise UsageError("%%on takes the command from the cell: put only options and TARGET on the first line")
            command = cell
        else:
            command = " ".join(args.command)
        with _Errors():
            return self.session.on(args.target, command or None, timeout=args.timeout, live=not args.quiet,
                                   transport=args.transport)

    @line_magic
    @no_var_expand
    @magic_arguments()
    @argument("target", nargs="?", default="all", help="machines to check (default: all)")
    def ready(self, line):
        """Run the two-stage readiness check now: the fabric says running, and `true` over SSH works.

        Examples
        --------
        ::

            In [1]: %ready
            Out[1]: <MachineSet web-[0-2] (3)>

            In [2]: %ready db-*
        """
        args = _parse(self.ready, line)
        with _Errors():
            return self.session.ready(args.target)

    @line_magic
    @no_var_expand
    @magic_arguments()
    @argument("target", help="machines to terminate: all, a name, a glob, a range, a tag, failed")
    @argument("-y", "--yes", action="store_true", help="do not ask, even for all or many machines")
    def terminate(self, line):
        """Terminate machines; asks first for `all` or more than a few, unless -y.

        Examples
        --------
        ::

            In [1]: %terminate web-2
            In [2]: %terminate all -y
        """
        args = _parse(self.terminate, line)
        with _Errors():
            return self.session.terminate(args.target, yes=args.yes)

    @line_magic
    @no_var_expand
    @magic_arguments()
    @argument("src", help="local file")
    @argument("dest", help="remote path (a directory keeps the file's name)")
    @argument("target", nargs="?", default="all", help="machines (default: all)")
    @argument("-m", "--mode", help="octal permissions to set, 0 to 7777, e.g. 755 or 0644")
    def put(self, line):
        """Copy a local file to every machine of TARGET (SFTP on the pooled connections).

        Examples
        --------
        ::

            In [1]: %put app.tar.gz /tmp/ web-*
            In [2]: %put run.sh /tmp/run.sh all -m 755
        """
        args = _parse(self.put, line)
        with _Errors():
            mode = None if args.mode is None else arguments.octal(args.mode)
            return self.session.put(args.src, args.dest, args.target, mode=mode)

    @line_magic
    @no_var_expand
    @magic_arguments()
    @argument("src", help="remote file")
    @argument("dest", help="local directory (made when missing): each machine's copy goes to DEST/<machine name>/")
    @argument("target", nargs="?", default="all", help="machines (default: all)")
    def get(self, line):
        """Copy a remote file from every machine of TARGET to DEST/<machine name>/.

        Examples
        --------
        ::

            In [1]: %get /var/log/syslog logs/ web-*
        """
        args = _parse(self.get, line)
        with _Errors():
            return self.session.get(args.src, args.dest, args.target)

    @line_magic
    @no_var_expand
    @magic_arguments()
    def cost(self, line):
        """What is running, for how long, and what it has cost (an estimate, US dollars).

        Examples
        --------
        ::

            In [1]: %cost
            fabric  machines   count  longest up  machine-hours  each/h   total/h  so far
            ec2     web-[0-2]  3      1:02:00     3.10           $0.0104  $0.0312  $0.0322
        """
        _parse(self.cost, line)
        with _Errors():
            return self.session.cost()

    @line_magic
    @magic_arguments()
    @argument("user", nargs="?", help="whose cloudlet (none: list the cloudlets running now)")
    @argument("--login", action="store_true", help="an interactive shell inside it, on this terminal")
    @argument("--save", action="store_true", help="save its state to the store now")
    @argument("--release", action="store_true", help="save it, stop it and free its slot")
    def cloudlet(self, line):
        """A user's cloudlet: the running one, else placed now with the user's saved state.

        Set up once with ``cluster.cloudlets.configure(hosts=..., store=...)``
        (see ``ecshell.cloudlets``). Without a user, lists the cloudlets
        running now and their machines.

        Examples
        --------
        ::

            In [1]: %cloudlet alice
            Out[1]: <Cloudlet alice on cloudlets-0 (127.0.0.1:40211)>

            In [2]: %on cloudlet:alice uname -n
            In [3]: %cloudlet alice --login
            root@alice:~# exit
            In [4]: %cloudlet alice --release
        """
        args = _parse(self.cloudlet, line)
        if sum((args.login, args.save, args.release)) > 1:
            raise UsageError("choose one of --login, --save and --release")
        if args.user is None and (args.login or args.save or args.release):
            raise UsageError("name the user: %cloudlet alice --login")
        with _Errors():
            if args.user is None:
                return self.session.cloudlet_table()
            return self.session.cloudlet(args.user, login=args.login, save=args.save, release=args.release)
