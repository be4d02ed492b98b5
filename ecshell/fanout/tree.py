"""ClusterShell's tree mode: gateway machines fan a broadcast out for the controller.

>>> cluster = Cluster(LocalFabric(), gateways=["gw-[0-1]"])   # doctest: +SKIP
>>> cluster.launch(2, name="gw"); nodes = cluster.launch(20, name="node")   # doctest: +SKIP
>>> nodes.run("uptime")                 # through gw-0 and gw-1        # doctest: +SKIP
>>> nodes.run("uptime", transport="direct")                          # doctest: +SKIP

With ``c.EcShell.gateways`` the targets of a broadcast are split evenly
among the gateways (in order, contiguous shares); with
``c.EcShell.topology_file`` ClusterShell's own topology (its root is this
controller's short host name) routes them, several levels deep if it says
so. The controller runs one ClusterShell Task with that topology: its ssh
reaches each gateway (as the controller resolved it, the gateway's pinned
key checked), runs ClusterShell's gateway there (installed by
:mod:`.gateways`), and the gateway's own OpenSSH reaches the targets.

What comes back is mapped to the direct path's Result: exit codes as they
are; ssh's own failures (exit 255 with ssh's message) by their message
(:func:`ssh_failure`: a stopped target is ``timeout``, a dead one
``unreachable``, a key that is not the pinned one ``hostkey``); a command
past its timeout is ``timeout`` and is then killed on the machine (the
direct path's kill script, sent through the tree); Ctrl-C aborts the task,
kills what still ran the same way, and marks it ``interrupted``.

What the tree cannot do as the direct path does: ClusterShell carries
output line by line, so a last line without a newline gets one; a target's
output reaches its Result when the target ends, not streamed as it arrives;
no stdin, no PTY; a command killed by a signal is seen through ssh (exit
255, no signal name); no ProxyJump or ProxyCommand for targets (a gateway
reaches each target at the address the controller resolved); and every
broadcast opens new SSH connections (controller to gateways, gateways to
targets): nothing is pooled.
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from ..errors import ConnectError, ErrorKind
from ..hostset import fold, match
from ..ssh.transport import RUN_VARIABLE, kill_script, run_token
from .base import Fanout, FanoutRun, command_line_only
from .gateways import Installer, host_block, host_key_policy, identity_names, invoke_command, known_hosts
from .routes import TREE

if TYPE_CHECKING:
    from ..commands import Shell
    from ..machine import Machine

#: Name of the controller in the topology ecshell writes for ``c.EcShell.gateways``.
ROOT = "ecshell-controller"
#: Seconds the kill of timed-out or interrupted commands may take through the tree.
KILL_TIMEOUT = 10.0

#: ssh's own error messages (exit 255) and the kinds they are.
SSH_FAILURES = (
    ("Host key verification failed", ErrorKind.HOSTKEY),
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", ErrorKind.HOSTKEY),
    ("No host key is known", ErrorKind.HOSTKEY),
    ("Permission denied", ErrorKind.AUTH),
    ("timed out", ErrorKind.TIMEOUT),
    ("Connection refused", ErrorKind.UNREACHABLE),
    ("No route to host", ErrorKind.UNREACHABLE),
    ("Could not resolve hostname", ErrorKind.UNREACHABLE),
    ("Connection closed by", ErrorKind.UNREACHABLE),
    ("Connection reset", ErrorKind.UNREACHABLE),
    ("Broken pipe", ErrorKind.LOST),
)


def ssh_failure(stderr: str) -> Optional[ErrorKind]:
    """The kind of an ssh failure by its message, or None if ssh did not fail (the command exited 255)."""
    for text, kind in SSH_FAILURES:
        if text in stderr:
            return kind
    return None


def _proxied(machine: Machine) -> bool:
    """Whether the controller reaches ``machine`` through a ProxyJump or ProxyCommand (a name that
    does not resolve counts as not: the tree reports it)."""
    try:
        endpoint = machine.endpoint
    except ConnectError:
        return False
    return endpoint.proxy_jump is not None or endpoint.proxy_command is not None


def shares(targets: list[Machine], gateways: list[Machine]) -> dict[str, list[Machine]]:
    """``{gateway name: its targets}``: contiguous, even shares in order."""
    count = len(gateways)
    size, extra = divmod(len(targets), count)
    found, start = {}, 0
    for index, gateway in enumerate(gateways):
        end = start + size + (1 if index < extra else 0)
        if end > start:
            found[gateway.name] = targets[start:end]
        start = end
    return found


class TreeFanout(Fanout):
    """Broadcasts through gateway machines with ClusterShell's tree mode."""

    name = TREE

    def __init__(self, settings: Any, machines: Callable[[], Iterable[Machine]]):
        self.settings = settings
        self.machines = machines
        self.installer = Installer(settings)

    # -- which machines -------------------------------------------------------

    def _topology(self) -> Any:
        from ClusterShell.Topology import TopologyParser

        return TopologyParser(os.path.expanduser(self.settings.topology_file)).tree(socket.gethostname().split(".")[0])

    def gateways(self) -> list[Machine]:
        """The gateway machines, in order (the first level of the topology file's tree)."""
        known = list(self.machines())
        if self.settings.topology_file:
            names = set()
            for group in self._topology():
                if group.children_len() and group.parent is not None:
                    names.update(group.nodeset)
        else:
            names = set()
            for pattern in self.settings.gateways:
                names.update(match([m.name for m in known], pattern))
        return [m for m in known if m.name in names]

    def _targets_in_topology(self) -> set[str]:
        return {name for group in self._topology() if not group.children_len() for name in group.nodeset}

    def routed(self, machines: list[Machine]) -> set[str]:
        if self.settings.topology_file:
            targets = self._targets_in_topology()
            return {m.name for m in machines if m.name in targets and not _proxied(m)}
        if not self.settings.gateways:
            return set()
        gateways = {g.name for g in self.gateways()}
        return {m.name for m in machines if m.name not in gateways and not _proxied(m)}

    def cannot_reach(self, machines: list[Machine]) -> dict[str, str]:
        if not (self.settings.gateways or self.settings.topology_file):
            return {m.name: "there are no gateways: set c.EcShell.gateways (or c.EcShell.topology_file)"
                    for m in machines}
        gateways = {g.name for g in self.gateways()}
        found = {}
        for machine in machines:
            if machine.name in gateways:
                found[machine.name] = "it is a gateway itself"
            elif _proxied(machine):
                found[machine.name] = "it is reached through ProxyJump or ProxyCommand, which the gateways do not follow"
        return found

    def refuses(self, command: Shell) -> Optional[str]:
        return command_line_only("the tree", command)

    # -- the broadcast ----------------------------------------------------------

    def broadcast(self, machines: list[Machine], command: Shell, run: FanoutRun) -> None:
        gateways = self.gateways()
        if not gateways:
            for machine in machines:
                run.finish(machine, error=ErrorKind.UNREACHABLE,
                           message=f"no gateway among the machines: c.EcShell.gateways is {self.settings.gateways}")
            return
        reachable = []
        for machine in machines:
            try:
                machine.endpoint
            except ConnectError as exc:  # the name does not resolve
                run.finish(machine, error=exc.kind, message=str(exc))
                continue
            reachable.append(machine)
        failed = self.installer.ready(gateways, reachable)
        ready = [g for g in gateways if g.name not in failed]
        if not ready:
            why = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
            for machine in reachable:
                run.finish(machine, error=ErrorKind.UNREACHABLE, message=f"no gateway could be readied ({why})")
            return
        with tempfile.TemporaryDirectory(prefix="tree-", dir=self._work_dir()) as work:
            _TreeRun(self.settings, work, ready, reachable, command, run,
                     self._topology() if self.settings.topology_file else None).go()

    def _work_dir(self) -> str:
        path = os.path.join(self.settings.home, "tree")
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path


