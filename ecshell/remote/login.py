"""ecshell-login: /bin/sh for whatever automates a machine, IPython for whoever logs in.

    $ ssh web-0 'echo $((6*7)); exit 5'     # exactly /bin/sh -c: prints 42, exit status 5
    $ scp app.tar.gz web-0:/srv/            # scp, sftp-server and rsync run through /bin/sh too
    $ ssh web-0                             # a person: IPython, with the machine's state
    ecshell-login on web-0 ...
    web-0 In [1]: markers()
    Out[1]: {'configured': datetime.datetime(2026, 11, 26, 10, 1, 7)}

How it decides:

- Any arguments other than ``-l``/``--login``/``-i`` (sshd runs ``SHELL -c CMD``
  for ``ssh host CMD``, scp, rsync and sftp-server): ``exec /bin/sh`` with the
  same arguments and the environment this process was started with, byte for
  byte (read back from /proc, before Python's locale coercion), and the signal
  dispositions sh would have had. Output, exit status and environment are
  those of /bin/sh.
- A login (no arguments, ``-l``, or an argv[0] starting with ``-``) on a
  terminal: IPython with the machine-side profile (profiles/machine). A login
  shell installed as a ``#!`` script never sees its ``-`` argv[0] (the kernel
  replaces it with the interpreter), so "no arguments at all" counts as a
  login: sshd, login(1) and tmux start a login shell exactly that way.
- Not on a terminal and no ``-c``: ``exec /bin/sh`` (as a login shell if this
  was one), which reads commands from stdin. A terminal with ``TERM=dumb`` is
  treated the same way: tools that drive a remote shell through a PTY (Emacs
  TRAMP) set it, and expect sh.
- IPython fails to import or to start: a plain login ``/bin/sh``, after one
  line on stderr saying why.

This module imports only the standard library until IPython is needed, and
works as a file on its own (``python3 login.py -c 'echo hi'``). The helpers
it puts in the IPython namespace (``markers()``, ``mark()``, ``unmark()``,
``diagnostics()``, ``status()``) work on the machine's own state directory,
``$ECSHELL_STATE_DIR`` or :data:`DEFAULT_STATE_DIR`.
"""

import os
import sys

#: The shell every non-interactive use is handed to.
SH = "/bin/sh"
#: The state directory when sshd does not set ECSHELL_STATE_DIR (as c.EcShell.state_dir).
DEFAULT_STATE_DIR = "~/.ecshell-state"
#: The IPython profile (in the user's IPython directory) the login shell uses.
PROFILE_NAME = "ecshell_machine"
#: Options that still mean "a login / an interactive shell" rather than "run this".
LOGIN_OPTIONS = {"-l", "--login", "-i"}


# -- the plain-shell path (stdlib, and as little of it as possible) -----------

