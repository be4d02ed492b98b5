"""Reaching a machine over SSH, as OpenSSH would.

- :mod:`.keys`: key files as OpenSSH reads them (private keys, public halves,
  certificates), and generating ecshell's own.
- :mod:`.identities`: the keys offered to a server, in OpenSSH's order, and
  what signs with each (a file, or the agent).
- :mod:`.hostkeys`: known_hosts and pinned host keys; the accept-or-refuse decision.
- :mod:`.knownhosts`: the known_hosts file format (markers, patterns, hashed names).
- :mod:`.endpoint`: where and as whom to connect (ssh_config, ProxyJump).
- :mod:`.connection`: authenticated paramiko transports, pooled one per endpoint.
- :mod:`.transport`: the interface a shell command is started through, and
  its two implementations, :mod:`.channel` (a channel per command) and
  :mod:`.executor` (a persistent executor on the machine).
"""

from ..logs import quiet_libraries

quiet_libraries()  # paramiko's tracebacks never reach the operator's screen unasked (see ecshell.logs)
