"""The broadcast engine: one Command on many machines through a bounded worker pool.

Each machine is one task on a thread pool of ``fanout`` workers (the work is
network- and remote-bound, so threads are the right tool); a machine's
clock starts when a worker takes it. Ctrl-C (or the total timeout) sets a
cancel flag that every worker looks at; running commands are killed on
their machines, queued machines never start, and the ResultSet returned
holds everything that had arrived, the rest marked ``interrupted``.
"""

import concurrent.futures
import threading
import time

from .errors import ConnectError
from .output import OutputBuffer
from .results import ErrorKind, Result, ResultSet

#: Seconds after a Ctrl-C that workers get to kill their commands and report.
CANCEL_GRACE = 3.0


class Engine:
    """Holds the connection pool and the workers; runs broadcasts."""

    def __init__(self, settings):
        self.settings = settings
        self._pool = None  # made on first use: it imports paramiko, which costs ~0.1 s
        self._executor = None
        self._executor_size = 0
        self._lock = threading.Lock()

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
            if self._executor is None or self._executor_size != self.settings.fanout:
                if self._executor is not None:
                    self._executor.shutdown(wait=False)
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.settings.fanout, thread_name_prefix="ecshell-worker")
                self._executor_size = self.settings.fanout
            return self._executor

    def run_one(self, machine, command, cancel, on_output=None, attempt=None):
        """Run ``command`` on ``machine`` in this thread; never raises for the host's failure."""
        if attempt is None:
            from .commands import Attempt

            attempt = Attempt(machine, self, cancel, on_output)
        try:
            return command.execute(attempt)
        except ConnectError as exc:
            return attempt.result(command, error=exc.kind, message=str(exc), detail=exc.detail)

    def broadcast(self, machines, command, on_output=None, on_result=None, total_timeout=None):
        """A ResultSet of ``command`` run on every machine, in machine order."""
        machines = list(machines)
        if total_timeout is None:
            total_timeout = self.settings.total_timeout
        cancel = threading.Event()
        executor = self._workers()
        # The first `fanout` machines start here, where that needs no waiting (a command to
        # a live executor is one frame): one tight loop, not one worker wake-up per frame.
        from .commands import Attempt

        attempts = [Attempt(machine, self, cancel, on_output) for machine in machines[:self.settings.fanout]]
        for attempt in attempts:
            command.launch(attempt)
        futures = {}
        for index, machine in enumerate(machines):
            attempt = attempts[index] if index < len(attempts) else None
            future = executor.submit(self.run_one, machine, command, cancel, on_output, attempt)
            futures[future] = machine
            if on_result is not None:
                future.add_done_callback(lambda f: f.cancelled() or on_result(f.result()))
        results = {}
        pending = set(futures)
        deadline = time.monotonic() + total_timeout if total_timeout else None
        stop = None
        try:
            while pending:
                wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
                done, pending = concurrent.futures.wait(pending, timeout=wait)
                for future in done:
                    results[futures[future].name] = future.result()
                if pending and deadline is not None and time.monotonic() >= deadline:
                    stop = ErrorKind.TIMEOUT
                    break
        except KeyboardInterrupt:
            stop = ErrorKind.INTERRUPTED
        if stop is not None:
            results.update(self._cancel(futures, pending, cancel, stop, command, total_timeout))
        ordered = [results[m.name] for m in machines]
        return ResultSet(ordered, command, interrupted=stop is ErrorKind.INTERRUPTED)

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
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
