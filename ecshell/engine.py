"""The broadcast engine: one Command on many machines through a bounded worker pool.

Each machine is one task on a thread pool of ``fanout`` workers (the work is
network- and remote-bound, so threads are the right tool); a machine's
clock starts when a worker takes it. Ctrl-C (or the total timeout) sets a
cancel flag that every worker looks at; running commands are killed on
their machines, queued machines never start, and the ResultSet returned
holds everything that had arrived, the rest marked ``interrupted``.

An :class:`Attempt` is one machine's run of one command. For a shell
command it also chooses the transport (:mod:`ecshell.ssh.transport`): the
machine's persistent executor or a channel of its own, per
``c.EcShell.executor``, replacing a dead pooled connection once on the way.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import threading
import time
import weakref
from typing import Callable, Optional

from .errors import ArgumentError, ConnectError, ErrorKind
from .fanout.base import Fanout, FanoutRun
from .fanout.routes import DIRECT, SSM, TREE, route
from .hostset import fold
from .output import OutputBuffer
from .results import Result, ResultSet
from .ssh.transport import NOT_STARTED, Broken, Cancel, Process, Request, Silent, Transport

#: Seconds after a Ctrl-C that workers get to kill their commands and report.
CANCEL_GRACE = 3.0

#: Transport modes of ``c.EcShell.executor``.
AUTO, EXECUTOR, CHANNEL = "auto", "executor", "channel"


@functools.cache
def _transports():
    """(ChannelTransport, ExecutorTransport), imported with the first command: they import paramiko."""
    from .ssh.channel import ChannelTransport
    from .ssh.executor import ExecutorTransport

    return ChannelTransport, ExecutorTransport


class Attempt:
    """One machine's run of one command: its clock, connection, transport and output."""

    def __init__(self, machine, engine: "Engine", cancel: Cancel,
                 on_output: Optional[Callable] = None):
        self.machine = machine
        self.engine = engine
        self.settings = engine.settings
        self.cancel = cancel
        self.on_output = on_output
        self.started = time.monotonic()
        self.buffer = OutputBuffer(self.settings.output_memory_limit, self.settings.spill_dir)
        self.reconnected = False
        self.early: Optional[Process] = None  # what start_early sent, for the worker to take over
        #: When the whole attempt must be over (``time.monotonic()``): a command's timeout bounds
        #: connecting and starting too, so that a frozen host costs that timeout, not more.
        self.deadline: Optional[float] = None

    def fork(self, cancel: Optional[Cancel] = None) -> "Attempt":
        """A fresh Attempt (own buffer and clock) on the same machine, for a step inside a command."""
        return Attempt(self.machine, self.engine, cancel if cancel is not None else self.cancel, self.on_output)

    def waiting_limit(self) -> float:
        """Seconds a step may wait on the machine now: the connect timeout, within the attempt's deadline."""
        limit = self.settings.connect_timeout
        if self.deadline is not None:
            limit = min(limit, self.deadline - time.monotonic())
        if limit <= 0:
            raise ConnectError(ErrorKind.TIMEOUT, "the command's time ran out before it could start; it was not run")
        return limit

    def connect(self):
        """The machine's pooled connection, opened now if needed, within :meth:`waiting_limit`."""
        deadline = time.monotonic() + self.waiting_limit()
        endpoint = self.machine.endpoint
        previous = self.engine.pool.peek(endpoint)
        connection = self.engine.pool.get(endpoint, deadline)
        if previous is not None and previous is not connection:
            self.reconnected = True  # the pooled connection had died and was replaced
        return connection

    def start(self, request: Request, mode: str) -> Process:
        """Start ``request`` on the machine over the transport ``mode`` gives it.

        Not started at all, it raises ConnectError (INTERRUPTED when Ctrl-C came first).
        """
        def start(connection):
            transport = self.engine.transport(self, connection, mode)
            if self.cancel.is_set():  # Ctrl-C came while connecting: do not start it now
                raise ConnectError(ErrorKind.INTERRUPTED, NOT_STARTED)
            return transport.start(request)

        return self._on_connection(start)

    def open_channel(self):
        """(connection, a new session channel), for a command that drives its channel itself."""
        channel_transport = _transports()[0]
        return self._on_connection(
            lambda connection: (connection, channel_transport(connection, self.waiting_limit()).open()))

    def _on_connection(self, use):
        """``use(connection)`` on the pooled connection.

        A connection that broke before anything was sent is replaced, once;
        a command that went out is never sent again.
        """
        while True:
            connection = self.connect()
            try:
                return use(connection)
            except Silent as silent:
                # A peer that stops answering is dead: declared so once, not re-handshaken in this command's time.
                self.engine.pool.discard(self.machine.endpoint, connection)
                raise ConnectError(ErrorKind.TIMEOUT, f"{silent}; its connection is closed (a frozen host?) and "
                                   "the command was not run") from None
            except Broken as broken:
                if not broken.reconnect:
                    continue  # the transport changes (the executor restarts, or the channel path)
                if self.reconnected:
                    raise ConnectError(ErrorKind.UNREACHABLE,
                                       f"the new connection failed too ({broken}); the command was not run") from None
                self.engine.pool.discard(self.machine.endpoint, connection)
                self.reconnected = True

    def start_early(self, request: Request, mode: str) -> None:
        """Send ``request`` now, from the broadcasting thread, if the machine's executor is up.

        Anything that would wait (connecting, starting an executor, feeding
        input) is left to the worker, whose :meth:`start` takes over.
        """
        if mode == CHANNEL or request.input is not None or self.cancel.is_set():
            return
        connection = self.engine.pool.peek(self.machine.endpoint)
        transport = _transports()[1].live(connection) if connection is not None else None
        if transport is None:
            return
        try:
            self.early = transport.start(request)
        except Broken:
            pass  # never sent: the worker starts it over whatever connection is alive

    def output(self, data: bytes) -> None:
        self.buffer.write(data)
        if self.on_output is not None:
            self.on_output(self.machine, data)

    def retell(self, result: Result, text: str) -> None:
        """Make ``text`` the result's output, instead of the raw records the machine sent; streamed as output."""
        data = text.encode()
        buffer = OutputBuffer(self.settings.output_memory_limit, self.settings.spill_dir)
        buffer.write(data)
        buffer.close()
        result.replace_output(buffer)
        if self.on_output is not None and data:
            self.on_output(self.machine, data)

    def result(self, command, exit_code=None, error=None, message="", detail=None, signal=None, via=None) -> Result:
        self.buffer.close()
        return Result(self.machine, command, self.buffer, exit_code, error, message,
                      time.monotonic() - self.started, self.reconnected, detail, signal, via)


