"""The executor: runs on a target machine, standard library only.

ecshell starts it over the machine's pooled SSH connection as
``exec python3 -I -S -c '<this file, zlib + base64>'`` (see
:mod:`ecshell.executor`); nothing is installed and no port is opened. It
then reads framed requests on stdin and answers with framed events on
stdout, so one SSH channel carries every command the machine runs.

A frame is a 9-byte header ``kind (1 byte), command id (4), length (4)``,
big-endian, then ``length`` bytes of payload.

Requests (client -> executor):

``R`` run       payload: window (4 bytes), flags (1 byte; 1 = input follows),
                then the shell string. Runs ``<login shell> -c <string>`` in a
                new session (its own process group), stdout and stderr on one
                pipe so that their order is exact.
``I`` input     bytes for the command's stdin.
``E`` input EOF close the command's stdin.
``C`` cancel    TERM the command's process group now, KILL it a second later.
``W`` window    payload: 4 bytes, more output the client is ready to take.

Events (executor -> client):

``H`` hello     JSON: executor pid, shell, python version. Sent once at start.
``O`` output    bytes, never more than the command's window allows.
``S`` started   payload: the shell's pid (4 bytes). Held back up to
                :data:`ACK_DELAY` so that it shares a write with the first output.
``X`` exit      JSON: ``{"pid": p, "code": n}`` or ``{"pid": p, "signal": n}``,
                sent after the command exited and its output reached EOF.
``F`` failed    text: the command could not be started.
``K`` killed    the command's process group was sent TERM (after a cancel).

Flow control: the executor reads a command's output only while the client
has granted window for it; past that the pipe fills and the command blocks,
as it would on a slow terminal. Nothing is buffered without bound.

No orphans: a watcher process (forked first, in its own session) is told
every live process group; when the executor exits or is killed, the
watcher's pipe reaches EOF and it kills those groups. When the client goes
away (stdin EOF), the executor exits and the watcher does the same.

Commands get the environment sshd gave this process, read from
``/proc/self/environ`` where it exists (Python may coerce the locale in its
own ``os.environ``), without the ``_`` the shell added; the working
directory is the one sshd chose (the home directory).
"""

import json
import os
import pwd
import selectors
import signal
import struct
import sys
import time

HEADER = struct.Struct(">BII")
WINDOW = struct.Struct(">I")
READ_SIZE = 65536
KILL_AFTER = 1.0
ACK_DELAY = 0.005
RUN, INPUT, INPUT_EOF, CANCEL, GRANT = b"RIECW"
HELLO, STARTED, OUTPUT, EXIT, FAILED, KILLED = b"HSOXFK"
FLAG_INPUT = 1


def initial_environment():
    """The environment sshd's session gave us, as bytes, without ``_``."""
    env = None
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
        env = {}
        for item in raw.split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep and key:
                env[key] = value
    except OSError:
        env = dict(os.environb)
    env.pop(b"_", None)
    return env


def login_shell():
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    return shell or "/bin/sh"


def start_watcher():
    """Fork the process that kills our commands' groups when we are gone."""
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
        watch(read_end)
    finally:
        os._exit(0)


