"""The free list: machines configured ahead of time, handed out with only the last step left.

>>> from ecshell import Shell, once
>>> pool = cluster.free_list("build", size=3, recipe=[
...     once("toolchain")("apt-get install -y build-essential"),
...     once("warm-cache")("make -C /srv/src deps"),
... ], last=lambda user: Shell(["useradd", "-m", user]))          # doctest: +SKIP
>>> pool.fill()                      # launch and configure 3 machines  # doctest: +SKIP
>>> m = pool.take(user="alice")      # a warm one: runs only the last step; refills in the background  # doctest: +SKIP

Everything the free list knows is on the machines, as markers:
``pool.<name>`` (a member, set right after launch), ``free.<name>`` (the
recipe is done; ready to hand out), ``taken.<name>`` (handed out; its note
says to whom) and ``broken.<name>`` (the recipe failed there; the note says
why, and the machine is left for the operator to look at). A new shell
rebuilds the list by reading the markers (:meth:`FreeList.scan`); members
that a dead shell left half configured are configured again by the next
``fill``, where ``once`` steps skip the work already done. Handing out
claims ``taken.<name>`` atomically, so two shells never hand out the same
machine.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from .adapters import apply, as_command
from .errors import ArgumentError, EcShellError
from .machineset import MachineSet
from .state import Op, StateCommand, StateError, check_name, markers

if TYPE_CHECKING:
    from .cluster import Cluster
    from .commands import Command
    from .machine import Machine
    from .state import Marker

log = logging.getLogger("ecshell")


class FreeListEmpty(EcShellError):
    """``take()`` found no warm machine in time."""


class FreeList:
    """Keep ``size`` machines configured by ``recipe``; ``take()`` one, running only ``last``.

    ``recipe`` is a list of Commands (or shell strings), best made of
    ``once(...)`` steps so that a half-configured machine resumes where it
    stopped. ``last`` is a Command, a shell string, or ``last(user) ->
    Command`` for the per-user step. ``launch`` holds extra arguments for
    ``cluster.launch`` (fabric, type, image, ...).
    """

    def __init__(self, cluster: Cluster, name: str, size: int = 2, recipe: Iterable[Command | str] = (),
                 last: Command | str | Callable[[str | None], Command | str] | None = None,
                 launch: dict[str, Any] | None = None, timeout: float = 300.0) -> None:
        check_name(name)
        if not isinstance(size, int) or size < 0:
            raise ArgumentError(f"size is how many machines to keep warm (0 or more), not {size!r}")
        self.cluster, self.name, self.size = cluster, name, size
        self.recipe = [as_command(step) for step in recipe]
        #: Names the recipe in each member's pool marker, so a shell with another recipe
        #: never finishes a machine that was started with this one.
        self.fingerprint = hashlib.sha256("\n".join(map(repr, self.recipe)).encode()).hexdigest()[:12]
        self.last = last
        self.launch_options = dict(launch or {})
        self.timeout = timeout
        self.member, self.free = f"pool.{name}", f"free.{name}"
        self.taken, self.broken = f"taken.{name}", f"broken.{name}"
        self.problems: dict[str, str] = {}  # machine name -> message, from the last fill
        self.errors: list[Exception] = []  # exceptions from background refills
        self._changed = threading.Condition()
        self._fill_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._configuring: set[str] = set()
        self._seen: dict[str, dict[str, Marker] | None] = {}

    # -- what the machines say -------------------------------------------------

    def scan(self) -> dict[str, MachineSet]:
        """Read the pool's markers from every running machine: ``{"free": MachineSet, ...}``.

        Keys: ``free`` (warm, ready to hand out), ``configuring`` (members
        without ``free``: being configured, or left half done by a shell that
        died), ``taken`` and ``broken``.
        """
        live = self.cluster.machines.reachable()
        groups: dict[str, list[Machine]] = {"free": [], "configuring": [], "taken": [], "broken": []}
        if not live:
            return {k: MachineSet(v) for k, v in groups.items()}
        seen = self._seen = markers(live)
        for machine in live:
            have = seen.get(machine.name)
            if not have or self.member not in have:
                continue
            if self.taken in have:
                groups["taken"].append(machine)
            elif self.broken in have:
                groups["broken"].append(machine)
            elif self.free in have:
                groups["free"].append(machine)
            else:
                groups["configuring"].append(machine)
        return {k: MachineSet(v) for k, v in groups.items()}

    def status(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.scan().items()}

    @staticmethod
    def discover(cluster: Cluster) -> dict[str, MachineSet]:
        """``{free list name: MachineSet of members}`` found in the markers of the running machines.

        What a new shell calls to learn which free lists exist before it
        attaches to one with ``cluster.free_list(name, recipe=...)``.
        """
        live = cluster.machines.reachable()
        found: dict[str, list[Machine]] = {}
        for name, have in (markers(live) if live else {}).items():
            for marker in have or ():
                if marker.startswith("pool."):
                    found.setdefault(marker[len("pool."):], []).append(cluster.machine(name))
        return {name: MachineSet(members, sort=True) for name, members in sorted(found.items())}

    # -- filling ---------------------------------------------------------------

    def fill(self) -> MachineSet:
        """Bring the warm machines up to ``size`` now: resume half-configured members, launch the rest.

        Returns the warm machines. Machines whose recipe fails are marked
        ``broken.<name>`` and listed in ``problems``; they are not terminated.
        """
        with self._fill_lock:
            groups = self.scan()
            # members left half done (by this shell's failed try or a shell that died) come first
            resume = MachineSet(m for m in groups["configuring"]
                                if m.name not in self._configuring and self._same_recipe(m))
            missing = self.size - len(groups["free"]) - len(resume)
            fresh = MachineSet()
            if missing > 0 and not self._closed:
                fresh = self.cluster.launch(missing, name=self.name, timeout=min(self.timeout, 120.0),
                                            **self.launch_options)
                joined = fresh.mark(self.member, note=f"free list {self.name}, recipe {self.fingerprint}")
                for result in joined.failed.results():
                    self.problems[result.name] = f"could not mark it a member: {result.status} {result.message}"
                fresh = joined.ok.machines
            self._configure(resume | fresh)
            return self.scan()["free"]

    def _same_recipe(self, machine: Machine) -> bool:
        note = ((self._seen.get(machine.name) or {}).get(self.member) or None)
        found = re.search(r"recipe (\w+)", getattr(note, "note", "") or "")
        if found is None or found.group(1) == self.fingerprint:
            return True
        self.problems[machine.name] = (
            f"left half configured by a shell with another recipe ({found.group(1)}, this one is "
            f"{self.fingerprint}); finish it with that recipe, or terminate it")
        return False

    def _configure(self, machines: MachineSet) -> None:
        if not machines:
            return
        self._configuring.update(machines.names)
        try:
            outcome = apply(machines, self.recipe)
            for name, result in outcome.failed.items():
                message = f"{result.command}: {result.status} {result.message}".strip()
                self.problems[name] = message
                if result.detail.get("held_by") is not None:
                    # a step's lock is held (maybe by a shell that died): not broken, waiting for the operator
                    log.warning("free list %s: %s is stuck: %s", self.name, name, message)
                    continue
                self.cluster.machine(name).mark(self.broken, note=message)
                log.warning("free list %s: %s failed its recipe and is marked %s: %s",
                            self.name, name, self.broken, message)
            if outcome.ok:
                done = outcome.ok.mark(self.free, note=f"free list {self.name}")
                for result in done.ok.results():
                    self.problems.pop(result.name, None)
        finally:
            self._configuring.difference_update(machines.names)
            with self._changed:
                self._changed.notify_all()

    def refill(self) -> threading.Thread | None:
        """Fill in a background thread (unless one is filling already); returns at once."""
        with self._changed:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return self._thread
            self._thread = threading.Thread(target=self._background, name=f"ecshell-freelist-{self.name}",
                                            daemon=True)
            self._thread.start()
            return self._thread

    def _background(self) -> None:
        try:
            self.fill()
        except Exception as exc:  # a background thread has nobody to raise to: keep it for the operator
            log.warning("free list %s: refill failed: %s", self.name, exc)
            self.errors.append(exc)
        finally:
            with self._changed:
                self._changed.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a running background refill to finish; True if none is running now."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    # -- handing out -------------------------------------------------------------

    def take(self, user: str | None = None, timeout: float | None = None, refill: bool = True) -> Machine:
        """A warm machine, claimed for ``user`` on the machine itself, after running only ``last``.

        Waits for a refill up to ``timeout`` seconds (default: the free
        list's ``timeout``) when none is warm. Raises StateError (with the
        result) if the last step fails; the machine stays marked taken.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            machine = self._claim(user)
            if machine is not None:
                break
            if refill:
                self.refill()
            left = deadline - time.monotonic()
            if left <= 0 or (not refill and self._thread is None):
                raise FreeListEmpty(f"free list {self.name!r} has no warm machine"
                                    f"{' after waiting for a refill' if refill else ''}; status {self.status()}"
                                    f"{'; problems: ' + str(self.problems) if self.problems else ''}"
                                    f"{'; last refill failed: ' + str(self.errors[-1]) if self.errors else ''}")
            with self._changed:
                self._changed.wait(min(left, 1.0))
        if refill:
            self.refill()
        step = self.last(user) if callable(self.last) and not hasattr(self.last, "execute") else self.last
        if step is not None:
            # a callable with an execute method is a Command, not a per-user factory
            result = machine.execute(as_command(cast("Command | str", step)))
            machine.facts["handed_out"] = result
            if not result.ok:
                raise StateError(f"{machine.name} was taken from free list {self.name!r}, but its last step "
                                 f"failed: {result.status} {result.message}".rstrip(), result)
        return machine

    def _claim(self, user: str | None) -> Machine | None:
        warm = self.scan()["free"]
        note = f"handed out to {user}" if user else "handed out"
        for machine in warm:
            result = machine.execute(StateCommand([Op("claim", self.taken, note=note),
                                                   Op("unmark", self.free, only_if_ok=True)],
                                                  label=f"take from {self.name}"))
            if result.ok and result.detail["ops"][0] == "ok":
                return machine
        return None

    def close(self) -> None:
        """Stop refilling (waits for a refill in progress); the machines stay as they are."""
        with self._changed:
            self._closed = True
        self.wait()

    def __repr__(self) -> str:
        return f"<FreeList {self.name} size={self.size}>"
