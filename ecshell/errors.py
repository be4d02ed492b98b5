"""Exceptions for operator mistakes, and the kinds of a host's own failure.

A host's own failure (exit code, timeout, refused key, ...) is never an
exception: it is a :class:`ecshell.results.Result` whose ``error`` is an
:class:`ErrorKind`. The exceptions here are raised only for what the
operator typed or configured, and each message says what to type instead.
"""

import enum


class ErrorKind(str, enum.Enum):
    """Why a host's command did not succeed; compares equal to its string."""

    EXIT = "exit"  # the command ran and exited non-zero (or died of a signal)
    TIMEOUT = "timeout"  # connecting or the command took longer than allowed
    UNREACHABLE = "unreachable"  # refused, no route, unknown host name, proxy failed
    AUTH = "auth"  # the server accepted none of our keys
    HOSTKEY = "hostkey"  # host key unknown under a refusing policy, or changed
    LOST = "lost"  # the connection died while the command ran
    INTERRUPTED = "interrupted"  # Ctrl-C (or a broadcast deadline) cut it short

    def __str__(self) -> str:
        return self.value


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

    def __init__(self, kind: ErrorKind, message: str, **detail: object) -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = detail
