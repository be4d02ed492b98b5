"""Host keys pinned by instance id: the only keys accepted for that instance.

One file per instance, ``<directory>/<instance-id>.pub``, holding the public
key lines that were delivered (user data) or read from the console output.
Pins are written before the first connection and removed when the instance
is terminated, so that an address reused by another instance is never
trusted on the strength of an old key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

_ID = re.compile(r"i-[0-9a-f]{8,32}")


class PinStore:
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, instance_id):
        if not _ID.fullmatch(instance_id):
            raise ValueError(f"not an instance id: {instance_id!r}")
        return os.path.join(self.directory, instance_id + ".pub")

    def save(self, instance_id: str, keys: Iterable[str], source: str) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = self._path(instance_id)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"# pinned from {source}\n")
            for key in keys:
                f.write(" ".join(key.split()[:2]) + "\n")
        os.replace(tmp, path)

    def load(self, instance_id: str) -> list[str]:
        try:
            with open(self._path(instance_id)) as f:
                return [line.strip() for line in f if line.strip() and not line.startswith("#")]
        except FileNotFoundError:
            return []

    def forget(self, instance_id: str) -> None:
        try:
            os.unlink(self._path(instance_id))
        except FileNotFoundError:
            pass

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [n[:-4] for n in names if n.endswith(".pub") and _ID.fullmatch(n[:-4])]
