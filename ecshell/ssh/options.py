"""A host's effective OpenSSH options, as OpenSSH's own ``ssh -G`` prints them.

>>> opts = lookup("web", "~/.ssh/config")                     # doctest: +SKIP
>>> opts.get("hostname"), opts.get("port"), opts.all("identityfile")   # doctest: +SKIP
('10.0.0.5', '2222', ['~/.ssh/id_ed25519'])

``ssh -G [-F file] [-l user] [-p port] -- name`` is the reference: Include,
Match (every criterion), Host order, tokens in HostName, /etc/ssh/ssh_config
and the defaults are OpenSSH's own. ``-F`` is given unless the file is
ssh's own per-user config (then ``ssh`` reads it and /etc/ssh/ssh_config, as
``ssh name`` does); ``-l``/``-p`` when the target names them
(``bob@web``), so that ``Match user`` sees what ssh would see.

Answers are cached per (name, user, port, file, ``$HOME``) and dropped as
soon as any file the config reads (every Include, globbed) changes,
appears or goes away; a warm shell pays nothing, a cold broadcast runs its
``ssh -G`` calls side by side (:func:`lookup_many`). What ``ssh`` refuses
(a syntax error, a bad host name) is a :class:`ConfigError` carrying
ssh's own message.

Without an ``ssh`` binary a small reader takes over (Host blocks and the
defaults); it refuses, with a message saying so, a file that uses Include or
Match.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Optional, Union

from .configfiles import (SYSTEM, SYSTEM_CONFIG, USER, Closure, ConfigFileError, Root, closure,
                          forget_rebased, read_without_ssh, rebase_includes)
from .tokens import TokenError, connection_tokens, expand_tokens, home_directory, local_user

#: Seconds one ``ssh -G`` may take (a ``Match exec`` command can hang).
SSH_G_TIMEOUT = 10.0
#: ``ssh -G`` processes at once in :func:`lookup_many`.
CONCURRENCY = 32


class ConfigError(ValueError):
    """ssh_config says something ssh refuses, or that cannot be read without ssh."""


class Options:
    """One host's effective options: lowercase keywords, values as ``ssh -G`` prints them."""

    def __init__(self, values: dict[str, list[str]], source: str) -> None:
        self.values = values
        #: Where they came from: ``"ssh -G"`` or ``"without ssh"``.
        self.source = source

    def get(self, keyword: str, default: Optional[str] = None) -> Optional[str]:
        """The (first) value of ``keyword``, or ``default`` when ssh printed none."""
        found = self.values.get(keyword)
        return found[0] if found else default

    def all(self, keyword: str) -> list[str]:
        """Every value of a keyword ssh prints once per value (IdentityFile, CertificateFile)."""
        return list(self.values.get(keyword, ()))

    def __repr__(self) -> str:
        return f"<Options {self.get('host')} {self.get('user')}@{self.get('hostname')}:{self.get('port')}>"


class Query(NamedTuple):
    """What ``ssh [-l user] [-p port] name`` was asked, through which config file ("" for none)."""

    name: str
    user: Optional[str]
    port: Optional[int]
    config: str


Answer = Union[Options, ConfigError]


# -- which files ------------------------------------------------------------------------


def _password_home() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return home_directory()


class _Plan(NamedTuple):
    """How ssh is run for a config file: its ``-F`` argument, and the files it reads."""

    argument: Optional[str]  # the -F argument; None for ssh's own default files
    roots: tuple[Root, ...]
    closure: Closure
    home: str


def _plan(config: str) -> _Plan:
    home = home_directory()
    path = os.path.abspath(os.path.expanduser(config)) if config else ""
    if path and path == os.path.join(_password_home(), ".ssh", "config") and home == _password_home():
        roots: tuple[Root, ...] = (Root(path, USER), Root(SYSTEM_CONFIG, SYSTEM))
        return _Plan(None, roots, closure(roots, home), home)
    if not path or not os.path.exists(path):
        # No file: ssh's defaults alone (a missing file reads as empty, as ~/.ssh/config does for ssh).
        return _Plan("none", (), Closure((), False), home)
    roots = (Root(path, USER),)
    return _Plan(path, roots, closure(roots, home), home)


# -- the cache ----------------------------------------------------------------------------


class _Cached(NamedTuple):
    files: tuple
    answer: Answer


