"""Cluster: the fabrics attached, the machines they supplied, and broadcasts over them.

>>> from ecshell import Cluster, LocalFabric
>>> cluster = Cluster(LocalFabric())
>>> web = cluster.launch(3, name="web")               # waits until really ready  # doctest: +SKIP
>>> rs = cluster.run("uptime")                        # doctest: +SKIP
>>> cluster.terminate(web); cluster.close()           # doctest: +SKIP

The cluster keeps nothing it cannot rebuild: machines come from the fabrics'
``discover()``, so a new Cluster over the same fabrics finds the machines an
earlier one launched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

from . import arguments
from .config import EcShell
from .engine import Engine
from .fanout.routes import TREE
from .fanout.tree import TreeFanout
from .errors import ArgumentError, SelectionError
from .hostset import check_prefix, fold
from .machine import Machine
from .machineset import MachineSet
from .states import MachineState

if TYPE_CHECKING:
    from traitlets.config import Config, Configurable

    from .cloudlets.cloudlet import Cloudlet
    from .cloudlets.manager import Cloudlets
    from .commands import Command, CommandLine
    from .fabrics.base import Fabric, Prototype
    from .freelist import FreeList
    from .results import ResultSet

    #: What a call takes as its target: a MachineSet (or machines), a Machine, a name pattern
    #: like ``web-[0-3]``, or None / "all" for every machine.
    Target: TypeAlias = str | Machine | Iterable[Machine] | None

log = logging.getLogger("ecshell")



def _default_fabric(settings: EcShell) -> Fabric:
    kind = settings.default_fabric
    if kind == "local":
        from .fabrics.local import LocalFabric
        return LocalFabric(parent=settings)
    if kind == "static":
        from .fabrics.static import StaticFabric
        return StaticFabric(parent=settings)
    if kind == "ec2":
        from .fabrics.ec2.fabric import Ec2Fabric
        return Ec2Fabric(parent=settings)
    raise ArgumentError(f"unknown default_fabric {kind!r}: use 'local', 'static' or 'ec2'")


class Cluster:
    """Fabrics and the machines they supplied.

    ``settings`` is the :class:`~ecshell.config.EcShell` configuration,
    ``fabrics`` the attached fabrics by name, ``history`` the ResultSets of
    its ``run`` calls, ``free_lists`` the free lists made by ``free_list``.
    """

    def __init__(self, *fabrics: Fabric, config: Config | None = None, parent: Configurable | None = None,
                 **settings: Any) -> None:
        self.settings = EcShell(config=config, parent=parent, **settings)
        self.engine = Engine(self.settings)
        self.engine.fanouts[TREE] = TreeFanout(self.settings, lambda: self._machines.values())
        self.fabrics: dict[str, Fabric] = {}
        self.history: list[ResultSet] = []
        self._machines: dict[str, Machine] = {}
        self.free_lists: dict[str, FreeList] = {}
        self._cloudlets: Cloudlets | None = None
        for fabric in fabrics or (_default_fabric(self.settings),):
            self.attach(fabric)

    # -- fabrics and discovery ----------------------------------------------

    def attach(self, fabric: Fabric) -> Fabric:
        """Add a fabric and take in the machines it already has."""
        if fabric.name in self.fabrics and self.fabrics[fabric.name] is not fabric:
            raise ArgumentError(f"a fabric named {fabric.name!r} is attached already; "
                                f"give the new one another name, e.g. {type(fabric).__name__}(name='second')")
        self.fabrics[fabric.name] = fabric
        self._take(fabric, fabric.discover())
        return fabric

    def _take(self, fabric: Fabric, prototypes: Iterable[Prototype]) -> list[Machine]:
        taken = []
        for prototype in prototypes:
            machine = self._machines.get(prototype.name)
            if machine is not None and machine.fabric is fabric and machine.id == prototype.id:
                machine.update(prototype)
            else:
                if machine is not None:
                    log.warning("machine name %s is used by %s and %s; keeping the first",
                                prototype.name, machine.fabric.name, fabric.name)
                    continue
                machine = Machine(prototype, fabric, self.engine)
                self._machines[prototype.name] = machine
            taken.append(machine)
        return taken

    def refresh(self) -> MachineSet:
        """Ask every fabric what it has now: new machines appear, gone ones leave."""
        for fabric in self.fabrics.values():
            prototypes = fabric.discover()
            ids = {p.id for p in prototypes}
            for name, machine in list(self._machines.items()):
                if machine.fabric is fabric and machine.id not in ids:
                    machine.close()
                    del self._machines[name]
            self._take(fabric, prototypes)
        return self.machines

    def fabric(self, name: str | None = None) -> Fabric:
        """The attached fabric named ``name`` (None: the first attached)."""
        if name is None:
            return next(iter(self.fabrics.values()))
        try:
            return self.fabrics[name]
        except KeyError:
            raise SelectionError(f"no fabric named {name!r}; attached: {', '.join(self.fabrics)}") from None

    # -- selection ----------------------------------------------------------

    @property
    def machines(self) -> MachineSet:
        """Every known machine, in name order."""
        return MachineSet(self._machines.values(), sort=True)

    def machine(self, name: str) -> Machine:
        try:
            return self._machines[name]
        except KeyError:
            raise SelectionError(f"no machine named {name!r}; machines are: "
                                 f"{fold(self._machines) or '(none: launch some with cluster.launch(3))'}") from None

    def __getitem__(self, pattern: str) -> MachineSet:
        if isinstance(pattern, str) and "cloudlet:" in pattern:
            # cloudlets are read from their hosts' markers, and selected among the machines
            return MachineSet([*self.machines, *self.cloudlets.scan().values()])[pattern]
        return self.machines[pattern]

    def _ipython_key_completions_(self) -> list[str]:
        """Machine names and their ``prefix-*`` globs, for tab completion of ``cluster["..."]`` in IPython."""
        prefixes = sorted({name.rsplit("-", 1)[0] for name in self._machines if "-" in name})
        return [f"{prefix}-*" for prefix in prefixes] + list(self._machines)

    def __iter__(self) -> Iterator[Machine]:
        return iter(self.machines)

    def __len__(self) -> int:
        return len(self._machines)

    def select(self, **tags: Any) -> MachineSet:
        if "marker" in tags:  # markers are read from the machines: only running ones can answer
            return self.machines.reachable().select(**tags)
        return self.machines.select(**tags)

    def free_list(self, name: str, size: int = 2, recipe: Iterable[Command | str] = (),
                  last: Command | str | Callable[[str | None], Command | str] | None = None,
                  **options: Any) -> FreeList:
        """The free list ``name`` (made on first call): machines kept configured ahead by ``recipe``."""
        from .freelist import FreeList

        if name not in self.free_lists:
            self.free_lists[name] = FreeList(self, name, size=size, recipe=recipe, last=last, **options)
        return self.free_lists[name]

    # -- cloudlets (ecshell.cloudlets) ----------------------------------------

    @property
    def cloudlets(self) -> Cloudlets:
        """Where cloudlets go and where their state is kept: ``cluster.cloudlets.configure(hosts=..., store=...)``."""
        if self._cloudlets is None:
            from .cloudlets.manager import Cloudlets

            self._cloudlets = Cloudlets(self)
        return self._cloudlets

    def cloudlet(self, user: str) -> Cloudlet:
        """``user``'s cloudlet: the running one, else placed on a host now with the user's saved state."""
        return self.cloudlets.place(user)

    def _target(self, target: Target) -> MachineSet:
        if target is None or target == "all":
            return self.machines
        if isinstance(target, str):
            return self[target]
        if isinstance(target, Machine):
            return MachineSet([target])
        return MachineSet(target)

    def _live(self, target: Target) -> MachineSet:
        chosen = self._target(target)
        live = chosen.reachable()
        if not live:
            states = ", ".join(f"{m.name}: {m.state}" for m in chosen) or "no machines at all"
            raise SelectionError(f"no running machine to run on ({states}); "
                                 "launch some with cluster.launch(3), or cluster.ready() to check again")
        return live

    # -- lifecycle ----------------------------------------------------------

    def launch(self, count: int = 1, name: str = "node", fabric: str | None = None, wait: bool = True,
               timeout: float = 120.0, **options: Any) -> MachineSet:
        """Launch ``count`` machines named ``name-<i>``; by default wait until really ready.

        At most the fabric's ``max_launch`` in one call (e.g. ``c.LocalFabric.max_launch``);
        names are checked by :func:`ecshell.hostset.check_prefix` before anything starts.
        """
        chosen = self.fabric(fabric)
        chosen.check_launch_count(count)
        check_prefix(name, count)
        timeout = arguments.required_seconds("timeout", timeout)
        prototypes = chosen.launch(count, name=name, **options)
        machines = MachineSet(self._take(chosen, prototypes), sort=True)
        if wait:
            self.ready(machines, timeout=timeout)
        return machines

    def ready(self, target: Target = None, timeout: float = 120.0) -> MachineSet:
        """The two-stage check: the fabric says running, then ``true`` over SSH succeeds.

        Polls with backoff until ``timeout``; machines that never get there
        are marked ``failed-init``. Returns the machines that are ready.
        """
        from .commands import Noop

        timeout = arguments.required_seconds("timeout", timeout)
        chosen = MachineSet(m for m in self._target(target) if m.state is not MachineState.TERMINATED)
        deadline = time.monotonic() + timeout
        pending = list(chosen)
        backoff = 0.05
        while pending:
            self._refresh_states(pending)
            running = MachineSet(m for m in pending if m.state.reachable or m.state is MachineState.FAILED_INIT)
            if running:
                left = max(0.5, deadline - time.monotonic())
                results = running.execute(Noop(timeout=min(left, self.settings.connect_timeout)))
                for result in results.results():
                    if result.ok:
                        result.machine.state = MachineState.READY
            pending = [m for m in pending if m.state is not MachineState.READY]
            if not pending or time.monotonic() + backoff > deadline:
                break
            self._pause(pending, backoff)
            backoff = min(backoff * 2, 5.0)
        for machine in pending:
            machine.state = MachineState.FAILED_INIT
            log.warning("%s did not become ready within %gs (failed-init): terminate or replace it",
                        machine.name, timeout)
        return chosen.in_state(MachineState.READY)

    @staticmethod
    def _pause(pending: list[Machine], seconds: float) -> None:
        """Wait between readiness polls; a fabric with ``wait_for_news`` (EC2's phone-home) may end it early."""
        for fabric in {id(m.fabric): m.fabric for m in pending}.values():
            wait = getattr(fabric, "wait_for_news", None)
            if wait is not None:
                wait([m.id for m in pending if m.fabric is fabric], seconds)
                return
        time.sleep(seconds)

    def _refresh_states(self, machines: Iterable[Machine]) -> None:
        by_fabric: dict[Fabric, list[Machine]] = {}
        for machine in machines:
            by_fabric.setdefault(machine.fabric, []).append(machine)
        for fabric, members in by_fabric.items():
            fresh = getattr(fabric, "prototypes", None)
            if fresh is not None:
                # A cloud machine gets its address (and a console-checked host key)
                # only once it runs: take the whole prototype, not just the state.
                found = {p.id: p for p in fresh([m.id for m in members])}
                for machine in members:
                    if machine.id in found:
                        machine.update(found[machine.id])
                    else:
                        machine.state = MachineState.TERMINATED
                continue
            states = fabric.states([m.id for m in members])
            for machine in members:
                machine.state = machine.state.after(states.get(machine.id, MachineState.TERMINATED))

    def _by_fabric(self, target: Target) -> tuple[MachineSet, dict[Fabric, list[Machine]]]:
        chosen = self._target(target)
        if not chosen:
            raise SelectionError("nothing selected")
        groups: dict[Fabric, list[Machine]] = {}
        for machine in chosen:
            groups.setdefault(machine.fabric, []).append(machine)
        return chosen, groups

    def _close_and_tell_fabrics(self, target: Target, action: str,
                                then: Callable[[list[Machine]], None] | None = None) -> MachineSet:
        """Per fabric: close the chosen machines' connections, ``fabric.<action>(ids)``, then ``then(members)``."""
        chosen, groups = self._by_fabric(target)
        for fabric, members in groups.items():
            for machine in members:
                machine.close()
            getattr(fabric, action)([m.id for m in members])
            if then is not None:
                then(members)
        return chosen

    def terminate(self, target: Target) -> MachineSet:
        """Terminate machines (a MachineSet, a Machine, a pattern or 'all'); they are gone after."""
        return self._close_and_tell_fabrics(target, "terminate", then=self._forget)

    def _forget(self, machines: list[Machine]) -> None:
        for machine in machines:
            machine.state = MachineState.TERMINATED
            self._machines.pop(machine.name, None)

    def stop(self, target: Target) -> MachineSet:
        chosen = self._close_and_tell_fabrics(target, "stop")
        self._refresh_states(chosen)
        return chosen

    def start(self, target: Target, wait: bool = True, timeout: float = 120.0) -> MachineSet:
        chosen, groups = self._by_fabric(target)
        for fabric, members in groups.items():
            self._take(fabric, fabric.start([m.id for m in members]))
        if wait:
            self.ready(chosen, timeout=timeout)
        return chosen

    # -- broadcasts -----------------------------------------------------------

    def run(self, command: CommandLine, target: Target = None, **options: Any) -> ResultSet:
        """Run a shell command on every running machine (or ``target``); a ResultSet."""
        results = self._live(target).run(command, **options)
        self.history.append(results)
        return results

    def put(self, local: str, remote: str, target: Target = None, mode: int | None = None) -> ResultSet:
        return self._live(target).put(local, remote, mode=mode)

    def get(self, remote: str, local: str, target: Target = None) -> ResultSet:
        return self._live(target).get(remote, local)

    # -- the login shell (ecshell.loginshell) ---------------------------------

    def install_login_shell(self, target: Target, user: str, **options: Any) -> ResultSet:
        """Make ecshell-login ``user``'s login shell on ``target``, verified by fresh logins; a ResultSet."""
        from .loginshell import install_login_shell

        return install_login_shell(self._live(target), user, **options)

    def uninstall_login_shell(self, target: Target, user: str, **options: Any) -> ResultSet:
        """Give ``user`` back the login shell they had before ecshell-login; a ResultSet."""
        from .loginshell import uninstall_login_shell

        return uninstall_login_shell(self._live(target), user, **options)

    def close(self) -> None:
        """Close every pooled connection (machines keep running)."""
        for pool in self.free_lists.values():
            pool.close()
        self.engine.close()
        for fabric in self.fabrics.values():
            fabric.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        fabrics = ", ".join(self.fabrics)
        return f"<Cluster fabrics=[{fabrics}] machines={fold(self._machines) or '(none)'} ({len(self)})>"
