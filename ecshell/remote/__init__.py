"""What runs on the machines: standard library only, each file shippable alone.

- :mod:`.executor`: the persistent executor, sent through an SSH channel as
  ``python3 -I -S -c <code>``; it also defines the frame protocol, which the
  client (:mod:`ecshell.ssh.executor`) imports from here.
- :mod:`.loginshell`: the install, commit and rollback steps of the login shell.
- :mod:`.login`: ``ecshell-login``, the login shell itself (IPython only for an
  interactive login, imported there and nowhere else).

``tests/test_architecture.py`` imports each file with ``python3 -I -S`` and
nothing else on the path.
"""