_cache: dict[tuple, _Cached] = {}
_guard = threading.Lock()
_in_flight: dict[tuple, threading.Lock] = {}
#: {(config file, $HOME): (closure files, copy of the config for ssh, {copy: original})}
_rebased: dict[tuple[str, str], tuple[tuple, str, dict[str, str]]] = {}


def forget() -> None:
    """Drop every cached answer (the next lookups ask ssh again)."""
    with _guard:
        _cache.clear()
        rebased = list(_rebased.values())
        _rebased.clear()
    for _files, copy, originals in rebased:
        forget_rebased(originals)


def _key(query: Query, plan: _Plan) -> tuple:
    return (query.name, query.user, query.port, plan.argument, plan.home)


def _cached(query: Query, plan: _Plan) -> Optional[Answer]:
    with _guard:
        hit = _cache.get(_key(query, plan))
        if hit is None and query.port is not None:
            # ``-p P`` changes nothing but the port (no Match criterion reads it): an answer
            # without -p that says port P is the same answer.
            plain = _cache.get(_key(query._replace(port=None), plan))
            if plain is not None and isinstance(plain.answer, Options) \
                    and plain.answer.get("port") == str(query.port) and plain.files == plan.closure.files:
                hit = plain
    if hit is not None and hit.files == plan.closure.files:
        return hit.answer
    return None


def _store(query: Query, plan: _Plan, answer: Answer) -> None:
    with _guard:
        _cache[_key(query, plan)] = _Cached(plan.closure.files, answer)


# -- asking ssh ----------------------------------------------------------------------------


def ssh_binary() -> Optional[str]:
    """OpenSSH's ``ssh`` on PATH, or None."""
    return shutil.which("ssh")


def _config_argument(plan: _Plan) -> tuple[Optional[str], dict[str, str]]:
    """The ``-F`` argument ssh gets, and {file ssh is shown: the operator's file} for its messages."""
    if plan.argument in (None, "none"):
        return plan.argument, {}
    assert plan.argument is not None
    if plan.home == _password_home() or not plan.closure.home_relative:
        return plan.argument, {}
    # $HOME is not the home ssh knows: hand it a copy whose Include paths point under $HOME.
    slot = (plan.argument, plan.home)
    with _guard:
        made = _rebased.get(slot)
    if made is not None and made[0] == plan.closure.files:
        return made[1], made[2]
    try:
        copy, originals = rebase_includes(plan.argument, plan.home)
    except ConfigFileError as exc:
        raise ConfigError(str(exc)) from None
    with _guard:
        old = _rebased.get(slot)
        _rebased[slot] = (plan.closure.files, copy, originals)
    if old is not None:
        forget_rebased(old[2])
    return copy, originals


def _argv(ssh: str, query: Query, config: Optional[str]) -> list[str]:
    argv = [ssh, "-G"]
    if config is not None:
        argv += ["-F", config]
    if query.user:
        argv += ["-l", query.user]
    if query.port:
        argv += ["-p", str(query.port)]
    return argv + ["--", query.name]