def _original_environ():
    """The environment exactly as this process received it (None if unknown).

    Python adds LC_CTYPE=C.UTF-8 to os.environ when it starts in the C locale
    (PEP 538); /proc/self/environ still holds the block execve() was given.
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            block = f.read()
    except OSError:
        return None
    env = {}
    for item in block.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name:
            env[name] = value
    return env


def exec_sh(args, login=False):
    """Replace this process with /bin/sh: same pid, same fds, same environment."""
    import signal

    # Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across
    # exec, and `yes | head` must end as it does under sh.
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    env = _original_environ()
    if env is None:
        env = dict(os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(SH, ["-sh" if login else "sh"] + list(args), env)


def _is_login(argv0, args):
    return argv0.startswith("-") or not args or "-l" in args or "--login" in args


def _interactive():
    try:
        return os.isatty(0) and os.isatty(1)
    except OSError:
        return False


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    argv0, args = (argv[0] if argv else "ecshell-login"), argv[1:]
    if any(a not in LOGIN_OPTIONS for a in args):
        exec_sh(args)  # -c CMD, a script, sh options: all /bin/sh's business
    login = _is_login(argv0, args)
    if not _interactive() or os.environ.get("TERM") == "dumb":
        exec_sh(sorted({"--login": "-l"}.get(a, a) for a in set(args)), login=login)
    start_ipython(login)


def fall_back(why, login=True):
    sys.stderr.write(f"ecshell-login: IPython did not start ({why}); this is a plain {SH} instead.\n")
    exec_sh([], login=login)


def start_ipython(login=True):
    """IPython with the machine-side profile; a plain shell if that fails."""
    try:
        app = _ipython_app()
    except BaseException as exc:  # SystemExit from a config error, Ctrl-C while loading, ...
        fall_back(_why(exc), login)
    try:
        app.start()
    except BaseException as exc:
        if isinstance(exc, SystemExit) and not exc.code:
            sys.exit(0)
        fall_back(_why(exc), login)
    sys.exit(0)


def _why(exc):
    if isinstance(exc, SystemExit):
        return f"it exited with status {exc.code} while starting"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def profile_config():
    """The machine-side profile's ipython_config.py, or None when none is installed."""
    candidates = [
        os.environ.get("ECSHELL_LOGIN_PROFILE", ""),
        # installed from the wheel's data files
        os.path.join(sys.prefix, "share", "ecshell", "profiles", "machine", "ipython_config.py"),
        # a source checkout: ecshell/remote/login.py -> profiles/machine
        os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "profiles", "machine", "ipython_config.py"),
    ]
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    return None


def _ipython_app():
    from IPython.terminal.ipapp import TerminalIPythonApp

    config = profile_config()
    argv = [f"--profile={PROFILE_NAME}"]
    if config:
        argv.append(f"--config={config}")
    app = TerminalIPythonApp.instance()
    # IPython prints the banner before it loads extensions: the machine's state goes in now.
    app.config.InteractiveShell.banner2 = _banner()
    app.initialize(argv)
    if app.shell is None:
        raise RuntimeError("IPython made no shell")
    if "mark" not in app.shell.user_ns:  # no profile, or it did not load the helpers
        load_ipython_extension(app.shell)
    return app


# -- the machine's own state (stdlib) ------------------------------------------

def machine_name():
    import socket

    return os.environ.get("ECSHELL_MACHINE") or socket.gethostname()


def state_dir():
    return os.path.expanduser(os.environ.get("ECSHELL_STATE_DIR") or DEFAULT_STATE_DIR)


def _markers_dir():
    # The layout of ecshell.state: one file per marker under <state dir>/markers,
    # holding at=, by=, note= and token= lines.
    return os.path.join(state_dir(), "markers")


def _check_marker(name):
    import re

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,199}", name):
        raise ValueError(f"a marker name is letters, digits and _ . : @ + - such as 'configured', not {name!r}")


def markers():
    """``{marker: when it was set}`` for the markers in this machine's state directory."""
    import datetime

    found = {}
    try:
        entries = list(os.scandir(_markers_dir()))
    except OSError:
        return found
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if not entry.is_file():
                continue
            at = entry.stat().st_mtime
            for line in _read(entry.path).splitlines():
                if line.startswith("at=") and line[3:].strip().isdigit():
                    at = int(line[3:])
            found[entry.name] = datetime.datetime.fromtimestamp(at)
        except OSError:
            continue
    return dict(sorted(found.items()))


def mark(name, note=""):
    """Set (or reset) a marker, atomically, as ``web.mark(name)`` does from the controller."""
    import getpass
    import time

    _check_marker(name)
    directory = _markers_dir()
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".new.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(f"at={int(time.time())}\nby={getpass.getuser()}@{machine_name()} (ecshell-login)\n"
                f"note={' '.join(str(note).split())}\ntoken=\n")
    os.replace(tmp, os.path.join(directory, name))


