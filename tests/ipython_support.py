"""A real IPython InteractiveShell with ecshell loaded, for the tests that drive magics in process."""

import contextlib

from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from ecshell.shell.extension import extension_for


@contextlib.contextmanager
def loaded_shell():
    """The shell (history in memory), ecshell loaded; unloaded and the instance cleared afterwards."""
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    try:
        shell.run_line_magic("load_ext", "ecshell")
        yield shell
    finally:
        try:
            if extension_for(shell) is not None:
                shell.run_line_magic("unload_ext", "ecshell")
        finally:
            InteractiveShell.clear_instance()
