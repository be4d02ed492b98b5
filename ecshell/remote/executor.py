"""The executor: runs on a target machine, standard library only.

ecshell starts it over the machine's pooled SSH connection as
``exec python3 -I -S -c '<this file, zlib + base64>'`` (see
:mod:`ecshell.executor`); nothing is installed and no port is opened. It
then reads framed requests on stdin and answers with framed events on
stdout, so one SSH channel carries every command the machine runs.

A frame is a 9-byte header ``kind (1 byte), command id (4), length (4)``,
big-endian, then ``length`` bytes of payload.

Requests (client -> executor):

``R`` run       payload: window (4 bytes), flags (1 byte; 1 = input follows,
                2 = never take the shortcut), the run token's length (1 byte),
                the token, then the command. Runs ``<login shell> -c <command>``
                (the command exactly as ``ssh host CMD`` sends it) in a new
                session (its own process group), with ``ECSHELL_RUN=<token>``
                in its environment, stdout and stderr on one pipe so that their
                order is exact. A command the shell would only look up and exec
                is exec'd directly: see :class:`Shortcut`.
``I`` input     bytes for the command's stdin.
``E`` input EOF close the command's stdin.
``C`` cancel    TERM the command's process group now, KILL it a second later.
``W`` window    payload: 4 bytes, more output the client is ready to take.

Events (executor -> client):

``H`` hello     JSON: executor pid, shell, python version, whether the shortcut
                is on (or why not), how commands are started, whether sshd
                forced a command (SSH_ORIGINAL_COMMAND: the client then does
                not use the executor). Sent once.
``O`` output    bytes, never more than the command's window allows.
``S`` started   payload: the command's pid (4 bytes), then 1 byte: 1 if the
                shortcut exec'd it, 0 if the login shell runs it.
``X`` exit      pid (4 bytes), how (1 byte: 0 = exit code, 1 = signal), the code
                or the signal number (4 bytes), then for a signal its name
                (``TERM``, as sshd's exit-signal names it); sent after the command exited
                and its output reached EOF.
``F`` failed    text: the command could not be started.
``K`` killed    the command's process group was sent TERM (after a cancel).

Writes: a started frame is held back up to :data:`HOLD_DELAY` so that it
shares a write with what follows; output is sent as soon as it is read (an
executor killed a moment later must not take it along). When a read drains a
command's pipe to EOF, the executor reaps it at once, so that a short
command's start, output and exit usually leave in one write, which sshd sends
as one SSH packet.

Flow control: the executor reads a command's output only while the client
has granted window for it; past that the pipe fills and the command blocks,
as it would on a slow terminal. Nothing is buffered without bound.

No orphans: a watcher process (forked first, in its own session) shares a
table of the live process groups with the executor (see :class:`Groups`);
when the executor exits or is killed, the watcher's pipe reaches EOF and it
kills the groups in the table. When the client goes away (stdin EOF), the
executor exits and the watcher does the same.

Commands get the environment sshd gave the login shell that started this
process: the client's start command hands it over (hex, from the shell's
``/proc/$$/environ``, read before the shell exec'd us), so that a start-up file
that exports something (``PATH=/opt/x:$PATH`` in $BASH_ENV) is not applied
twice, once for the executor and once for each command. Without it, what
``/proc/self/environ`` holds (Python may coerce the locale in its own
``os.environ``), without the ``_`` the shell added. The working directory is
the one sshd chose (the home directory).
"""

import json
import mmap
import os
import pwd
import selectors
import signal
import stat
import struct
import sys
import time

HEADER = struct.Struct(">BII")
STATUS = struct.Struct(">IBi")
U32 = struct.Struct(">I")  # windows, grants and pids
READ_SIZE = 65536
CLIENT_READ_SIZE = 65536  # below malloc's mmap threshold: no mmap and munmap per read
KILL_AFTER = 1.0
HOLD_DELAY = 0.005
RUN, INPUT, INPUT_EOF, CANCEL, GRANT = b"RIECW"
HELLO, STARTED, OUTPUT, EXIT, FAILED, KILLED = b"HSOXFK"
FLAG_INPUT = 1
FLAG_NO_SHORTCUT = 2
RUN_VARIABLE = b"ECSHELL_RUN"
#: Linux's limit on one exec argument, NUL included (32 pages): ``sh -c`` refuses a longer string.
MAX_ARG_STRLEN = 131072
#: The most of the login shell's environment the start command hands over: in hex (3 characters a byte
#: with od's blanks and newlines), it stays under MAX_ARG_STRLEN. One that long may have been cut.
HANDOVER_MAX = 40000