def unmark(name):
    """Remove a marker: True if it was there."""
    _check_marker(name)
    try:
        os.unlink(os.path.join(_markers_dir(), name))
        return True
    except FileNotFoundError:
        return False


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def diagnostics():
    """What the machine says about itself now: load, memory, disk, uptime, ..."""
    import platform
    import shutil

    info = {"machine": machine_name(), "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
            "cpus": os.cpu_count()}
    uptime = _read("/proc/uptime").split()
    if uptime:
        info["uptime_s"] = float(uptime[0])
    try:
        info["load"] = os.getloadavg()
    except OSError:
        pass
    meminfo = {}
    for line in _read("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            meminfo[key] = int(rest.split()[0]) * 1024
    if "MemTotal" in meminfo:
        info["memory_total"] = meminfo["MemTotal"]
        info["memory_available"] = meminfo.get("MemAvailable", meminfo.get("MemFree", 0))
    for label, path in (("disk_root", "/"), ("disk_state", state_dir())):
        try:
            usage = shutil.disk_usage(path)
            info[label] = {"path": path, "total": usage.total, "free": usage.free}
        except OSError:
            pass
    info["state_dir"] = state_dir()
    info["markers"] = len(markers())
    return info


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _duration(seconds):
    minutes = int(seconds // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{days}d " if days else "") + f"{hours}h {minutes:02d}m"


def status():
    """The login banner: the machine, its diagnostics and its markers, as text."""
    d = diagnostics()
    lines = [f"ecshell-login on {d['machine']} ({d['kernel']}, {d['cpus']} cpus)"]
    facts = []
    if "uptime_s" in d:
        facts.append(f"up {_duration(d['uptime_s'])}")
    if "load" in d:
        facts.append("load " + " ".join(f"{x:.2f}" for x in d["load"]))
    if "memory_total" in d:
        facts.append(f"memory {_size(d['memory_available'])} free of {_size(d['memory_total'])}")
    if "disk_root" in d:
        facts.append(f"disk / {_size(d['disk_root']['free'])} free of {_size(d['disk_root']['total'])}")
    lines.append("  " + ", ".join(facts))
    found = markers()
    if found:
        shown = ", ".join(f"{name} ({when:%Y-%m-%d %H:%M})" for name, when in found.items())
        lines.append(f"  markers in {d['state_dir']}: {shown}")
    elif os.path.isdir(d["state_dir"]):
        lines.append(f"  no markers in {d['state_dir']}")
    else:
        lines.append(f"  no state directory ({d['state_dir']})")
    lines.append("  helpers: markers() mark(name) unmark(name) diagnostics() status()  -  !cmd runs a shell command")
    lines.append(f"  a plain shell: ssh -t <host> {SH} -l")
    return "\n".join(lines)


def _banner():
    try:
        return status() + "\n"
    except Exception as exc:  # a broken /proc must not keep the shell from starting
        return f"ecshell-login: could not read the machine's state: {exc}\n"


def check():
    """What the installer runs as the user: can IPython start here, and with which profile?"""
    import IPython  # noqa: F401  (the point is that it imports)

    print(f"IPython {IPython.__version__}; profile {profile_config() or '(built in)'}")
    print(status())


# -- the IPython side -----------------------------------------------------------

def load_ipython_extension(shell):
    """Put the machine's helpers in the namespace, its state in the banner, its name in the prompt."""
    helpers = {"markers": markers, "mark": mark, "unmark": unmark, "diagnostics": diagnostics,
               "state_dir": state_dir(), "machine": machine_name()}
    helpers["status"] = lambda: print(status())
    shell.push(helpers)
    prompts = getattr(shell, "prompts", None)
    if prompts is not None and hasattr(prompts, "in_prompt_tokens"):
        shell.prompts = _machine_prompts(shell, prompts, machine_name())


def _machine_prompts(shell, base, name):
    from pygments.token import Token

    class MachinePrompts(type(base)):
        def in_prompt_tokens(self):
            return [(Token.Prompt, f"{name} ")] + list(super().in_prompt_tokens())

    return MachinePrompts(shell)


def unload_ipython_extension(shell):
    for name in ("markers", "mark", "unmark", "diagnostics", "status", "state_dir", "machine"):
        shell.user_ns.pop(name, None)


if __name__ == "__main__":
    main()
