"""Exceptions for operator mistakes.

A host's own failure (exit code, timeout, refused key, ...) is never an
exception: it is a :class:`ecshell.results.Result` whose ``error`` names the
kind. These exceptions are raised only for what the operator typed or
configured, and each message says what to type instead.
"""


class EcShellError(Exception):
    """Root of every exception ecshell raises."""


class SelectionError(EcShellError, LookupError):
    """A target that selects nothing, names an unknown machine, or does not parse."""


class ArgumentError(EcShellError, ValueError):
    """A bad argument to a public call."""


class FabricError(EcShellError):
    """A fabric could not do what was asked (launch, stop, terminate, ...)."""


class NotSupported(FabricError):
    """The fabric does not offer this operation (launching on a StaticFabric)."""


class ConnectError(EcShellError):
    """Internal: connecting to a machine failed. Carries the Result error kind.

    Broadcasts turn it into a failed Result; it reaches the operator only
    from single-machine calls that ask for a connection directly.
    """

    def __init__(self, kind, message, **detail):
        super().__init__(message)
        self.kind = kind
        self.detail = detail