def initial_environment(given=None):
    """The environment sshd's session gave us, as bytes, without ``_``.

    ``given``: the login shell's own initial environment, in hex (see the module's docstring).
    """
    raw = None
    if given:
        try:
            raw = bytes.fromhex(given)
        except ValueError:
            raw = None  # not what the start command meant to give (a shell without `...`): our own
        if raw is not None and len(raw) >= HANDOVER_MAX:
            raw = None  # cut at HANDOVER_MAX: our own, start-up included, is the lesser harm
    if raw is None:
        try:
            with open("/proc/self/environ", "rb") as f:
                raw = f.read()
        except OSError:
            raw = None
    if raw is None:
        env = dict(os.environb)
    else:
        env = {}
        for item in raw.split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep and key:
                env[key] = value
    env.pop(b"_", None)
    return env


def signal_name(number):
    """``b"TERM"`` for SIGTERM: the name sshd's exit-signal message gives, without ``SIG``."""
    try:
        return signal.Signals(number).name[3:].encode()
    except ValueError:
        return b""


def login_shell():
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    return shell or "/bin/sh"


class Groups:
    """The process groups of the running commands, in memory shared with the watcher.

    A command's start and end each write one slot of this table, where a
    message to the watcher would wake it twice per command; the watcher reads
    the table once, after the executor is gone.
    """

    SLOTS = 65536

    def __init__(self):
        self.memory = mmap.mmap(-1, self.SLOTS * 4)  # anonymous and shared: survives fork
        self.table = memoryview(self.memory).cast("I")
        self.used = 0  # slots ever used: the rest is zero
        self.freed = []
        self.slot = {}

    def full(self):
        return not self.freed and self.used == self.SLOTS

    def add(self, group):
        """Record ``group``; check :meth:`full` before starting it."""
        if self.freed:
            slot = self.freed.pop()
        else:
            slot, self.used = self.used, self.used + 1
        self.table[slot] = group
        self.slot[group] = slot

    def discard(self, group):
        slot = self.slot.pop(group, None)
        if slot is not None:
            self.table[slot] = 0
            self.freed.append(slot)

    def live(self):
        return [group for group in self.table if group]