class _TreeRun:
    """One broadcast's ClusterShell Task, in the fan-out thread."""

    def __init__(self, settings: Any, work: str, gateways: list[Machine], targets: list[Machine],
                 command: Shell, run: FanoutRun, topology: Any):
        self.settings = settings
        self.work = work
        self.gateways = gateways
        self.targets = {m.name: m for m in targets}
        self.command = command
        self.run = run
        self.token = run_token() if settings.kill_on_cancel else None
        self.topology = topology if topology is not None else self._gateway_topology()
        #: Each target's lines so far, (from stderr?, line): given to its Result when it ends.
        self.lines: dict[str, list[tuple[bool, bytes]]] = {}
        self.stopped: Optional[ErrorKind] = None

    def said(self, name: str) -> str:
        """What the target's output carried (with ssh's own messages, when ssh failed)."""
        return b"\n".join(line for _, line in self.lines.get(name, [])).decode(errors="replace")

    def flush(self, machine: Machine) -> None:
        """The target's output so far, as the direct path would have given it (lines with their newlines)."""
        lines = self.lines.pop(machine.name, [])
        if lines:
            self.run.output(machine, b"".join(line + b"\n" for _, line in lines))

    def _gateway_topology(self) -> Any:
        from ClusterShell.Topology import TopologyParser

        path = os.path.join(self.work, "topology.conf")
        with open(path, "w") as f:
            f.write(f"[routes]\n{ROOT}: {fold([g.name for g in self.gateways])}\n")
            for gateway, share in shares(list(self.targets.values()), self.gateways).items():
                f.write(f"{gateway}: {fold([m.name for m in share])}\n")
        return TopologyParser(path).tree(ROOT)

    def _controller_ssh_config(self) -> str:
        """The controller's ssh_config for reaching the gateways (their pinned keys checked)."""
        directory = self.work
        identities = identity_names(self.gateways)
        for path, name in identities.items():
            os.symlink(os.path.abspath(os.path.expanduser(path)), os.path.join(directory, name))
        with open(os.path.join(directory, "known_hosts"), "w") as f:
            f.write(known_hosts(self.gateways))
        path = os.path.join(directory, "ssh_config")
        with open(path, "w") as f:
            for gateway in self.gateways:
                f.write(host_block(gateway.name, gateway, directory, identities, host_key_policy(self.settings)))
        return path

    def go(self) -> None:
        from ClusterShell.NodeSet import NodeSet
        from ClusterShell.Task import task_self, task_terminate

        task = task_self()
        try:
            task.topology = self.topology
            task.set_default("distant_worker", _controller_worker(self._controller_ssh_config(),
                                                                  self.settings.connect_timeout))
            # What the gateways' ssh uses for the targets: the ssh_config in their $G (their cwd).
            task.set_info("ssh_options", "-F ssh_config")
            task.set_info("connect_timeout", self.settings.connect_timeout)
            task.set_info("fanout", self.settings.fanout)
            task.timer(0.2, handler=_Watch(self, task), interval=0.2, autoclose=True)
            wire = _with_token(self.command.command, self.token)
            worker = task.shell(wire, nodes=NodeSet.fromlist(list(self.targets)), handler=_handler_class()(self),
                                timeout=self.run.timeout, stderr=False, stdin=False, tree=True)
            worker.invoke_gateway = invoke_command(self.settings)
            task.resume()
            self._finish_unanswered(worker)
        finally:
            task_terminate()

    def _finish_unanswered(self, worker: Any) -> None:
        timed_out = [str(n) for n in worker.iter_keys_timeout()] if self.stopped is None else []
        for name in timed_out:
            if name in self.targets and not self.run.finished(self.targets[name]):
                self.flush(self.targets[name])
                self.run.finish(self.targets[name], error=ErrorKind.TIMEOUT,
                                message=f"no exit after {self.run.timeout:g}s")
        leftover = [m for m in self.targets.values() if not self.run.finished(m)]
        note = ""
        killable = timed_out + [m.name for m in leftover] if self.stopped else timed_out
        if killable and self.token:
            note = self._kill(killable)
        for name in timed_out:
            result = self.run.results.get(name)
            if result is not None and note:
                result.message = f"{result.message}; {note}"
        for machine in leftover:
            said = self.said(machine.name).strip()
            self.flush(machine)
            if self.stopped is not None:
                message = "interrupted" if self.stopped is ErrorKind.INTERRUPTED else "no result yet"
                self.run.finish(machine, error=self.stopped, message=f"{message}; {note}" if note else message)
            else:
                self.run.finish(machine, error=ErrorKind.UNREACHABLE,
                                message=f"no answer through the gateways{': ' + said if said else ''}")

    def _kill(self, names: list[str]) -> str:
        """The kill script through the tree on ``names``, in a task of its own; a note for their results."""
        from ClusterShell.NodeSet import NodeSet
        from ClusterShell.Task import task_self, task_terminate

        assert self.token is not None
        task_terminate()
        task = task_self()
        task.topology = self.topology
        task.set_default("distant_worker", _controller_worker(os.path.join(self.work, "ssh_config"),
                                                              self.settings.connect_timeout))
        task.set_info("ssh_options", "-F ssh_config")
        task.set_info("connect_timeout", self.settings.connect_timeout)
        worker = task.shell(kill_script(self.token), nodes=NodeSet.fromlist(names), timeout=KILL_TIMEOUT,
                            stdin=False, tree=True)
        worker.invoke_gateway = invoke_command(self.settings)
        task.resume()
        codes = [rc for rc, _ in worker.iter_retcodes()]
        if codes and all(rc == 0 for rc in codes):
            return "killed on the machine"
        return "the kill through the gateways did not reach every machine"


