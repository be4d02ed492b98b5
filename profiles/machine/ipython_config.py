"""The machine-side profile: what a person sees on logging in to a machine
whose login shell is ecshell-login (the operator's profile is another one).

ecshell-login starts IPython with ``--profile=ecshell_machine --config=<this file>``,
so a user's own ~/.ipython/profile_ecshell_machine/ipython_config.py can add to it.
"""

c = get_config()  # noqa: F821 (IPython defines it while loading a profile)

# The machine's name in the prompt, its markers and diagnostics in the banner,
# and markers() / mark() / unmark() / diagnostics() / status() in the namespace.
c.InteractiveShellApp.extensions = ["ecshell.remote.login"]
c.TerminalIPythonApp.display_banner = True

# Logging out of a machine should be as quick as logging out of sh.
c.TerminalInteractiveShell.confirm_exit = False
c.InteractiveShellApp.exec_lines = ["import os, sys, subprocess, pathlib"]
