"""ecshell: an IPython control room for a fleet of machines.

>>> from ecshell import Cluster, LocalFabric
>>> cluster = Cluster(LocalFabric())
>>> web = cluster.launch(3, name="web")             # doctest: +SKIP
>>> web.run("hostname")                       # doctest: +SKIP

Importing ecshell is light: paramiko and boto3 load when first needed.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Cluster": "cluster",
    "Machine": "machine",
    "MachineSet": "machineset",
    "Result": "results",
    "ResultSet": "results",
    "ErrorKind": "results",
    "LocalFabric": "fabrics.local",
    "StaticFabric": "fabrics.static",
    "Ec2Fabric": "fabrics.ec2.fabric",
    "Fabric": "fabrics.base",
    "Prototype": "fabrics.base",
    "EcShell": "config",
    "Shell": "commands",
    "Put": "commands",
    "Get": "commands",
    "Noop": "commands",
    "Command": "commands",
    "quote": "commands",
    "EcShellError": "errors",
    "SelectionError": "errors",
    "ArgumentError": "errors",
    "FabricError": "errors",
    "NotSupported": "errors",
    "Marker": "state",
    "Lock": "state",
    "LockHeld": "state",
    "StateError": "state",
    "StateCommand": "state",
    "retry": "adapters",
    "timeout": "adapters",
    "sudo": "adapters",
    "once": "adapters",
    "apply": "adapters",
    "RecipeResult": "machineset",
    "Diagnostic": "diagnostics",
    "Diagnosis": "diagnostics",
    "register_diagnostic": "diagnostics",
    "service": "diagnostics",
    "FreeList": "freelist",
    "FreeListEmpty": "freelist",
}

__all__ = sorted(_EXPORTS)

# What the lazy exports are, for type checkers (which read this block and never run it);
# a name instead of typing.TYPE_CHECKING keeps `import ecshell` from importing typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .adapters import apply as apply, once as once, retry as retry, sudo as sudo, timeout as timeout
    from .cluster import Cluster as Cluster
    from .commands import Command as Command, Get as Get, Noop as Noop, Put as Put, Shell as Shell, quote as quote
    from .config import EcShell as EcShell
    from .diagnostics import (
        Diagnosis as Diagnosis,
        Diagnostic as Diagnostic,
        register_diagnostic as register_diagnostic,
        service as service,
    )
    from .errors import (
        ArgumentError as ArgumentError,
        EcShellError as EcShellError,
        ErrorKind as ErrorKind,
        FabricError as FabricError,
        NotSupported as NotSupported,
        SelectionError as SelectionError,
    )
    from .fabrics.base import Fabric as Fabric, Prototype as Prototype
    from .fabrics.ec2.fabric import Ec2Fabric as Ec2Fabric
    from .fabrics.local import LocalFabric as LocalFabric
    from .fabrics.static import StaticFabric as StaticFabric
    from .freelist import FreeList as FreeList, FreeListEmpty as FreeListEmpty
    from .machine import Machine as Machine
    from .machineset import MachineSet as MachineSet, RecipeResult as RecipeResult
    from .results import Result as Result, ResultSet as ResultSet
    from .state import (
        Lock as Lock,
        LockHeld as LockHeld,
        Marker as Marker,
        StateCommand as StateCommand,
        StateError as StateError,
    )


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ecshell' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)


def load_ipython_extension(shell):
    """``%load_ext ecshell``: see :mod:`ecshell.ipython`."""
    from .shell.extension import load_ipython_extension as load

    load(shell)


def unload_ipython_extension(shell):
    """``%unload_ext ecshell``: see :mod:`ecshell.ipython`."""
    from .shell.extension import unload_ipython_extension as unload

    unload(shell)
