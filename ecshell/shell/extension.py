"""Loading ecshell into IPython: ``%load_ext ecshell``.

::

    In [1]: %load_ext ecshell          # `cluster` and the magics appear
    In [2]: %launch 3 --name web
    In [3]: %on all uptime
    In [4]: %unload_ext ecshell        # connections closed, magics and `cluster` gone

What loading wires up, and unloading takes away again: the ``cluster`` name
(a Cluster configured from the shell's traitlets config, so ``c.EcShell.*``
and ``c.LocalFabric.*`` in a profile apply), the magics of
:mod:`ecshell.magics` (never over a magic of the same name that is already
there), colour display of ResultSets in a terminal, tab completion of
targets, ``%config EcShell``, the running-machines toolbar, and a word at
exit about machines still running. Loading imports neither paramiko nor
boto3: they come with the first connection or the first EC2 call.
"""

import atexit
import sys

#: Per shell (by id): what load_ipython_extension set up, for unload to take down.
_loaded: dict[int, "Extension"] = {}


class Extension:
    """Everything ecshell added to one shell."""

    def __init__(self, shell):
        from ..cluster import Cluster
        from .magics import EcShellMagics
        from .session import Session

        self.shell = shell
        self.cluster = Cluster(parent=shell)
        self.session = Session(self.cluster, ask=self.ask, color=self._color(), passphrase=self.passphrase,
                               notebook=getattr(shell, "kernel", None) is not None)
        self.magics = EcShellMagics(shell, self.session)
        self.registered = {"line": [], "cell": []}
        self.matcher = None
        self.printer_added = False
        self.toolbar_on = False

    # -- setup -----------------------------------------------------------------

    def load(self):
        shell = self.shell
        self._register_magics()
        shell.push({"cluster": self.cluster})
        for configurable in [self.cluster.settings, *self.cluster.fabrics.values()]:
            if configurable not in shell.configurables:
                shell.configurables.append(configurable)
        self._add_printer()
        self._add_completion()
        if getattr(shell, "pt_app", None) is not None:
            shell.events.register("post_execute", self.update_toolbar)
            self.toolbar_on = True
            self.update_toolbar()
        atexit.register(self.at_exit)

    def _register_magics(self):
        manager = self.shell.magics_manager
        for kind, methods in self.magics.magics.items():
            for name in list(methods):
                if manager.magics[kind].get(name) is not None:
                    print(f"ecshell: %{'%' if kind == 'cell' else ''}{name} already exists; "
                          f"not replacing it (use cluster.* for that operation)", file=sys.stderr)
                    del methods[name]
                    continue
                self.registered[kind].append(name)
        manager.register(self.magics)

    def _add_printer(self):
        from ..results import ResultSet

        formatter = self.shell.display_formatter.formatters["text/plain"]
        formatter.for_type(ResultSet, self._pretty_resultset)
        self.printer_added = True

    def _pretty_resultset(self, resultset, p, cycle):
        from .display import render_resultset

        p.text(render_resultset(resultset, color=self._color()))

    def _add_completion(self):
        from .completion import TargetMatcher

        self.matcher = TargetMatcher(self.session).match
        self.shell.Completer.custom_matchers.append(self.matcher)

    def _color(self):
        colors = str(getattr(self.shell, "colors", "NoColor")).lower()
        try:
            tty = sys.stdout.isatty()
        except (AttributeError, ValueError):
            tty = False
        return tty and colors != "nocolor"

    # -- behaviour ---------------------------------------------------------------

    def ask(self, question):
        """A yes/no question at the prompt (input() reaches the terminal or Jupyter).

        None when nobody can answer: a kernel run by nbclient or papermill
        has no stdin and raises StdinNotImplementedError on input().
        """
        from IPython.core.error import StdinNotImplementedError

        try:
            answer = input(question)
        except StdinNotImplementedError:
            return None
        except EOFError:
            return False
        return answer.strip().lower() in ("y", "yes")

    def passphrase(self, prompt):
        """A secret typed at the prompt, not echoed; None when nobody can type one."""
        import getpass

        from IPython.core.error import StdinNotImplementedError

        try:
            return getpass.getpass(prompt) or None
        except (EOFError, KeyboardInterrupt, StdinNotImplementedError):
            return None

    def update_toolbar(self):
        app = getattr(self.shell, "pt_app", None)
        if app is None or not self.toolbar_on:
            return
        text = self.session.toolbar() if self.cluster.settings.toolbar else ""
        app.bottom_toolbar = (lambda: self.session.toolbar()) if text else None

    def at_exit(self):
        try:
            warning = self.session.exit_warning()
            if warning:
                print(warning, file=sys.stderr)
        finally:
            self.cluster.close()

    # -- teardown ----------------------------------------------------------------

    def unload(self):
        shell = self.shell
        atexit.unregister(self.at_exit)
        manager = shell.magics_manager
        for kind, names in self.registered.items():
            for name in names:
                bound = manager.magics[kind].get(name)
                if getattr(bound, "__self__", None) is self.magics:
                    del manager.magics[kind][name]
        if manager.registry.get(type(self.magics).__name__) is self.magics:
            del manager.registry[type(self.magics).__name__]
        if self.matcher is not None:
            matchers = shell.Completer.custom_matchers
            matchers[:] = [m for m in matchers if m != self.matcher]
        if self.printer_added:
            from ..results import ResultSet

            shell.display_formatter.formatters["text/plain"].type_printers.pop(ResultSet, None)
        if self.toolbar_on:
            try:
                shell.events.unregister("post_execute", self.update_toolbar)
            except ValueError:
                pass
            if getattr(shell, "pt_app", None) is not None:
                shell.pt_app.bottom_toolbar = None
        for configurable in [self.cluster.settings, *self.cluster.fabrics.values()]:
            while configurable in shell.configurables:
                shell.configurables.remove(configurable)
        if shell.user_ns.get("cluster") is self.cluster:
            shell.drop_by_id({"cluster": self.cluster})
        self.cluster.close()


def load_ipython_extension(shell):
    """``%load_ext ecshell``: put ``cluster`` in the namespace and register the magics."""
    if id(shell) in _loaded:
        return
    from ..errors import EcShellError

    try:
        extension = Extension(shell)
    except EcShellError as exc:
        # e.g. a fabric that cannot be reached with these settings: say why, load
        # nothing, and stay unloaded in IPython's eyes so that %load_ext works again
        from IPython.core.error import UsageError

        raise UsageError(f"ecshell not loaded: {exc}. Fix the setting (%config EcShell, or c.EcShell.* "
                         "in the profile), then %load_ext ecshell again.") from None
    extension.load()
    _loaded[id(shell)] = extension


def unload_ipython_extension(shell):
    """``%unload_ext ecshell``: close every pooled connection; remove the magics and ``cluster``."""
    extension = _loaded.pop(id(shell), None)
    if extension is not None:
        extension.unload()


def extension_for(shell):
    """The loaded Extension of ``shell`` (for tests and profiles), or None."""
    return _loaded.get(id(shell))