def _parse(output: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in output.splitlines():
        keyword, _, value = line.partition(" ")
        if keyword:
            values.setdefault(keyword.lower(), []).append(value)
    return values


def _message(query: Query, plan: _Plan, stderr: str, originals: dict[str, str]) -> str:
    for copy, original in originals.items():
        stderr = stderr.replace(copy, original)
    lines = [line for line in stderr.splitlines()
             if line.strip() and not line.startswith("Pseudo-terminal will not be allocated")]
    said = "; ".join(lines[-3:]) or "nothing"
    command = shlex.join(_argv("ssh", query, plan.argument))
    return f"ssh says: {said} (as `{command}` shows)"


def _rebase_home(values: dict[str, list[str]], plan: _Plan) -> None:
    """ssh expanded ``~`` and ``%d`` from the password database; ecshell's home is ``$HOME``."""
    real = _password_home().rstrip("/")
    if plan.home.rstrip("/") == real:
        return
    for keyword in ("userknownhostsfile", "globalknownhostsfile", "identityagent"):
        if keyword in values:
            values[keyword] = [" ".join(plan.home.rstrip("/") + p[len(real):] if p == real or p.startswith(real + "/")
                                        else p for p in value.split(" "))
                               for value in values[keyword]]


class _Run(NamedTuple):
    query: Query
    plan: _Plan
    process: Optional[subprocess.Popen]
    originals: dict[str, str]
    failed: Optional[ConfigError]


def _start(ssh: str, query: Query, plan: _Plan) -> _Run:
    try:
        config, originals = _config_argument(plan)
        process = subprocess.Popen(_argv(ssh, query, config), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, errors="replace")
    except (ConfigError, OSError) as exc:
        return _Run(query, plan, None, {}, ConfigError(f"cannot ask ssh about {query.name!r}: {exc}"))
    return _Run(query, plan, process, originals, None)


def _finish(run: _Run, until: float) -> Answer:
    if run.failed is not None:
        return run.failed
    assert run.process is not None
    try:
        out, err = run.process.communicate(timeout=max(0.1, until - time.monotonic()))
    except subprocess.TimeoutExpired:
        run.process.kill()
        run.process.communicate()
        return ConfigError(f"`ssh -G {run.query.name}` did not answer within {SSH_G_TIMEOUT:g}s "
                           "(a Match exec command that hangs?)")
    if run.process.returncode != 0:
        return ConfigError(_message(run.query, run.plan, err, run.originals))
    values = _parse(out)
    _rebase_home(values, run.plan)
    return Options(values, "ssh -G")


def _without_ssh(query: Query, plan: _Plan) -> Answer:
    try:
        values = read_without_ssh(query.name, plan.roots, query.user or "", query.port, local_user())
        hostname, port, user = values["hostname"][0], values["port"][0], values["user"][0]
        tokens = connection_tokens(hostname, port, user, query.name, (values.get("hostkeyalias") or [""])[0] or None)
        # What ssh -G prints expanded, expanded the same way.
        for keyword in ("userknownhostsfile", "globalknownhostsfile"):
            values[keyword] = [" ".join(expand_tokens(p, tokens) for p in values[keyword][0].split())]
        if "identityagent" in values and values["identityagent"][0] not in ("none", "SSH_AUTH_SOCK"):
            values["identityagent"] = [expand_tokens(values["identityagent"][0], tokens)]
    except (ConfigFileError, TokenError) as exc:
        return ConfigError(str(exc))
    return Options(values, "without ssh")


def _resolve(queries: Sequence[Query]) -> list[Answer]:
    """Answers for queries nobody has cached, ``ssh -G`` run side by side."""
    plans: dict[str, _Plan] = {}
    answers: list[Optional[Answer]] = [None] * len(queries)
    todo = []
    first: dict[Query, int] = {}
    for index, query in enumerate(queries):
        if query in first:
            continue  # asked twice: one ssh -G
        first[query] = index
        try:
            plan = plans.get(query.config) or plans.setdefault(query.config, _plan(query.config))
        except ConfigFileError as exc:
            answers[index] = ConfigError(str(exc))
            continue
        hit = _cached(query, plan)
        if hit is not None:
            answers[index] = hit
        else:
            todo.append((index, query, plan))
    ssh = ssh_binary() if todo else None
    for start in range(0, len(todo), CONCURRENCY):
        batch = todo[start:start + CONCURRENCY]
        if ssh is None:
            done = [_without_ssh(query, plan) for _index, query, plan in batch]
        else:
            runs = [_start(ssh, query, plan) for _index, query, plan in batch]
            until = time.monotonic() + SSH_G_TIMEOUT
            done = [_finish(run, until) for run in runs]
        for (index, query, plan), answer in zip(batch, done):
            _store(query, plan, answer)
            answers[index] = answer
    return [answers[first[query]] or ConfigError(f"no answer for {query.name!r}") for query in queries]


def _lock(key: tuple) -> threading.Lock:
    with _guard:
        return _in_flight.setdefault(key, threading.Lock())


def lookup(name: str, config: str, user: Optional[str] = None, port: Optional[int] = None) -> Options:
    """``name``'s options through ``config`` (a path; "" for none), as ``ssh [-l user] [-p port] name`` sees them.

    Raises ConfigError with ssh's own message when ssh refuses the config.
    """
    query = Query(name, user or None, int(port) if port else None, config or "")
    # Threads asking for the same name wait for one answer (fifty hosts behind one bastion).
    with _lock((query.name, query.user, query.port, query.config)):
        answer = _resolve([query])[0]
    if isinstance(answer, ConfigError):
        raise ConfigError(str(answer))  # a fresh one: the cached error may be raised in many threads at once
    return answer


def lookup_many(queries: Iterable[tuple[str, Optional[str], Optional[int]]], config: str) -> list[Answer]:
    """Options (or the ConfigError) for each ``(name, user, port)``, in order; ``ssh -G`` calls run side by side."""
    return _resolve([Query(name, user or None, int(port) if port else None, config or "")
                     for name, user, port in queries])