def start_watcher(groups):
    """Fork the process that kills the groups in ``groups`` when we are gone."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(read_end)
        return pid, write_end
    try:
        os.close(write_end)
        os.setsid()
        for number in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(number, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        watch(read_end, groups)
    finally:
        os._exit(0)


def watch(fd, groups):
    while True:  # nothing is ever written: EOF comes when the executor is gone
        try:
            if not os.read(fd, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    alive = [g for g in groups.live() if _killpg(g, signal.SIGTERM)]
    if alive:
        time.sleep(KILL_AFTER)
        for group in alive:
            _killpg(group, signal.SIGKILL)


def _killpg(group, number):
    try:
        os.killpg(group, number)
        return True
    except OSError:
        return False


# -- the shortcut: exec what the login shell would only exec ---------------------

#: Characters bash takes literally anywhere in a word: no quoting, expansion,
#: globbing, redirection, comment or separator is made of them.
LITERAL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:,+@%=-"
BLANKS = b" \t"
IDENTIFIER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"
#: bash's reserved words (its grammar's: fixed). Builtins are asked of the shell itself.
KEYWORDS = frozenset(b"! case coproc do done elif else esac fi for function if in select "
                     b"then time until while { } [[ ]]".split())
PROBE_MARK = b"@@ecshell-probe@@\n"
PROBE_TIMEOUT = 3.0
#: Flags of ``$-`` that leave a literal simple command alone; any other (x, v, k, n, m, r, ...) does not.
HARMLESS_FLAGS = frozenset(b"hBcefuCaPTEbH")
#: The probe's look at the shell's own descriptors: the ones without close-on-exec are what its commands
#: inherit; stdout and stderr must be the one pipe, stdin the other.
DESCRIPTORS = (b"grep -Hs ^flags: /proc/$$/fdinfo/*; [ /proc/$$/fd/1 -ef /proc/$$/fd/2 ] && echo 1=2; "
               b"[ -p /proc/$$/fd/0 ] && ! [ /proc/$$/fd/0 -ef /proc/$$/fd/1 ] && echo 0=in")
O_CLOEXEC = 0o2000000
#: Variables bash gives a new value for each command (or as time passes): exported, no probe can copy them.
PER_COMMAND = frozenset(b"RANDOM SRANDOM SECONDS EPOCHSECONDS EPOCHREALTIME BASHPID LINENO BASH_COMMAND "
                        b"BASH_SUBSHELL BASH_EXECUTION_STRING HISTCMD".split())
STARTUP_END = b": @@ecshell-start-up-end@@"
#: What a start-up may run (bash's xtrace shows each command it ran) for the probe to know its whole
#: effect: builtins whose effect on a command the probe reads back, or that only test and branch.
#: Anything else (a program, a function, ``read``, ``command``) could give another answer next time.
UNDERSTOOD = frozenset(b": true false [ test [[ (( let return case for select break continue shift eval "
                       b"export declare typeset local readonly unset shopt set alias unalias umask ulimit "
                       b"hash exec cd trap enable echo printf . source".split())
#: What a process inherits through exec, as /proc/self/status and /proc/self/limits say it.
INHERITED = (b"Umask:", b"SigBlk:", b"SigIgn:", b"Uid:", b"Gid:", b"Groups:", b"NoNewPrivs:",
             b"Seccomp:", b"CapInh:", b"CapPrm:", b"CapEff:", b"CapBnd:", b"CapAmb:", b"Max ")


class Shortcut:
    """Runs a command that bash would only look up and exec, without starting bash.

    ``bash -c 'hostname'`` parses one simple command, finds ``hostname`` on
    PATH and execs it in its own place (bash 5 execs the last command of a
    ``-c`` string without forking): a whole bash start-up per command, the
    largest part of the CPU of a warm broadcast. For a command made only of
    literal words, whose first word is no reserved word, builtin, function or
    alias, the executor does the PATH lookup and the exec itself and gives the
    program what bash would: the same argv, the environment bash exports (in
    bash's order, ``_`` set to the program's path as bash spells it), working
    directory, umask, limits, credentials and signal state, in a new session.

    It is taken only after a probe, run once through the real shell exactly
    as a command is, showed that the shell's start-up leaves nothing else a
    program could see: no output, no functions, no traps, no aliases that
    expand, no names hashed (``hash -p``), no EXECIGNORE, no options that
    change a simple command (``set -x``, ``-v``, ``-k``, ...), no descriptor
    left open or redirected, PATH with no ``~``, and ``env`` found where bash
    found it. A first run with xtrace lists every command the start-up ran:
    if that is anything but builtins whose effect the probe reads back, the
    shortcut stays off (the next start-up could differ in ways no file says);
    every file it names (sourced, tested, globbed) and that file's folder are
    watched with the start-up files bash reads (/etc/bash.bashrc, ~/.bashrc,
    $BASH_ENV), and the probe runs again when one changes. A command the
    lookup does not end on an executable file for goes through the shell, so
    that its error is the shell's own.
    """

    def __init__(self, executor):
        self.executor = executor
        self.why = "not probed yet"  # None once a probe found the shortcut usable
        self.env = {}  # name -> value, in the order bash exports them, ECSHELL_RUN included
        self.path = []
        self.builtins = frozenset()
        self.hashed = frozenset()  # names the start-up hashed to a path of its choosing: bash's to run
        home = executor.env.get(b"HOME", b"")
        self.startup_files = [b"/etc/bash.bashrc", home + b"/.bashrc"]
        if executor.env.get(b"BASH_ENV"):
            self.startup_files.append(executor.env[b"BASH_ENV"])
        self.watched = list(self.startup_files)  # and what the start-up's trace names
        self.stamps = None

    def _stamps(self):
        stamps = []
        for name in self.watched:
            try:
                st = os.stat(name)
                stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                stamps.append(None)
        return stamps

    @property
    def usable(self):
        return self.why is None

    def probe(self):
        self.why = "probing"
        self.watched = list(self.startup_files)
        self.stamps = self._stamps()
        self.why = self._probe()

    def _probe(self):
        executor = self.executor
        if os.path.basename(executor.shell) != "bash":
            return "the login shell is not bash"
        if executor.env.get(b"BASH_ENV", b"").translate(None, LITERAL):
            return "$BASH_ENV needs expanding: which file it names is the shell's to say"
        why = self._trace_startup()
        if why:
            return why
        self.stamps = self._stamps()
        # hash -l first: the probe's own programs are hashed as they run
        steps = [b"hash -l", b"declare -F", b"trap -p", b"shopt -q expand_aliases && alias", b"enable -a",
                 b"pwd -P", b'echo "$-" "${EXECIGNORE-}"', DESCRIPTORS,
                 b"cat /proc/self/status /proc/self/limits", b"env -0"]
        script = b"".join(b"echo " + PROBE_MARK + step + b"\n" for step in steps)
        output = executor.capture(executor.shell_argv(script), executor.shell, executor.environment(b"probe"))
        if output is None:
            return "the probe through the shell failed or took more than %s s" % PROBE_TIMEOUT
        sections = output.split(PROBE_MARK)
        if len(sections) != len(steps) + 1:
            return "the probe's output was not understood"
        preamble, hashed, functions, traps, aliases, builtins, cwd, options, descriptors, inherited, environ = sections
        if preamble:
            return "the shell's start-up prints something"
        if functions or traps or aliases:
            return "the shell's start-up defines functions, traps or aliases"
        try:
            # "builtin hash -p /usr/bin/id hostname": the name is the last word
            self.hashed = frozenset(line.split()[-1] for line in hashed.splitlines())
        except IndexError:
            return "the probe's output was not understood"
        flags, _, execignore = options.rstrip(b"\n").partition(b" ")
        if not HARMLESS_FLAGS.issuperset(flags):
            return "the shell's start-up sets options (%s) that change a simple command" % flags.decode()
        if execignore:
            return "the shell's start-up sets EXECIGNORE"
        if not _descriptors_as_given(descriptors):
            return "the shell's start-up leaves descriptors open or redirects stdin, stdout or stderr"
        if cwd.rstrip(b"\n") != os.getcwdb():
            return "the shell's start-up changes directory"
        self.builtins = frozenset(line.split()[-1] for line in builtins.splitlines() if line.split())
        env = {}
        for item in environ.split(b"\0"):
            name, sep, value = item.partition(b"=")
            if sep:
                env[name] = value
        if env.get(RUN_VARIABLE) != b"probe":
            return "the shell's start-up changes the command's environment"
        if not PER_COMMAND.isdisjoint(env):
            return "the shell's start-up exports a variable bash sets anew for each command"
        path = env.get(b"PATH")
        if path is None or any(d.startswith(b"~") for d in path.split(b":")):
            return "PATH is unset or has a ~ in it"
        self.env, self.path = env, path.split(b":")
        found = self.lookup(b"env")
        if found is None or env.get(b"_") != found:
            return "PATH lookup differs from the shell's"
        cat = self.lookup(b"cat")
        if cat is None:
            return "no cat on PATH to probe with"
        direct = executor.capture([b"cat", b"/proc/self/status", b"/proc/self/limits"], cat,
                                  self.environment(cat, None))
        if direct is None or _inherited(direct) != _inherited(inherited):
            return "the shell's start-up changes umask, limits or signals"
        return None

    def command(self, command, token):
        """``(path, argv, env)`` to exec ``command`` as bash would, or None: use the shell."""
        if command.translate(None, LITERAL + BLANKS):
            return None
        if len(command) >= MAX_ARG_STRLEN:
            return None  # the kernel refuses it to ``bash -c``: what the shell path reports, the shortcut must too
        words = command.split()
        if not words or b"=" in words[0] or words[0] in KEYWORDS:
            return None
        if words[0][:1] in (b"%", b"-", b"+"):
            return None  # a job spec (%1: bash runs fg) or an option-like word: bash decides, not a PATH lookup
        if self._stamps() != self.stamps:
            self.probe()  # off or on: a start-up that changed may have turned it either way
        if not self.usable or words[0] in self.builtins or words[0] in self.hashed:
            return None
        path = self.lookup(words[0])
        if path is None:
            return None
        return path, words, self.environment(path, token)

    def lookup(self, name):
        """The file bash would exec for ``name``, spelled as bash spells it in ``_``; None if none."""
        if b"/" in name:
            candidates = [name]
        else:
            candidates = [(d if d.endswith(b"/") else (d or b".") + b"/") + name for d in self.path]
        for candidate in candidates:
            try:
                if stat.S_ISDIR(os.stat(candidate).st_mode):
                    continue
            except OSError:
                continue
            if os.access(candidate, os.X_OK):
                return candidate
        return None

    def _trace_startup(self):
        """Run the start-up once under xtrace: why the shortcut cannot know its effect, or None.

        Watches every file the trace names, and that file's folder (a glob over it, a file created later).
        """
        executor = self.executor
        env = dict(executor.env)
        env[b"SHELLOPTS"], env[b"PS4"] = b"xtrace", b"+ "  # bash takes both from the environment before start-up
        output = executor.capture([executor.argv0.encode(), b"-c", STARTUP_END], executor.shell, env)
        if output is None:
            return "the probe through the shell failed or took more than %s s" % PROBE_TIMEOUT
        trace, end, _ = output.partition(b"+ " + STARTUP_END + b"\n")
        if not end:
            return "the shell's start-up could not be traced"
        sources = []
        for line in trace.splitlines():
            words = _xtrace_words(line)
            if words is None:
                return "the shell's start-up could not be followed (it prints, or a value spans lines)"
            if not words:
                continue
            name = words[0]
            if name not in UNDERSTOOD and not _assignment(name):
                return "the shell's start-up runs %r: what it does next time no file says" % name.decode(
                    "utf-8", "replace")
            if name in (b".", b"source"):
                if len(words) < 2 or b"/" not in words[1]:
                    return "the shell's start-up sources a file found on PATH"
                sources.append(words[1])
            for word in words[1:]:
                if b"/" in word:
                    for path in (word, os.path.dirname(word) or b"."):
                        if path not in self.watched:
                            self.watched.append(path)
        for name in self.startup_files + sources:
            try:
                with open(name, "rb") as f:
                    text = f.read()
            except OSError:
                continue
            if b"$(<" in text.replace(b" ", b"").replace(b"\t", b""):
                return "the shell's start-up reads a file into a variable ($(<file))"
        return None

    def environment(self, path, token):
        env = self.env.copy()  # keeps bash's order; setting a key keeps its place
        env[b"_"] = path
        if token is None:
            del env[RUN_VARIABLE]
        else:
            env[RUN_VARIABLE] = token
        return env


def _xtrace_words(line):
    """The words of one line of bash's xtrace (``+ cmd 'a b'``), unquoted; None if it is no such line.

    xtrace quotes a word with single quotes (``'\\''`` for a quote in it), or ``$'...'`` for control
    characters, which is refused here.
    """
    command = line.lstrip(b"+")
    if command == line or not command.startswith(b" ") or b"$'" in command:
        return None
    words, word, quoted, started, escaped = [], bytearray(), False, False, False
    for byte in command[1:]:
        char = bytes([byte])
        if escaped:
            word += char
            escaped = False
        elif char == b"\\" and not quoted:
            escaped = started = True
        elif char == b"'":
            quoted, started = not quoted, True
        elif char == b" " and not quoted:
            if started:
                words.append(bytes(word))
            word, started = bytearray(), False
        else:
            word += char
            started = True
    if quoted or escaped:
        return None
    if started:
        words.append(bytes(word))
    return words


def _assignment(word):
    """Whether ``word`` is a variable assignment (``x=1``, ``a[k]+=v``)."""
    name, sep, _ = word.partition(b"=")
    name = name.rstrip(b"+").partition(b"[")[0]
    return bool(sep and name) and not name[:1].isdigit() and not name.translate(None, IDENTIFIER)


def _descriptors_as_given(section):
    """Whether the probe's DESCRIPTORS step says the shell's commands get only stdin, stdout and stderr
    as the executor gave them."""
    inheritable, checks = set(), set()
    try:
        for line in section.splitlines():
            if line in (b"1=2", b"0=in"):
                checks.add(line)
                continue
            where, _, flags = line.partition(b":flags:")  # /proc/<pid>/fdinfo/<fd>:flags:\t<octal>
            if not int(flags, 8) & O_CLOEXEC:
                inheritable.add(int(where.rsplit(b"/", 1)[1]))
    except ValueError:
        return False
    return inheritable == {0, 1, 2} and checks == {b"1=2", b"0=in"}


def _inherited(status):
    return [line for line in status.splitlines() if line.startswith(INHERITED)]


# -- starting a command -------------------------------------------------------------


def _fork_exec_for_this_python():
    """subprocess's own fork_exec and how to call it here, or None (then Popen is used)."""
    version = sys.version_info[:2]
    if not (3, 6) <= version <= (3, 13):
        return None  # a signature not checked: subprocess.Popen knows it
    try:
        from _posixsubprocess import fork_exec
    except ImportError:
        return None
    if version >= (3, 11):  # ..., process_group, gid, gids, uid, umask, preexec_fn, allow_vfork
        return lambda *head: fork_exec(*head, -1, None, None, None, -1, None, True)
    if version >= (3, 9):  # ..., gid, gids, uid, umask, preexec_fn
        return lambda *head: fork_exec(*head, None, None, None, -1, None)
    return lambda *head: fork_exec(*head, None)  # ..., preexec_fn


FORK_EXEC = [_fork_exec_for_this_python()]


def spawn(argv, executable, env, stdin, output):
    """Start ``argv`` (bytes) in a new session, stdin and stdout+stderr on the given fds; its pid.

    This is what ``subprocess.Popen(argv, executable=..., env=..., stdin=stdin,
    stdout=output, stderr=output, start_new_session=True)`` does, vfork and
    all (about 0.5 ms here against 1.3 ms for a fork of this interpreter; SIGPIPE
    and SIGXFSZ, which Python ignores, restored), without Popen's Python around
    it: most of the executor's own time per command in a broadcast. On a
    Python whose fork_exec signature is not known, Popen itself. Not
    os.posix_spawn: glibc leaves its internal signals (32, 33) ignored in the
    child, and ignored signals survive exec. Raises OSError if exec fails.
    """
    fork_exec = FORK_EXEC[0]
    executable = os.fsencode(executable)
    if fork_exec is not None:
        env_list = [name + b"=" + value for name, value in env.items()]
        error_r, error_w = os.pipe()
        try:
            try:
                pid = fork_exec(argv, [executable], True, (error_w,), None, env_list,
                                stdin, -1, -1, output, -1, output, error_r, error_w, True, True)
            except TypeError:  # not the signature we expected after all
                FORK_EXEC[0] = None
            else:
                os.close(error_w)
                error_w = None
                report = b""
                while True:  # EOF at once if exec succeeded (the pipe is close-on-exec)
                    part = os.read(error_r, 50000)
                    if not part:
                        break
                    report += part
                if not report:
                    return pid
                os.waitpid(pid, 0)
                name, _, rest = report.partition(b":")
                number = int(rest.partition(b":")[0] or b"0", 16)
                raise OSError(number, os.strerror(number), executable.decode("utf-8", "replace"))
        finally:
            os.close(error_r)
            if error_w is not None:
                os.close(error_w)
    import subprocess

    process = subprocess.Popen(argv, executable=executable, stdin=stdin, stdout=output,
                               stderr=output, env=env, start_new_session=True)
    process.returncode = 0  # we reap it ourselves: keep subprocess from waiting for it
    return process.pid


class Job:
    """One command: its process, pipes, window and state."""

    def __init__(self, ident, window):
        self.id = ident
        self.window = window
        self.pid = None
        self.out = None  # read end of the stdout+stderr pipe
        self.stdin = None  # write end of the stdin pipe
        self.pending_input = bytearray()
        self.input_eof = False
        self.reading = False
        self.status = None
        self.writing = False
        self.cancelled = False
        self.kill_at = None


class Executor:
    def __init__(self):
        self.env = initial_environment(sys.argv[1] if len(sys.argv) > 1 else None)
        self.shell = login_shell()
        self.argv0 = os.path.basename(self.shell)
        self.selector = selectors.DefaultSelector()
        self.jobs = {}
        self.outbox = []
        self.outbox_size = 0
        self.held_since = None  # when the first frame now held back was queued
        self.urgent = False  # a frame that must not wait is queued
        self.inbuf = bytearray()
        self.running = True
        self.groups = Groups()
        self.watcher_pid, self.watcher = start_watcher(self.groups)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda number, frame: None)
        self.selector.register(0, selectors.EVENT_READ, "client")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.shortcut = Shortcut(self)

    # -- frames ---------------------------------------------------------------

    def send(self, kind, ident, payload=b""):
        self.outbox.append(HEADER.pack(kind, ident, len(payload)))
        if payload:
            self.outbox.append(payload)
        self.outbox_size += HEADER.size + len(payload)
        if kind != STARTED or self.outbox_size >= READ_SIZE:
            self.urgent = True
        elif self.held_since is None:
            self.held_since = time.monotonic()

    def flush(self):
        if not self.outbox:
            return
        if not self.urgent and time.monotonic() - self.held_since < HOLD_DELAY:
            return  # only start acknowledgements: a moment for output to go with them
        self.urgent, self.held_since, self.outbox_size = False, None, 0
        data = memoryview(b"".join(self.outbox))
        self.outbox = []
        while data:
            try:
                written = os.write(1, data)
            except (BlockingIOError, InterruptedError):
                sel = selectors.DefaultSelector()
                sel.register(1, selectors.EVENT_WRITE)
                sel.select()
                sel.close()
                continue
            except OSError:  # the client is gone: stop; the watcher kills what runs
                self.running = False
                return
            data = data[written:]

    # -- the loop -------------------------------------------------------------

    def run(self):
        self.shortcut.probe()
        self.send(HELLO, 0, json.dumps({"pid": os.getpid(), "shell": self.shell,
                                        "python": sys.version.split()[0],
                                        "shortcut": self.shortcut.why or "on",
                                        "spawn": "fork_exec" if FORK_EXEC[0] else "popen",
                                        "forced": b"SSH_ORIGINAL_COMMAND" in self.env}).encode())
        self.flush()
        while self.running:
            for key, events in self.selector.select(self._next_timer()):
                what = key.data
                if what == "client":
                    self.read_client()
                elif what == "wake":
                    self.drain_wakeups()
                elif events & selectors.EVENT_READ:
                    self.read_output(what)
                else:
                    self.write_input(what)
            self.reap()
            self.timers()
            self.flush()
        # Exiting: the watcher sees its pipe close and kills whatever is left.

    def _next_timer(self):
        timers = [j.kill_at for j in self.jobs.values() if j.kill_at is not None]
        if self.held_since is not None and not self.urgent:
            timers.append(self.held_since + HOLD_DELAY)
        if not timers:
            return None
        return max(0.0, min(timers) - time.monotonic())

    def read_client(self):
        try:
            data = os.read(0, CLIENT_READ_SIZE)
        except InterruptedError:
            return
        except OSError:
            data = b""
        if not data:
            self.running = False
            return
        self.inbuf += data
        while len(self.inbuf) >= HEADER.size:
            kind, ident, length = HEADER.unpack_from(self.inbuf)
            if len(self.inbuf) < HEADER.size + length:
                break
            payload = bytes(self.inbuf[HEADER.size:HEADER.size + length])
            del self.inbuf[:HEADER.size + length]
            self.request(kind, ident, payload)

    def request(self, kind, ident, payload):
        job = self.jobs.get(ident)
        if kind == RUN:
            self.start(ident, payload)
        elif job is None:
            return  # a command that already finished
        elif kind == INPUT:
            if job.stdin is not None:
                job.pending_input += payload
                self._want_write(job)
        elif kind == INPUT_EOF:
            job.input_eof = True
            self._want_write(job)
        elif kind == GRANT:
            job.window += U32.unpack(payload)[0]
            self._want_read(job)
        elif kind == CANCEL:
            self.cancel(job)

    # -- commands -------------------------------------------------------------

    def shell_argv(self, command):
        return [self.argv0.encode(), b"-c", command]

    def environment(self, token):
        """What sshd gave us, plus the command's ECSHELL_RUN token if it has one."""
        if token is None:
            return self.env
        env = self.env.copy()
        env[RUN_VARIABLE] = token
        return env

    def start(self, ident, payload):
        (window,) = U32.unpack_from(payload)
        flags, token_size = payload[U32.size], payload[U32.size + 1]
        token = payload[U32.size + 2:U32.size + 2 + token_size] if token_size else None
        command = payload[U32.size + 2 + token_size:]
        job = Job(ident, window)
        if self.groups.full():
            self.send(FAILED, ident, b"more commands at once than this executor tracks (%d)" % Groups.SLOTS)
            return
        out_r, out_w = os.pipe()
        in_r, in_w = os.pipe()
        direct = None if flags & FLAG_NO_SHORTCUT else self.shortcut.command(command, token)
        try:
            job.pid = None
            if direct is not None:
                try:
                    job.pid = spawn(direct[1], direct[0], direct[2], in_r, out_w)
                except OSError:
                    pass  # the exec failed (a script without #!, ...): the shell knows what to do
            if job.pid is None:
                direct = None
                job.pid = spawn(self.shell_argv(command), self.shell, self.environment(token), in_r, out_w)
        except ValueError:  # a NUL in the command (the client refuses those): this command fails, not the executor
            for fd in (out_r, out_w, in_r, in_w):
                os.close(fd)
            self.send(FAILED, ident, b"the command holds a NUL byte, which no shell can receive")
            return
        except OSError as exc:
            for fd in (out_r, out_w, in_r, in_w):
                os.close(fd)
            # What sshd's session child does when it cannot exec the shell (a command past the
            # kernel's 128 KiB limit on one argument, a missing shell): perror(shell), exit 1.
            message = "%s: %s\n" % (self.shell, os.strerror(exc.errno) if exc.errno else exc)
            self.send(OUTPUT, ident, message.encode("utf-8", "surrogateescape"))
            self.send(EXIT, ident, STATUS.pack(0, 0, 1))
            return
        os.close(out_w)
        os.close(in_r)
        os.set_blocking(out_r, False)
        self.groups.add(job.pid)
        self.send(STARTED, ident, U32.pack(job.pid) + (b"\1" if direct is not None else b"\0"))
        job.out = out_r
        self.jobs[ident] = job
        if flags & FLAG_INPUT:
            os.set_blocking(in_w, False)
            job.stdin = in_w
        else:
            os.close(in_w)
        self._want_read(job)

    def capture(self, argv, executable, env):
        """Run ``argv`` to its end as a command would run, stdin at EOF; its output, or None."""
        if self.groups.full():
            return None
        out_r, out_w = os.pipe()
        in_r, in_w = os.pipe()
        os.close(in_w)
        try:
            pid = spawn(argv, executable, env, in_r, out_w)
        except OSError:
            os.close(out_r)
            return None
        finally:
            os.close(in_r)
            os.close(out_w)
        self.groups.add(pid)
        chunks, deadline = [], time.monotonic() + PROBE_TIMEOUT
        probe = selectors.DefaultSelector()
        probe.register(out_r, selectors.EVENT_READ)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not probe.select(left):
                    _killpg(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    self.groups.discard(pid)
                    return None
                data = os.read(out_r, READ_SIZE)
                if not data:
                    break
                chunks.append(data)
        finally:
            probe.close()
            os.close(out_r)
        _, status = os.waitpid(pid, 0)
        self.groups.discard(pid)
        return b"".join(chunks) if status == 0 else None

    def _watch(self, fd, event, job, want, watched):
        """Register ``fd`` for ``event`` or unregister it, as ``want`` says; whether it is watched now."""
        if want and not watched:
            self.selector.register(fd, event, job)
        elif not want and watched:
            self.selector.unregister(fd)
        return want

    def _want_read(self, job):
        want = job.out is not None and (job.window > 0 or job.cancelled)
        job.reading = self._watch(job.out, selectors.EVENT_READ, job, want, job.reading)

    def _want_write(self, job):
        if job.stdin is None:
            return
        if job.pending_input:
            self.write_input(job)
        elif job.input_eof:
            os.close(job.stdin)
            job.stdin = None

    def _input_registered(self, job, want):
        job.writing = self._watch(job.stdin, selectors.EVENT_WRITE, job, want, job.writing)

    def write_input(self, job):
        if job.stdin is None:
            return
        try:
            while job.pending_input:
                written = os.write(job.stdin, job.pending_input[:READ_SIZE])
                del job.pending_input[:written]
        except (BlockingIOError, InterruptedError):
            self._input_registered(job, True)
            return
        except OSError:  # the command closed its stdin (EPIPE): drop the rest
            job.pending_input = bytearray()
            job.input_eof = True
        self._input_registered(job, False)
        if job.input_eof:
            os.close(job.stdin)
            job.stdin = None

    def read_output(self, job):
        if job.out is None:
            return  # closed earlier in this round of events
        while True:  # the pipe is non-blocking: read until it is empty
            size = READ_SIZE if job.cancelled else min(READ_SIZE, job.window)
            if size <= 0:
                break
            try:
                data = os.read(job.out, size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self._close_output(job)
                self._reap(job)  # usually exited by now: its exit leaves with its output
                self.finish(job)
                return
            if not job.cancelled:
                job.window -= len(data)
                self.send(OUTPUT, job.id, data)
            if len(data) == READ_SIZE:
                break  # a big stream: the other commands get their turn
        self._want_read(job)

    def _close_output(self, job):
        if job.reading:
            self.selector.unregister(job.out)
            job.reading = False
        os.close(job.out)
        job.out = None

    def cancel(self, job):
        if job.cancelled:
            return
        job.cancelled = True
        _killpg(job.pid, signal.SIGTERM)
        self.send(KILLED, job.id)
        job.kill_at = time.monotonic() + KILL_AFTER
        self._want_read(job)

    def timers(self):
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.kill_at is not None and now >= job.kill_at:
                job.kill_at = None
                _killpg(job.pid, signal.SIGKILL)
                # Something outside the group may still hold the pipe: stop waiting for it.
                if job.out is not None:
                    self._close_output(job)
                self.finish(job)

    def drain_wakeups(self):
        try:
            while os.read(self.wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _reap(self, job):
        if job.status is None:
            try:
                pid, status = os.waitpid(job.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = job.pid, 255 << 8
            if pid:
                job.status = status

    def reap(self):
        for job in list(self.jobs.values()):
            if job.status is None:
                self._reap(job)
                if job.status is not None:
                    self.finish(job)
        try:
            os.waitpid(self.watcher_pid, os.WNOHANG)
        except ChildProcessError:
            pass

    def finish(self, job):
        """Report a command once it exited and its output reached EOF."""
        if job.status is None or job.out is not None or job.id not in self.jobs:
            return
        if job.kill_at is not None:
            return  # cancelled: the rest of its group is still to be KILLed at kill_at
        self.groups.discard(job.pid)
        del self.jobs[job.id]
        if job.stdin is not None:
            self._input_registered(job, False)
            os.close(job.stdin)
            job.stdin = None
        if os.WIFSIGNALED(job.status):
            report = STATUS.pack(job.pid, 1, os.WTERMSIG(job.status)) + signal_name(os.WTERMSIG(job.status))
        else:
            report = STATUS.pack(job.pid, 0, os.WEXITSTATUS(job.status))
        if not job.cancelled:
            self.send(EXIT, job.id, report)


def main():
    try:
        Executor().run()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
