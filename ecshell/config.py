"""Engine settings as traitlets, so that ``c.EcShell.fanout = 32`` in a profile works.

>>> from ecshell.config import EcShell
>>> EcShell(fanout=8).fanout
8
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from traitlets import Bool, Float, Integer, List, Unicode, default, observe, validate
from traitlets.config import Configurable

from . import logs
from .errors import ArgumentError

if TYPE_CHECKING:
    from traitlets import Bunch


def ecshell_home() -> str:
    """The operator's ecshell directory: ``$ECSHELL_HOME`` or ``~/.ecshell``."""
    return os.path.abspath(os.path.expanduser(os.environ.get("ECSHELL_HOME") or "~/.ecshell"))


class EcShell(Configurable):
    """Settings of the broadcast engine and the SSH connection pool."""

    home = Unicode(help="""Directory for ecshell's own files: the client key, local
        machines, spilled output. Default: $ECSHELL_HOME, else ~/.ecshell.""").tag(config=True)

    default_fabric = Unicode("local", help="""Fabric a bare ``Cluster()`` attaches:
        'local' (sshd processes on 127.0.0.1), 'ec2' or 'static'.""").tag(config=True)

    fanout = Integer(64, help="""Most commands in flight at once in one broadcast
        (worker threads). Hosts past this wait in a queue; their clocks start only
        when a worker takes them.""").tag(config=True)

    connect_timeout = Float(10.0, help="""Seconds allowed to open an SSH connection:
        TCP connect, SSH banner, key exchange and authentication together. A host
        whose ssh_config sets a shorter ConnectTimeout gets that.""").tag(config=True)

    command_timeout = Float(None, allow_none=True, help="""Seconds a command may run
        on one host before it is killed there and reported as 'timeout'.
        None: no limit (Ctrl-C still stops it).""").tag(config=True)

    total_timeout = Float(None, allow_none=True, help="""Seconds a whole broadcast may
        take; hosts not finished by then are stopped and reported as 'timeout'.
        None: no limit.""").tag(config=True)

    dead_peer_timeout = Float(6.0, help="""Seconds after which a connection whose peer
        stopped answering (host gone, network cut) is declared dead, through TCP
        keepalive and TCP_USER_TIMEOUT on the socket. A host whose ssh_config sets
        ServerAliveInterval gets ServerAliveInterval x ServerAliveCountMax.""").tag(config=True)

    output_memory_limit = Integer(4 * 1024 * 1024, help="""Bytes of one host's output
        kept in memory; past this the output continues in a file under
        <home>/spill. Nothing is ever truncated.""").tag(config=True)

    ssh_config = Unicode("~/.ssh/config", help="""OpenSSH client config file that hosts
        ecshell did not launch are resolved through, by OpenSSH's own `ssh -G`
        (Include, Match, tokens, ProxyJump, ProxyCommand, keys, known_hosts ...).
        Your own ~/.ssh/config is read as `ssh NAME` reads it, with
        /etc/ssh/ssh_config; another file as `ssh -F FILE NAME`. Empty: read
        none (OpenSSH's defaults).""").tag(config=True)

    strict_host_key_checking = Unicode(None, allow_none=True, help="""Override for
        OpenSSH's StrictHostKeyChecking for hosts not launched by ecshell: 'yes'
        (refuse unknown keys), 'accept-new' (record a first key), 'ask' (the shell
        asks; code refuses) or 'no'. None: what ssh_config says, else 'ask'.
        A changed key is refused whatever this says.""").tag(config=True)

    kill_on_cancel = Bool(True, help="""Kill a command's process group on the machine
        when it times out or is interrupted. Needs a POSIX login shell (sh, bash,
        dash, zsh, ksh) on the machine; turn off for other shells.""").tag(config=True)

    state_dir = Unicode("~/.ecshell-state", help="""Directory on each machine that holds its
        markers and locks, used where the machine does not set $ECSHELL_STATE_DIR
        (LocalFabric machines do). A leading ~/ means the login user's home.""").tag(config=True)

    gateways = List(Unicode(), help="""Machines (names or patterns, e.g. ['gw-[0-3]']) that
        fan broadcasts out for the controller through ClusterShell's tree mode: a shell
        broadcast to the other machines goes to these gateways, split evenly among them,
        and each gateway runs it on its share over its own OpenSSH. ClusterShell is
        installed on each gateway on first use. Empty: no tree (unless
        topology_file is set).""").tag(config=True)

    topology_file = Unicode("", help="""A ClusterShell topology file ([routes] section,
        'gateways: targets' lines) naming the machines that fan out for the controller,
        instead of gateways. Its root is the controller; every route's gateways and
        targets must be machine names. Empty: none.""").tag(config=True)

    # -- the IPython shell (ecshell.magics) ----------------------------------

    progress_after = Float(1.0, help="""Seconds a shell broadcast (%on, %put, %get) runs
        before the shell streams its output as it arrives and shows a live progress
        line (in a Jupyter kernel: a display redrawn in place, also for the readiness
        wait of %launch and %ready). 0: from the start.""").tag(config=True)

    stream_output = Bool(True, help="""Stream each host's output lines (as 'name: line')
        while a long broadcast runs, before the folded result. False: progress line
        only.""").tag(config=True)

    confirm_terminate_above = Integer(3, help="""%terminate asks before terminating more
        than this many machines (and always for 'all'), unless given -y.
        Number of machines.""").tag(config=True)

    confirm_launch_above = Integer(10, help="""%launch asks before launching more than
        this many machines at once, unless given -y. Number of machines (a fabric's
        own max_launch still caps what one launch may start).""").tag(config=True)

    toolbar = Bool(True, help="""Show running machines and their cost per hour (US
        dollars) in the terminal prompt's bottom toolbar while any run.""").tag(config=True)

    log_level = Unicode(logs.DEFAULT, help="""What log records reach stderr: 'WARNING' (the
        default) shows ecshell's own warnings only; 'DEBUG' or 'INFO' also shows
        paramiko's, tracebacks included (a host's failure is its Result either
        way).""").tag(config=True)

    @validate("log_level")
    def _check_log_level(self, proposal: Bunch) -> str:
        level = str(proposal.value).upper()
        if level not in logs.LEVELS:
            raise ArgumentError(f"log_level is one of {', '.join(logs.LEVELS)}, not {proposal.value!r}; "
                                "e.g. c.EcShell.log_level = 'DEBUG'")
        return level

    @observe("log_level")
    def _apply_log_level(self, change: Bunch) -> None:
        logs.show(change["new"])

    @default("home")
    def _default_home(self) -> str:
        return ecshell_home()

    @validate("fanout")
    def _check_fanout(self, proposal: Bunch) -> int:
        if proposal.value < 1:
            raise ArgumentError(f"fanout must be at least 1, not {proposal.value}; e.g. c.EcShell.fanout = 64")
        return proposal.value

    @validate("connect_timeout", "dead_peer_timeout")
    def _check_positive(self, proposal: Bunch) -> float:
        if proposal.value <= 0:
            raise ArgumentError(f"{proposal.trait.name} must be a positive number of seconds, not {proposal.value}")
        return proposal.value

    executor = Unicode(help="""How shell commands reach a machine.
        'auto': through a persistent executor, a stdlib-only python3 process that
        ecshell starts over the machine's pooled SSH connection on first use (no
        install, no port) and that runs every later command without a new SSH
        session; machines without python3, PTY commands and an executor that died
        twice use one SSH channel per command. 'executor': the executor only (a
        machine without python3 reports 'unreachable'). 'channel': one SSH channel
        per command, as ssh does. Default: $ECSHELL_EXECUTOR if set, else 'auto'.""").tag(config=True)

    executor_shortcut = Bool(True, help="""Let the executor exec a command made only of
        literal words (``hostname``, ``uname -a``, ``df -h /``) itself, the way the
        login shell would, instead of starting the shell for it: a bash start-up is
        most of the CPU a warm broadcast costs. Taken only for bash, and only after
        a probe through the real shell showed its start-up files leave no output,
        functions, aliases, traps, or change to the environment, directory, umask,
        limits or signals. Turn it off if your start-up files must run for every
        command (for their side effects).""").tag(config=True)

    @default("executor")
    def _default_executor(self) -> str:
        return os.environ.get("ECSHELL_EXECUTOR") or "auto"

    @validate("executor")
    def _check_executor(self, proposal: Bunch) -> str:
        if proposal.value not in ("auto", "executor", "channel"):
            raise ArgumentError(f"executor must be 'auto', 'executor' or 'channel', not {proposal.value!r}; "
                                "e.g. c.EcShell.executor = 'auto'")
        return proposal.value

    @validate("strict_host_key_checking")
    def _check_policy(self, proposal: Bunch) -> str | None:
        allowed = (None, "yes", "no", "ask", "accept-new")
        if proposal.value not in allowed:
            raise ArgumentError(f"strict_host_key_checking must be one of 'yes', 'accept-new', 'ask', 'no', not {proposal.value!r}")
        return proposal.value

    @property
    def spill_dir(self) -> str:
        """``<home>/spill``: where a host's output past ``output_memory_limit`` continues."""
        return os.path.join(self.home, "spill")
