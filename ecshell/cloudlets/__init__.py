"""Cloudlets: per-user sandboxes nested in machines, handed out from a free list, state kept in a store.

>>> from ecshell.cloudlets import DirectoryStore, runtime_recipe
>>> hosts = cluster.free_list("cloudlets", size=2, recipe=runtime_recipe()); hosts.fill()   # doctest: +SKIP
>>> cluster.cloudlets.configure(hosts=hosts, store=DirectoryStore(cluster.machine("store-0")))  # doctest: +SKIP
>>> alice = cluster.cloudlet("alice")                                            # doctest: +SKIP
>>> alice.run("uname -n"); alice.save(); alice.release()                         # doctest: +SKIP

- :mod:`.runtime`: the sandbox (bubblewrap) as the controller drives it;
  the machine's side is :mod:`ecshell.remote.cloudlet`;
- :mod:`.cloudlet`: :class:`Cloudlet`, a Machine that runs inside the sandbox;
- :mod:`.manager`: :class:`Cloudlets` (``cluster.cloudlets``): place, find, save, move, release;
- :mod:`.stores` and :mod:`.s3`: where the state goes between hosts.
"""

from .cloudlet import Cloudlet
from .manager import CloudletError, Cloudlets
from .runtime import runtime_recipe
from .s3 import S3Store
from .stores import DirectoryStore, Record, Saved, Store, StoreError

__all__ = ["Cloudlet", "CloudletError", "Cloudlets", "DirectoryStore", "Record", "S3Store", "Saved", "Store", "StoreError",
           "runtime_recipe"]