def _controller_worker(config: str, connect_timeout: float) -> Any:
    """ClusterShell's ssh worker for the controller's own hops (to the gateways), through ``config``.

    The task's ``ssh_options`` are sent to the gateways for their hops to the
    targets; the controller's hops use this ssh_config instead.
    """
    from ClusterShell.Worker.Ssh import SshClient, WorkerSsh

    class ControllerSshClient(SshClient):
        def _build_cmd(self) -> tuple[list[str], None]:
            return (["ssh", "-F", config, "-oForwardAgent=no", "-oForwardX11=no", "-oBatchMode=yes",
                     f"-oConnectTimeout={max(1, int(connect_timeout))}", str(self.key), str(self.command)], None)

    class ControllerSsh(WorkerSsh):
        SHELL_CLASS = ControllerSshClient

    return ControllerSsh


class _Watch:
    """A ClusterShell timer handler: aborts the task once the broadcast is stopped."""

    def __init__(self, tree: _TreeRun, task: Any):
        self.tree = tree
        self.task = task

    def ev_timer(self, timer: Any) -> None:
        if self.tree.run.stopped() and self.tree.stopped is None:
            self.tree.stopped = ErrorKind.INTERRUPTED
            self.task.abort()


_HANDLER: Optional[type] = None


def _handler_class() -> type:
    """The EventHandler that turns what ClusterShell reports per target into Results (made on first use)."""
    global _HANDLER
    if _HANDLER is None:
        from ClusterShell.Event import EventHandler

        class TargetEvents(EventHandler):
            def __init__(self, tree: _TreeRun):
                super().__init__()
                self.tree = tree

            def ev_read(self, worker: Any, node: Any, sname: str, msg: bytes) -> None:
                name = str(node)
                if name in self.tree.targets:
                    self.tree.lines.setdefault(name, []).append((sname == worker.SNAME_STDERR, bytes(msg)))

            def ev_hup(self, worker: Any, node: Any, rc: int) -> None:
                machine = self.tree.targets.get(str(node))
                if machine is None or self.tree.stopped is not None:
                    return  # after an abort, ClusterShell closes what still ran with an exit code of its own
                if rc == 255:
                    said = self.tree.said(machine.name)
                    kind = ssh_failure(said)
                    if kind is not None:  # ssh's own failure: its message is the result's, not output
                        self.tree.run.finish(machine, error=kind, message=said.strip().splitlines()[-1])
                        return
                self.tree.flush(machine)
                self.tree.run.finish(machine, exit_code=rc)

        _HANDLER = TargetEvents
    return _HANDLER


def _with_token(command: str, token: str | None) -> str:
    """The command a target runs through the tree: with a token, ECSHELL_RUN exported on a line before it.

    The gateways' ssh has no way to pass the token in the environment, so here (unlike the direct
    paths) the shell sees it as line 1 (README, Transports).
    """
    return f"export {RUN_VARIABLE}={token}\n{command}" if token else command