def watch(fd):
    groups, pending = set(), b""
    while True:
        try:
            data = os.read(fd, 4096)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        if not data:
            break
        pending += data
        lines = pending.split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line[:1] == b"+":
                groups.add(int(line[1:]))
            elif line[:1] == b"-":
                groups.discard(int(line[1:]))
    alive = [g for g in groups if _killpg(g, signal.SIGTERM)]
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
        self.env = initial_environment()
        self.shell = login_shell()
        self.argv0 = os.path.basename(self.shell)
        self.selector = selectors.DefaultSelector()
        self.jobs = {}
        self.outbox = []
        self.acks_since = None  # when the held-back start acknowledgements were queued
        self.inbuf = bytearray()
        self.running = True
        self.watcher_pid, self.watcher = start_watcher()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda number, frame: None)
        self.selector.register(0, selectors.EVENT_READ, "client")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")

    # -- frames ---------------------------------------------------------------

    def send(self, kind, ident, payload=b""):
        self.outbox.append(HEADER.pack(kind, ident, len(payload)))
        if payload:
            self.outbox.append(payload)
        if kind != STARTED:
            self.acks_since = None
        elif self.acks_since is None and len(self.outbox) == 2:
            self.acks_since = time.monotonic()

    def flush(self):
        if not self.outbox:
            return
        if self.acks_since is not None and time.monotonic() - self.acks_since < ACK_DELAY:
            return  # only start acknowledgements: wait a moment for output to go with them
        self.acks_since = None
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

    def tell_watcher(self, line):
        try:
            os.write(self.watcher, line)
        except OSError:
            pass

    # -- the loop -------------------------------------------------------------

    def run(self):
        self.send(HELLO, 0, json.dumps({"pid": os.getpid(), "shell": self.shell,
                                        "python": sys.version.split()[0]}).encode())
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
        if self.acks_since is not None:
            timers.append(self.acks_since + ACK_DELAY)
        if not timers:
            return None
        return max(0.0, min(timers) - time.monotonic())

    def read_client(self):
        try:
            data = os.read(0, 262144)
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
            job.window += WINDOW.unpack(payload)[0]
            self._want_read(job)
        elif kind == CANCEL:
            self.cancel(job)

    # -- commands -------------------------------------------------------------

    def start(self, ident, payload):
        (window,) = WINDOW.unpack_from(payload)
        flags = payload[WINDOW.size]
        command = payload[WINDOW.size + 1:]
        job = Job(ident, window)
        out_r, out_w = os.pipe()
        in_r, in_w = os.pipe()
        argv = [self.argv0.encode(), b"-c", command]
        try:
            job.pid = self.spawn(argv, in_r, out_w)
        except OSError as exc:
            for fd in (out_r, out_w, in_r, in_w):
                os.close(fd)
            self.send(FAILED, ident, ("cannot start %s: %s" % (self.shell, exc)).encode())
            return
        os.close(out_w)
        os.close(in_r)
        self.tell_watcher(b"+%d\n" % job.pid)
        self.send(STARTED, ident, WINDOW.pack(job.pid))
        job.out = out_r
        self.jobs[ident] = job
        if flags & FLAG_INPUT:
            os.set_blocking(in_w, False)
            job.stdin = in_w
        else:
            os.close(in_w)
        self._want_read(job)

    def spawn(self, argv, stdin, output):
        """Start the shell in a new session; its pid.

        subprocess uses vfork where it can (about 0.5 ms here, against 1.3 ms for a
        fork of this interpreter) and restores SIGPIPE and SIGXFSZ, which Python
        ignores. Not os.posix_spawn: glibc leaves its internal signals (32, 33)
        ignored in the child, and ignored signals survive exec.
        """
        import subprocess

        process = subprocess.Popen(argv, executable=self.shell, stdin=stdin, stdout=output,
                                   stderr=output, env=self.env, start_new_session=True)
        process.returncode = 0  # we reap it ourselves: keep subprocess from waiting for it
        return process.pid

    def _want_read(self, job):
        want = job.out is not None and (job.window > 0 or job.cancelled)
        if want and not job.reading:
            self.selector.register(job.out, selectors.EVENT_READ, job)
            job.reading = True
        elif not want and job.reading:
            self.selector.unregister(job.out)
            job.reading = False

    def _want_write(self, job):
        if job.stdin is None:
            return
        if job.pending_input:
            self.write_input(job)
        elif job.input_eof:
            os.close(job.stdin)
            job.stdin = None

    def _input_registered(self, job, want):
        if want and not job.writing:
            self.selector.register(job.stdin, selectors.EVENT_WRITE, job)
        elif not want and job.writing:
            self.selector.unregister(job.stdin)
        job.writing = want

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
        size = READ_SIZE if job.cancelled else min(READ_SIZE, job.window)
        try:
            data = os.read(job.out, size)
        except InterruptedError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_output(job)
            self.finish(job)
            return
        if not job.cancelled:
            job.window -= len(data)
            self.send(OUTPUT, job.id, data)
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

    def reap(self):
        for job in list(self.jobs.values()):
            if job.status is None:
                try:
                    pid, status = os.waitpid(job.pid, os.WNOHANG)
                except ChildProcessError:
                    pid, status = job.pid, 255 << 8
                if pid:
                    job.status = status
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
        self.tell_watcher(b"-%d\n" % job.pid)
        del self.jobs[job.id]
        if job.stdin is not None:
            self._input_registered(job, False)
            os.close(job.stdin)
            job.stdin = None
        if os.WIFSIGNALED(job.status):
            report = {"pid": job.pid, "signal": os.WTERMSIG(job.status)}
        else:
            report = {"pid": job.pid, "code": os.WEXITSTATUS(job.status)}
        if not job.cancelled:
            self.send(EXIT, job.id, json.dumps(report).encode())


def main():
    try:
        Executor().run()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