#: Every live Engine: their connections are closed at exit, while threads still run.
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    """Close every pool before the interpreter shuts down, in an order we choose.

    Left to the interpreter's finalization, paramiko's channels would close
    from ``__del__`` and its transport threads in no particular order, at a
    time when no new thread can run.
    """
    for engine in list(_ENGINES):
        engine.close()


class Engine:
    """Holds the connection pool and the workers; runs broadcasts."""

    def __init__(self, settings):
        self.settings = settings
        self._pool = None  # made on first use: it imports paramiko, which costs ~0.1 s
        self._threads = None
        self._threads_size = 0
        self._threads_started = 0
        self._lock = threading.Lock()
        #: Fan-out transports by name (:mod:`ecshell.fanout`); the cluster adds ``tree``, ``ssm`` comes when used.
        self.fanouts: dict[str, Fanout] = {}
        _ENGINES.add(self)

    def fanout(self, name: str) -> Fanout:
        """The fan-out transport ``name`` (``tree``, ``ssm``)."""
        if name not in self.fanouts and name == SSM:
            from .fanout.ssm import SsmFanout

            self.fanouts[name] = SsmFanout()
        try:
            return self.fanouts[name]
        except KeyError:
            raise ArgumentError(f"no {name!r} transport here: the tree needs c.EcShell.gateways or "
                                "c.EcShell.topology_file (and a Cluster)") from None

    def _routes(self, machines, command, transport):
        """``{transport name: [machines]}`` for this broadcast; ArgumentError for what cannot go that way."""
        groups: dict[str, list] = {}
        tree = self.fanouts.get(TREE)
        tree_names = tree.routed(machines) if tree is not None and transport is None else set()
        for machine in machines:
            groups.setdefault(route(machine, command, transport, tree_names), []).append(machine)
        for name, members in groups.items():
            if name == DIRECT:
                continue
            fanout = self.fanout(name)
            refused = fanout.refuses(command)
            if refused:
                raise ArgumentError(f"the {name} transport cannot run this command: {refused}; "
                                    "run it with transport='direct'")
            unreachable = fanout.cannot_reach(members)
            if unreachable:
                why = next(iter(unreachable.values()))
                raise ArgumentError(f"the {name} transport cannot reach {fold(list(unreachable))}: {why}; "
                                    "leave them out, or run with transport='direct'")
        return groups

    def _start_fanout(self, fanout: Fanout, members, command, run: FanoutRun) -> concurrent.futures.Future:
        """Run ``fanout.broadcast`` on a thread of its own; the future ends when it returns."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def carry():
            try:
                fanout.broadcast(members, command, run)
            except Exception as exc:  # the engine's API refused: every machine not finished says so
                for machine in run.unfinished(members):
                    run.finish(machine, error=ErrorKind.UNREACHABLE, message=f"{fanout.name}: {exc}")
            future.set_result(None)

        threading.Thread(target=carry, name=f"ecshell-{fanout.name}", daemon=True).start()
        return future

    @property
    def pool(self):
        if self._pool is None:
            from .ssh.connection import ConnectionPool

            with self._lock:
                if self._pool is None:
                    self._pool = ConnectionPool(self.settings)
        return self._pool

    def _workers(self):
        with self._lock:
            if self._threads is None or self._threads_size != self.settings.fanout:
                if self._threads is not None:
                    self._threads.shutdown(wait=False)
                self._threads = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.settings.fanout, thread_name_prefix="ecshell-worker")
                self._threads_size = self.settings.fanout
                self._threads_started = 0
            return self._threads

    def _start_workers(self, workers, count):
        """Have ``count`` worker threads running before the broadcast's first task.

        The pool starts a thread per task submitted while none is idle, and
        ``Thread.start`` returns only once the new thread has run: with the
        first hosts' handshakes holding both cores, that cost the submitting
        thread ~0.1-0.7 s for 50 hosts, every later host starting that much
        late. Started now, on idle cores, they cost ~50 us each, once.
        """
        count = min(count, self._threads_size)
        if count <= self._threads_started:
            return
        go = threading.Event()
        # Each placeholder task holds its thread until all are started, so every submit starts one.
        held = [workers.submit(go.wait) for _ in range(count)]
        go.set()
        concurrent.futures.wait(held)
        self._threads_started = count

    def transport(self, attempt: Attempt, connection, mode: str) -> Transport:
        """The transport for the attempt's machine, per ``mode`` (``c.EcShell.executor``)."""
        ChannelTransport, ExecutorTransport = _transports()
        if mode != CHANNEL:
            executor, why = ExecutorTransport.find(connection, attempt.waiting_limit(), attempt.cancel,
                                                   wait=mode == EXECUTOR)
            if executor is not None:
                return executor
            if mode == EXECUTOR:
                raise ConnectError(ErrorKind.UNREACHABLE, (
                    f"no executor on {attempt.machine.name}: {why}; "
                    "c.EcShell.executor = 'auto' runs such machines over one channel per command"))
        return ChannelTransport(connection, attempt.waiting_limit())

    def run_one(self, machine, command, cancel, on_output=None, attempt=None):
        """Run ``command`` on ``machine`` in this thread; never raises for the host's failure."""
        if attempt is None:
            attempt = Attempt(machine, self, cancel, on_output)
        try:
            return command.execute(attempt)
        except ConnectError as exc:
            return attempt.result(command, error=exc.kind, message=str(exc), detail=exc.detail)

    def broadcast(self, machines, command, on_output=None, on_result=None, total_timeout=None, transport=None):
        """A ResultSet of ``command`` run on every machine, in machine order.

        ``transport`` (``direct``, ``tree``, ``ssm``; None: each machine's
        own, :mod:`ecshell.fanout.routes`) says what carries it: machines
        routed to a fan-out transport are handed to it all at once.
        """
        machines = list(machines)
        if total_timeout is None:
            total_timeout = self.settings.total_timeout
        groups = self._routes(machines, command, transport)
        direct = groups.pop(DIRECT, [])
        cancel = threading.Event()
        fanned = {}
        for name, members in groups.items():
            run = FanoutRun(name, command, self.settings, cancel, on_output, on_result)
            fanned[self._start_fanout(self.fanouts[name], members, command, run)] = (members, run)
        futures = {}
        if direct:
            workers = self._workers()
            self._start_workers(workers, len(direct))
            # The first `fanout` machines start here, where that needs no waiting (a command to
            # a live executor is one frame): one tight loop, not one worker wake-up per frame.
            attempts = [Attempt(machine, self, cancel, on_output) for machine in direct[:self.settings.fanout]]
            for attempt in attempts:
                command.start_early(attempt)
            for index, machine in enumerate(direct):
                attempt = attempts[index] if index < len(attempts) else None
                future = workers.submit(self.run_one, machine, command, cancel, on_output, attempt)
                futures[future] = machine
                if on_result is not None:
                    future.add_done_callback(lambda f: f.cancelled() or on_result(f.result()))
        results = {}
        pending = set(futures) | set(fanned)
        deadline = time.monotonic() + total_timeout if total_timeout else None
        stop = None
        try:
            while pending:
                wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
                done, pending = concurrent.futures.wait(pending, timeout=wait)
                for future in done:
                    if future in fanned:
                        results.update(fanned[future][1].results)
                    else:
                        results[futures[future].name] = future.result()
                if pending and deadline is not None and time.monotonic() >= deadline:
                    stop = ErrorKind.TIMEOUT
                    break
        except KeyboardInterrupt:
            stop = ErrorKind.INTERRUPTED
        if stop is not None:
            direct_pending = {f for f in pending if f not in fanned}
            results.update(self._cancel(futures, direct_pending, cancel, stop, command, total_timeout))
            results.update(self._stop_fanouts({f: fanned[f] for f in pending if f in fanned}, stop,
                                              command, total_timeout))
        ordered = [results[m.name] for m in machines]
        return ResultSet(ordered, command, interrupted=stop is ErrorKind.INTERRUPTED)

    def _stop_fanouts(self, fanned, kind, command, total_timeout):
        """Results of the fan-out transports still running when the broadcast stopped.

        They saw the cancel flag (set by :meth:`_cancel`); each gets
        :data:`CANCEL_GRACE` to cancel its commands and report, and a machine
        it did not report is marked ``kind`` (``interrupted`` or ``timeout``).
        """
        grace_until = time.monotonic() + CANCEL_GRACE
        try:
            concurrent.futures.wait(set(fanned), timeout=max(0.0, grace_until - time.monotonic()))
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting
        results = {}
        for members, run in fanned.values():
            for machine in members:
                result = run.results.get(machine.name)
                if result is None:
                    message = "interrupted" if kind is ErrorKind.INTERRUPTED else "no result yet"
                    if kind is ErrorKind.TIMEOUT:
                        message = f"the broadcast's total timeout ({total_timeout:g}s) passed; {message}"
                    result = run.finish(machine, error=kind, message=message)
                elif kind is ErrorKind.TIMEOUT and result.error is ErrorKind.INTERRUPTED:
                    result.error = ErrorKind.TIMEOUT
                    result.message = f"the broadcast's total timeout ({total_timeout:g}s) passed; {result.message}"
                results[machine.name] = result
        return results

    def _cancel(self, futures, pending, cancel, kind, command, total_timeout):
        """Stop the pending hosts: queued ones never start, running ones kill their command."""
        cancel.set()
        for future in pending:
            future.cancel()
        late = {f for f in pending if not f.cancelled()}
        grace_until = time.monotonic() + CANCEL_GRACE
        while late and time.monotonic() < grace_until:
            try:
                done, late = concurrent.futures.wait(late, timeout=grace_until - time.monotonic())
            except KeyboardInterrupt:
                break  # a second Ctrl-C: stop waiting for the kills
        results = {}
        for future in pending:
            machine = futures[future]
            if future.done() and not future.cancelled():
                result = future.result()
                if kind is ErrorKind.TIMEOUT and result.error is ErrorKind.INTERRUPTED:
                    result.error = ErrorKind.TIMEOUT
                    result.message = f"the broadcast's total timeout ({total_timeout:g}s) passed; {result.message}"
                results[machine.name] = result
                continue
            # A worker still running is connecting (a command would have seen the cancel
            # flag): it ends by itself within its connect timeout, and its result is dropped.
            message = "not started" if future.cancelled() else "did not stop in time; abandoned"
            if kind is ErrorKind.TIMEOUT:
                message = f"the broadcast's total timeout ({total_timeout:g}s) passed; {message}"
            results[machine.name] = Result(machine, command, OutputBuffer(0), error=kind, message=message)
        return results

    def close(self):
        if self._pool is not None:
            self._pool.close_all()
        with self._lock:
            if self._threads is not None:
                self._threads.shutdown(wait=False, cancel_futures=True)
                self._threads = None
