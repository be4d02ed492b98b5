"""Cloudlets: placing a user's sandbox on a host, finding it again, saving, moving and releasing it.

>>> from ecshell.cloudlets import DirectoryStore, runtime_recipe
>>> hosts = cluster.free_list("cloudlets", size=2, recipe=runtime_recipe())     # doctest: +SKIP
>>> hosts.fill()                                                                 # doctest: +SKIP
>>> cluster.cloudlets.configure(hosts=hosts, store=DirectoryStore(cluster.machine("store-0")))  # doctest: +SKIP
>>> alice = cluster.cloudlet("alice")     # placed on a warm host, her saved state restored   # doctest: +SKIP

What runs where is kept on the machines: a host carries the marker
``cloudlet.<user>`` for each cloudlet it holds (set when placed, with the
placing shell and time), and the sandbox's pid files in its state
directory; a new shell finds every cloudlet by reading the markers. The
store (:mod:`ecshell.cloudlets.stores`) keeps each user's last saved state
layer and where the cloudlet was last placed, and holds the placement lock
``cloudlet.<user>``: a shell looks for the cloudlet, and only if there is
none takes the lock, looks again, and places it, so two shells asking for
the same user at once end with one cloudlet.

A host that is gone (terminated, or not answering) takes the cloudlet's
unsaved changes with it: asking for the cloudlet then places it elsewhere
from the last save, and its ``notice`` (also logged) says what was lost.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..commands import Get, Put
from ..errors import ArgumentError, EcShellError
from ..freelist import FreeList
from ..machineset import MachineSet
from ..state import Op, StateCommand, StateError, age, markers
from .cloudlet import Cloudlet
from .runtime import USER_NAME, RuntimeOp, check_user, reported_path
from .stores import Record, Saved, Store, scratch_directory

if TYPE_CHECKING:
    from ..cluster import Cluster
    from ..machine import Machine
    from ..results import Result
    from ..state import Marker

log = logging.getLogger("ecshell")

#: The marker a host carries for each cloudlet it holds: ``cloudlet.<user>``.
MARKER_PREFIX = "cloudlet."


class CloudletError(EcShellError):
    """A cloudlet could not be placed, saved, moved or released; ``result`` says why when a machine did."""

    def __init__(self, message: str, result: Result | None = None) -> None:
        super().__init__(message)
        self.result = result


def _when(at: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) if at else "an unknown time"


class Cloudlets:
    """``cluster.cloudlets``: where cloudlets go (``hosts``, ``slots`` each) and where state is kept (``store``).

    A free list given as ``hosts`` is the cloudlets' own: its warm members
    are the hosts, and none is ever ``take()``-n for anything else. ``slots``
    is checked against the markers read before placing, so two shells
    placing different users at the same moment may each use the last slot.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        #: The machines cloudlets are placed on: a FreeList (its warm members) or a MachineSet.
        self.hosts: FreeList | MachineSet | None = None
        self.store: Store | None = None
        #: Most cloudlets on one host.
        self.slots = 8

    def configure(self, hosts: FreeList | Iterable[Machine] | None = None, store: Store | None = None,
                  slots: int | None = None) -> Cloudlets:
        """Set the hosts (a free list, or machines), the store and the slots per host; returns itself."""
        if hosts is not None:
            self.hosts = hosts if isinstance(hosts, FreeList) else MachineSet(hosts)
        if store is not None:
            if not isinstance(store, Store):
                raise ArgumentError(f"store is a cloudlet Store (DirectoryStore, S3Store), not {store!r}")
            self.store = store
        if slots is not None:
            if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
                raise ArgumentError(f"slots is how many cloudlets one host holds (1 or more), not {slots!r}")
            self.slots = slots
        return self

    def _store(self) -> Store:
        if self.store is None:
            raise ArgumentError("cloudlets need a store for their state: cluster.cloudlets.configure("
                                "store=DirectoryStore(cluster.machine('store-0'), '/srv/cloudlets'))")
        return self.store

    # -- what the machines say ---------------------------------------------------

    def _read(self) -> tuple[dict[str, Cloudlet], dict[str, dict[str, Marker] | None]]:
        """``(cloudlets found, markers per running machine)``: one round trip per running machine."""
        live = self.cluster.machines.reachable()
        seen: dict[str, dict[str, Marker] | None] = dict(markers(live)) if live else {}
        found: dict[str, Cloudlet] = {}
        for machine in live:
            for name, marker in sorted((seen.get(machine.name) or {}).items()):
                user = name[len(MARKER_PREFIX):]
                if name.startswith(MARKER_PREFIX) and USER_NAME.fullmatch(user) and user not in found:
                    found[user] = Cloudlet(user, machine, self, started_at=marker.at)
        return found, seen

    def scan(self) -> dict[str, Cloudlet]:
        """``{user: Cloudlet}`` for every cloudlet placed on a running machine, read from their markers."""
        return self._read()[0]

    def find(self, user: str) -> Cloudlet | None:
        """``user``'s cloudlet if one is placed on a running machine; never places one."""
        return self.scan().get(check_user(user))

    def _hosts(self, seen: dict[str, dict[str, Marker] | None]) -> list[Machine]:
        if self.hosts is None:
            raise ArgumentError("no cloudlet hosts: cluster.cloudlets.configure(hosts=cluster.free_list("
                                "'cloudlets', size=2, recipe=runtime_recipe())) (fill it), or hosts=<machines>")
        if isinstance(self.hosts, FreeList):
            pool = self.hosts
            return [m for m in self.cluster.machines.reachable()
                    if (have := seen.get(m.name)) and pool.member in have and pool.free in have
                    and pool.broken not in have]
        return [m for m in self.hosts if m.state.reachable and seen.get(m.name) is not None]

    def _choose(self, seen: dict[str, dict[str, Marker] | None]) -> Machine:
        load = {m.name: sum(1 for k in (seen.get(m.name) or {}) if k.startswith(MARKER_PREFIX))
                for m in self._hosts(seen)}
        candidates = sorted((count, name) for name, count in load.items() if count < self.slots)
        if not candidates:
            if isinstance(self.hosts, FreeList):
                self.hosts.refill()
            raise CloudletError(f"no cloudlet host has a free slot ({len(load)} hosts, {self.slots} slots each); "
                                "add hosts (a bigger free list: cluster.cloudlets.hosts.size += 1, then .fill()) "
                                "or raise cluster.cloudlets.configure(slots=...)")
        return self.cluster.machine(candidates[0][1])

    # -- placing -------------------------------------------------------------------

    def place(self, user: str, on: Machine | None = None) -> Cloudlet:
        """``user``'s cloudlet: the running one, else placed now (on ``on``, or a host with a free slot)."""
        user = check_user(user)
        store = self._store()
        found, _ = self._read()
        running = self._running(found[user]) if user in found else None
        if running is not None:
            return running
        with store.lock(user):
            found, seen = self._read()  # again, now that no other shell can be placing it
            if user in found:
                running = self._running(found[user])
                if running is not None:
                    return running
                # its marker outlived its layer on that host (a stop whose unmark failed): placed afresh
                self._unplace(found[user].machine, user)
                seen[found[user].machine.name] = {k: v for k, v in (seen[found[user].machine.name] or {}).items()
                                                  if k != MARKER_PREFIX + user}
            record = store.read(user)
            notice = self._lost(user, record, seen)
            host = on if on is not None else self._choose(seen)
            return self._start_on(user, host, record, notice=notice)

    def _running(self, cloudlet: Cloudlet) -> Cloudlet | None:
        """The cloudlet, its sandbox started again if it had stopped (the host rebooted, say);
        None if its host has no layer for it."""
        started = self._op(cloudlet.machine, "start", {"name": cloudlet.owner, "hostname": cloudlet.owner,
                                                       "hide": self._hidden(cloudlet.machine), "existing": True},
                           f"starting {cloudlet.owner}'s cloudlet again")
        if started.get("missing"):
            return None
        if not started.get("already"):
            cloudlet.notice = (f"{cloudlet.owner}'s cloudlet on {cloudlet.machine.name} had stopped; started again "
                               "over the state layer there (processes it ran are gone)")
            log.warning("%s", cloudlet.notice)
        return cloudlet

    def _lost(self, user: str, record: Record | None, seen: dict[str, dict[str, Marker] | None]) -> str:
        """What was lost, when the store says the cloudlet was placed on a machine that no longer has it."""
        if record is None or record.placed_on is None:
            return ""
        where = record.placed_on
        try:
            machine: Machine | None = self.cluster.machine(where)
        except EcShellError:
            machine = None
        if machine is None:
            why = "which is gone"
        elif seen.get(where) is None:
            why = "which does not answer"
        else:
            why = "which no longer holds it"
        placed = f"{user}'s cloudlet was on {where} (placed at {_when(record.placed_at)}), {why}"
        if record.saved is None:
            notice = f"{placed}; it was never saved, so it starts empty: everything done in it is lost"
        else:
            notice = (f"{placed}; restored from its last save ({_when(record.saved.at)}, "
                      f"{age(time.time() - record.saved.at)} ago, from {record.saved.machine}): "
                      "changes made after that save are lost")
        log.warning("%s", notice)
        return notice

    def _start_on(self, user: str, host: Machine, record: Record | None, notice: str = "",
                  archive: str | None = None) -> Cloudlet:
        """Claim ``cloudlet.<user>`` on ``host``, restore the saved state there, start the sandbox."""
        claim = host.execute(StateCommand([Op("claim", MARKER_PREFIX + user, note=f"cloudlet of {user}")],
                                          label=f"place cloudlet {user}"))
        if not claim.ok or claim.detail["ops"][0] != "ok":
            raise CloudletError(f"could not place {user}'s cloudlet on {host.name}: "
                                f"{claim.status} {claim.message or 'its marker is there already'}".rstrip(), claim)
        try:
            restore = False
            if archive is not None or (record is not None and record.saved is not None):
                with scratch_directory() as scratch:
                    local = archive or self._store().download(user, scratch)
                    prepared = self._op(host, "prepare", {"name": user}, f"preparing {user}'s cloudlet")
                    where = reported_path(prepared, "restore", user, "restore.tar")
                    self._transfer(host, Put(local, where), f"sending {user}'s state")
                restore = True
            started = self._op(host, "start", {"name": user, "hostname": user, "restore": restore,
                                               "hide": self._hidden(host)}, f"starting {user}'s cloudlet")
        except BaseException:
            self._unplace(host, user)
            raise
        placed = Record(user, record.saved if record else None, placed_on=host.name,
                        placed_at=started.get("started_at"))
        self._store().write(placed)
        at = started.get("started_at")
        return Cloudlet(user, host, self, started_at=at if isinstance(at, (int, float)) else None, notice=notice)

    @staticmethod
    def _hidden(host: Machine) -> list[str]:
        """Paths of the host a sandbox must not see besides its state directory: for machines on this
        computer (LocalFabric), the fabric's directory and the operator's ecshell home (keys)."""
        paths = []
        for name in ("directory", "key_file"):
            value = getattr(host.fabric, name, None)
            if host.fabric.kind == "local" and isinstance(value, str) and value:
                paths.append(os.path.dirname(value) if name == "key_file" else value)
        return paths

    @staticmethod
    def _unplace(host: Machine, user: str) -> Result:
        return host.execute(StateCommand([Op("unmark", MARKER_PREFIX + user)], label=f"unplace cloudlet {user}"))

    def _op(self, host: Machine, op: str, params: dict[str, Any], what: str) -> dict[str, Any]:
        result = host.execute(RuntimeOp(op, params))
        if not result.ok:
            raise CloudletError(f"{what} on {host.name} failed: {result.status} {result.message}".rstrip(), result)
        report: dict[str, Any] = result.detail["report"]
        return report

    def _transfer(self, host: Machine, command: Put | Get, what: str) -> Result:
        result = host.execute(command)
        if not result.ok:
            raise CloudletError(f"{what} ({host.name}) failed: {result.status} {result.message}".rstrip(), result)
        return result

    # -- saving, releasing, moving ---------------------------------------------------

    def save(self, cloudlet: Cloudlet) -> Saved:
        """Write the cloudlet's state layer to the store; the Saved record."""
        with self._store().lock(cloudlet.owner), scratch_directory() as scratch:
            return self._save(cloudlet, scratch)[0]

    def _fetch(self, cloudlet: Cloudlet, scratch: str) -> tuple[Saved, str]:
        """Archive the state layer on the host and bring it here: ``(Saved, the archive's local path)``."""
        user, host = cloudlet.owner, cloudlet.machine
        made = self._op(host, "save", {"name": user}, f"saving {user}'s cloudlet")
        archive = reported_path(made, "archive", user, "save.tar")
        got = self._transfer(host, Get(archive, scratch), f"fetching {user}'s state")
        at = made.get("at")
        saved = Saved(user, float(at) if isinstance(at, (int, float)) else time.time(),
                      int(got.detail["size"]), host.name)
        return saved, str(got.detail["path"])

    def _save(self, cloudlet: Cloudlet, scratch: str) -> tuple[Saved, str]:
        """Save under the store lock (held by the caller); ``(Saved, the archive's local path)``."""
        store, user = self._store(), cloudlet.owner
        saved, local = self._fetch(cloudlet, scratch)
        store.upload(user, local)
        record = store.read(user) or Record(user, placed_on=cloudlet.machine.name)
        record.saved = saved
        store.write(record)
        return saved, local

    def _stop(self, cloudlet: Cloudlet) -> None:
        """Stop the sandbox, delete its layer on the host and take its marker off."""
        user, host = cloudlet.owner, cloudlet.machine
        self._op(host, "stop", {"name": user, "remove": True}, f"stopping {user}'s cloudlet")
        gone = self._unplace(host, user)
        if not gone.ok:
            raise StateError(f"{user}'s cloudlet stopped, but its marker on {host.name} stays: "
                             f"{gone.status} {gone.message}".rstrip(), gone)

    def release(self, cloudlet: Cloudlet) -> Saved:
        """Save, stop, and free the slot; the Saved record (the store keeps the state)."""
        store = self._store()
        with store.lock(cloudlet.owner), scratch_directory() as scratch:
            saved, _ = self._save(cloudlet, scratch)
            self._stop(cloudlet)
            store.write(Record(cloudlet.owner, saved))
        return saved

    def move(self, cloudlet: Cloudlet, machine: Machine) -> Cloudlet:
        """Save, stop, and start on ``machine`` with the state just saved; the Cloudlet there.

        The archive goes to the store and to ``machine`` at the same time;
        the store's record names the new save only once the store has it.
        """
        if machine.name == cloudlet.machine.name:
            return cloudlet
        if isinstance(machine, Cloudlet):
            raise ArgumentError(f"move a cloudlet to a machine, not into {machine.name}")
        store, user = self._store(), cloudlet.owner
        with store.lock(user), scratch_directory() as scratch:
            saved, archive = self._fetch(cloudlet, scratch)
            failure: list[BaseException] = []
            upload = threading.Thread(target=self._upload, args=(user, archive, failure),
                                      name=f"ecshell-cloudlet-save-{user}", daemon=True)
            upload.start()
            try:
                self._stop(cloudlet)
                moved = self._start_on(user, machine, store.read(user), archive=archive,
                                       notice=f"moved from {cloudlet.machine.name}")
            except BaseException:
                upload.join()
                if not failure:  # not placed anywhere now; its state is the save just made
                    store.write(Record(user, saved))
                raise
            upload.join()
            if failure:
                raise CloudletError(f"{user}'s cloudlet moved to {machine.name} with all its state, but the store "
                                    f"kept the save before: {failure[0]}")
            store.write(Record(user, saved, placed_on=machine.name, placed_at=moved.started_at))
        return moved

    def _upload(self, user: str, archive: str, failure: list[BaseException]) -> None:
        try:
            self._store().upload(user, archive)
        except Exception as exc:  # a thread has nobody to raise to: the caller reports it
            failure.append(exc)

    def __repr__(self) -> str:
        return f"<Cloudlets hosts={self.hosts!r} store={self.store!r} slots={self.slots}>"
