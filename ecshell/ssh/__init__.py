"""Reaching a machine over SSH, as OpenSSH would.

- :mod:`.keys`: key files as OpenSSH reads them (private keys, public halves,
  certificates), and generating ecshell's own.
- :mod:`.identities`: the keys offered to a server, in OpenSSH's order, and
  what signs with each (a file, or the agent).
- :mod:`.hostkeys`: known_hosts and pinned host keys; the accept-or-refuse decision.
- :mod:`.knownhosts`: the known_hosts file format (markers, patterns, hashed names).
- :mod:`.options`: a host's effective ssh_config options, from OpenSSH's ``ssh -G``;
  :mod:`.configfiles` (the files a config reads, a reader without ssh) and
  :mod:`.tokens` (``~``, ``%h``, ``${VAR}``) around it.
- :mod:`.endpoint`: where and as whom to connect (those options mapped, ProxyJump chains).
- :mod:`.proxycommand`: a connection over a ProxyCommand's stdin and stdout.
- :mod:`.connection`: authenticated paramiko transports, pooled one per endpoint.
- :mod:`.transport`: the interface a shell command is started through, and
  its two implementations, :mod:`.channel` (a channel per command) and
  :mod:`.executor` (a persistent executor on the machine).
"""

from ..logs import quiet_libraries

quiet_libraries()  # paramiko's tracebacks never reach the operator's screen unasked (see ecshell.logs)
