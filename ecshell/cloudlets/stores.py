"""Where cloudlets' state is kept between hosts: a store, and what it records per user.

>>> store = DirectoryStore(cluster.machine("store-0"), "/srv/cloudlets")      # doctest: +SKIP
>>> cluster.cloudlets.configure(hosts=pool, store=store)                        # doctest: +SKIP

A store holds, per user, the last saved state layer (a tar archive) and a
:class:`Record`: when it was saved, from which machine, and where the
cloudlet was last placed. It also holds the placement lock, the one place
every shell agrees on, so that two shells placing the same user's cloudlet
end with one. Two stores ship: :class:`DirectoryStore`, a directory on a
store machine (local and static fleets), and
:class:`~ecshell.cloudlets.s3.S3Store` (EC2). A record read back is data: it
is checked field by field, and nothing in it is ever used as a path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..commands import Get, Put, Shell
from ..errors import EcShellError
from ..hostset import valid_name
from .runtime import USER_NAME, check_user

if TYPE_CHECKING:
    from ..machine import Machine
    from ..results import Result


class StoreError(EcShellError):
    """The store could not be read or written; ``result`` says why when a machine answered."""

    def __init__(self, message: str, result: Result | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclasses.dataclass
class Saved:
    """One saved state layer: whose, when (the host's clock), how many bytes, from which machine."""

    user: str
    at: float
    size: int
    machine: str


@dataclasses.dataclass
class Record:
    """What a store knows of one user's cloudlet: the last save, and where it was last placed."""

    user: str
    saved: Saved | None = None
    placed_on: str | None = None
    placed_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, user: str, text: str | bytes) -> Record | None:
        """The record in ``text`` if it is one for ``user``, every field of the right kind; else None."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("user") != user:
            return None
        record = cls(user)
        saved = data.get("saved")
        if isinstance(saved, dict):
            at, size, machine = saved.get("at"), saved.get("size"), saved.get("machine")
            if (isinstance(at, (int, float)) and isinstance(size, int) and size >= 0
                    and isinstance(machine, str) and valid_name(machine)):
                record.saved = Saved(user, float(at), size, machine)
        placed_on, placed_at = data.get("placed_on"), data.get("placed_at")
        if isinstance(placed_on, str) and valid_name(placed_on):
            record.placed_on = placed_on
            record.placed_at = float(placed_at) if isinstance(placed_at, (int, float)) else None
        return record


class Store:
    """Where saved state layers and records go. Subclasses implement each method."""

    def lock(self, user: str) -> contextlib.AbstractContextManager[Any]:
        """Held while a shell places, moves or releases ``user``'s cloudlet."""
        raise NotImplementedError

    def read(self, user: str) -> Record | None:
        raise NotImplementedError

    def write(self, record: Record) -> None:
        raise NotImplementedError

    def upload(self, user: str, archive: str) -> None:
        """Make the local file ``archive`` ``user``'s saved state (replacing the last one whole)."""
        raise NotImplementedError

    def download(self, user: str, directory: str) -> str:
        """``user``'s saved state as a local file under ``directory``; its path."""
        raise NotImplementedError

    def users(self) -> list[str]:
        """The users it holds a record for."""
        raise NotImplementedError


def _remote_dir(path: str) -> str:
    """A shell word for ``path`` on the store machine (``~/x``: under its login home)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


class DirectoryStore(Store):
    """A directory on a store machine: ``<path>/<user>.tar``, ``<user>.json``, locks in its markers.

    The store machine should outlive the cloudlet hosts (it is where state
    survives them); the controller carries every archive between host and
    store over its two pooled connections.
    """

    def __init__(self, machine: Machine, path: str = "~/.ecshell-cloudlets", lock_timeout: float = 60.0) -> None:
        if not isinstance(path, str) or not path or "\0" in path or "\n" in path:
            raise StoreError(f"give the store's directory as a path on {machine.name}, e.g. '/srv/cloudlets'")
        self.machine, self.path, self.lock_timeout = machine, path.rstrip("/") or "/", lock_timeout
        self._dir_word = _remote_dir(self.path)

    def __repr__(self) -> str:
        return f"<DirectoryStore {self.machine.name}:{self.path}>"

    def _run(self, script: str, input: bytes | None = None, what: str = "") -> Result:
        result = self.machine.execute(Shell(f"d={self._dir_word}; mkdir -p \"$d\" && {script}", input=input))
        if not result.ok:
            raise StoreError(f"cloudlet store {self.machine.name}:{self.path}: {what} failed: "
                             f"{result.status} {result.output.strip() or result.message}".rstrip(), result)
        return result

    def lock(self, user: str) -> contextlib.AbstractContextManager[Any]:
        return self.machine.lock("cloudlet." + check_user(user), timeout=self.lock_timeout,
                                 note=f"placing cloudlet {user}")

    def read(self, user: str) -> Record | None:
        name = shlex.quote(check_user(user) + ".json")
        result = self._run(f'if [ -f "$d"/{name} ]; then cat "$d"/{name}; fi', what=f"reading {user}'s record")
        return Record.from_json(user, result.output_bytes) if result.output_bytes.strip() else None

    def write(self, record: Record) -> None:
        name = check_user(record.user)
        self._run(f'cat > "$d"/.{name}.json.new && mv -f "$d"/.{name}.json.new "$d"/{name}.json',
                  input=record.to_json().encode(), what=f"writing {name}'s record")

    def upload(self, user: str, archive: str) -> None:
        name = check_user(user)
        self._run("true", what="making the directory")  # SFTP does not make it
        partial = f"{self.path}/.{name}.tar.partial"
        result = self.machine.execute(Put(archive, partial))
        if not result.ok:
            raise StoreError(f"cloudlet store {self.machine.name}:{self.path}: uploading {name}'s state failed: "
                             f"{result.status} {result.message}".rstrip(), result)
        self._run(f'mv -f "$d"/.{name}.tar.partial "$d"/{name}.tar', what=f"keeping {name}'s state")

    def download(self, user: str, directory: str) -> str:
        name = check_user(user)
        result = self.machine.execute(Get(f"{self.path}/{name}.tar", directory))
        if not result.ok:
            raise StoreError(f"cloudlet store {self.machine.name}:{self.path}: no saved state for {name} "
                             f"({result.status} {result.message})".rstrip(), result)
        return str(result.detail["path"])

    def users(self) -> list[str]:
        result = self._run('for f in "$d"/*.json; do [ -f "$f" ] && basename "$f" .json; done; true',
                           what="listing users")
        return sorted(u for u in result.output.split() if USER_NAME.fullmatch(u))


@contextlib.contextmanager
def scratch_directory() -> Iterator[str]:
    """A private local directory for archives in transit, removed afterwards."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="ecshell-cloudlet-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
