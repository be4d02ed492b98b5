"""ssh_config files as text: their lines, the files an Include pulls in, and a small reader.

OpenSSH's own ``ssh -G`` decides what a host's options are (see
:mod:`.options`); this module only reads the files around it:

- :func:`closure`: every file ``ssh`` would read for a config (the file,
  then each Include, globbed, relative to ``~/.ssh`` in a user config or
  ``/etc/ssh`` in the system one), with a stamp per file, so that a cached
  answer is dropped when any of them changes, appears or goes away;
- :func:`rebase_includes`: a copy of a config whose relative and ``~``
  Include paths are made absolute under ``$HOME``, for when ``$HOME`` is
  not the home ``ssh`` reads from the password database;
- :func:`read_without_ssh`: Host blocks and OpenSSH's defaults, for a
  machine without ``ssh``; it refuses Include and Match, which only
  ``ssh`` can honour.

>>> split_line('IdentityFile "~/.ssh/my key"  # a comment')
['IdentityFile', '~/.ssh/my key']
>>> split_line("Port=2222")
['Port', '2222']
"""

from __future__ import annotations

import atexit
import fnmatch
import glob
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Optional

from .identities import OPENSSH_DEFAULT_IDENTITIES
from .tokens import expand_tilde

#: Where ssh reads the system-wide config (only when no ``-F`` file is given).
SYSTEM_CONFIG = "/etc/ssh/ssh_config"
SYSTEM_DIR = "/etc/ssh"
#: ssh's READCONF_MAX_DEPTH: Includes nested deeper are an error.
MAX_DEPTH = 16

USER, SYSTEM = "user", "system"


class ConfigFileError(ValueError):
    """A config file that cannot be read, or that needs OpenSSH's ``ssh`` to be read."""


class Root(NamedTuple):
    """A config file ssh reads first-hand: ``kind`` says where its relative Includes point."""

    path: str
    kind: str  # USER or SYSTEM


#: (st_mtime_ns, st_size, st_ino) of a file; None when it does not exist.
Stamp = Optional[tuple[int, int, int]]


def stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


# -- lines ----------------------------------------------------------------------------


def _words(line: str) -> list[str]:
    """ssh's argv_split: blank-separated words, quotes and backslashes; ``#`` at a word's start ends the line."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t\r\n":
            i += 1
        if i >= n or line[i] == "#":
            break
        word: list[str] = []
        while i < n and line[i] not in " \t\r\n":
            c = line[i]
            if c == "\\" and i + 1 < n and line[i + 1] in "\\\"' \t":
                word.append(line[i + 1])
                i += 2
            elif c in "\"'":
                end = line.find(c, i + 1)
                if end < 0:
                    raise ConfigFileError(f"unterminated quote in {line.strip()!r}")
                word.append(line[i + 1:end])
                i = end + 1
            else:
                word.append(c)
                i += 1
        words.append("".join(word))
    return words


def split_line(line: str) -> list[str]:
    """``[keyword, arg, ...]`` of one config line (``Keyword=value`` too); ``[]`` for blanks and comments."""
    words = _words(line)
    if not words:
        return []
    keyword, equals, value = words[0].partition("=")
    rest = words[1:]
    if equals:
        rest = ([value] if value else []) + rest
    elif rest and rest[0].startswith("="):
        rest = ([rest[0][1:]] if rest[0] != "=" else []) + rest[1:]
    return [keyword] + rest


def _lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read().splitlines()
    except OSError as exc:
        raise ConfigFileError(f"cannot read {path}: {exc.strerror or exc}") from None


# -- Include --------------------------------------------------------------------------


def _include_pattern(argument: str, kind: str, home: str) -> str:
    """Where an Include argument points: ``~`` expanded, relative paths under ~/.ssh or /etc/ssh."""
    path = expand_tilde(argument, home) if argument.startswith("~") and kind == USER else argument
    if os.path.isabs(path):
        return path
    return os.path.join(os.path.join(home, ".ssh") if kind == USER else SYSTEM_DIR, path)


def _matches(pattern: str) -> list[str]:
    """The files a glob pattern names, in ssh's (glob(3)'s) lexical order."""
    return sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern] if os.path.exists(pattern) else []


_parsed: dict[str, tuple[Stamp, list[tuple[int, list[str]]]]] = {}
_parsed_lock = threading.Lock()


def include_lines(path: str) -> list[tuple[int, list[str]]]:
    """``[(line index, [arguments])]`` of the file's Include lines, cached by the file's stamp."""
    current = stamp(path)
    with _parsed_lock:
        cached = _parsed.get(path)
    if cached is not None and cached[0] == current:
        return cached[1]
    found = []
    for index, line in enumerate(_lines(path)):
        try:
            words = split_line(line)
        except ConfigFileError:
            continue  # ssh -G reports it, with the line number
        if words and words[0].lower() == "include":
            found.append((index, words[1:]))
    with _parsed_lock:
        _parsed[path] = (current, found)
    return found


class Closure(NamedTuple):
    """Every file ssh reads for a config, in order, each with its stamp."""

    files: tuple[tuple[str, Stamp], ...]
    #: Some Include is relative or starts with ``~`` (it points under the home directory).
    home_relative: bool


def closure(roots: Sequence[Root], home: str) -> Closure:
    """The files ``roots`` pull in through Include (every Include, active or not: a superset is safe)."""
    files: list[tuple[str, Stamp]] = []
    home_relative = False

    def visit(path: str, kind: str, depth: int) -> None:
        nonlocal home_relative
        current = stamp(path)
        files.append((path, current))
        if current is None or depth > MAX_DEPTH or not os.path.isfile(path):
            return
        for _index, arguments in include_lines(path):
            for argument in arguments:
                if kind == USER and not os.path.isabs(argument):
                    home_relative = True
                for match in _matches(_include_pattern(argument, kind, home)):
                    visit(match, kind, depth + 1)

    for root in roots:
        visit(root.path, root.kind, 0)
    return Closure(tuple(files), home_relative)


# -- a copy with Include paths under $HOME ---------------------------------------------


_rebased_dirs: list[str] = []


@atexit.register
def _remove_rebased() -> None:
    for directory in _rebased_dirs:
        shutil.rmtree(directory, ignore_errors=True)


def _quote(path: str) -> str:
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rebase_includes(root: str, home: str) -> tuple[str, dict[str, str]]:
    """A private copy of the config ``root`` and of everything it includes, Include paths made absolute.

    ``ssh`` resolves ``~`` and relative Include paths against the home
    directory in the password database; ecshell's home is ``$HOME``. When
    the two differ, ssh is handed this copy, in which they point where
    ``$HOME`` says. Every other line is kept as it is, at the same line
    number. Returns (the copy of ``root``, {copy: original}) so that ssh's
    messages can name the operator's files.
    """
    directory = tempfile.mkdtemp(prefix="ecshell-ssh-config-")
    _rebased_dirs.append(directory)
    originals: dict[str, str] = {}

    def copy(path: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise ConfigFileError(f"{path}: Include nested more than {MAX_DEPTH} deep (a loop?)")
        lines = _lines(path)
        for index, arguments in include_lines(path):
            targets = [copy(match, depth + 1)
                       for argument in arguments for match in _matches(_include_pattern(argument, USER, home))]
            lines[index] = ("Include " + " ".join(_quote(t) for t in targets)) if targets \
                else "# Include (nothing matched)"
        target = os.path.join(directory, f"{len(originals):03d}-{os.path.basename(path)}")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write("\n".join(lines) + "\n")
        originals[target] = path
        return target

    return copy(root, 0), originals


def forget_rebased(paths: Iterable[str]) -> None:
    """Remove copies made by :func:`rebase_includes` that are no longer used."""
    for path in paths:
        directory = os.path.dirname(path)
        if directory in _rebased_dirs:
            _rebased_dirs.remove(directory)
            shutil.rmtree(directory, ignore_errors=True)


# -- without ssh ------------------------------------------------------------------------


#: Options that collect every value given; every other option keeps the first one.
_MULTIPLE = {"identityfile", "certificatefile", "localforward", "remoteforward", "dynamicforward", "sendenv",
             "setenv"}


def _host_matches(patterns: list[str], name: str) -> bool:
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if fnmatch.fnmatchcase(name, (pattern[1:] if negated else pattern).lower()):
            if negated:
                return False
            matched = True
    return matched


def read_without_ssh(alias: str, roots: Sequence[Root], user: str, port: Optional[int],
                     local_user: str) -> dict[str, list[str]]:
    """A host's options from ``roots`` by Host blocks alone, as ``ssh -G`` would print them.

    Values keep their tokens, as ``ssh -G`` leaves them (the caller expands
    them). A file with Include or Match is refused: what they select only
    OpenSSH's ``ssh`` can tell.
    """
    name = alias.lower()
    found: dict[str, list[str]] = {}
    for root in roots:
        if not os.path.exists(root.path):
            continue
        active = True
        for number, line in enumerate(_lines(root.path), 1):
            words = split_line(line)
            if not words:
                continue
            keyword = words[0].lower()
            if keyword in ("include", "match"):
                raise ConfigFileError(
                    f"{root.path} line {number}: {words[0]} needs OpenSSH's ssh to be read (ecshell asks "
                    f"`ssh -G`, and ssh is not on PATH): install the OpenSSH client, or remove the {words[0]}")
            if keyword == "host":
                active = _host_matches(words[1:], name)
                continue
            if not active or len(words) < 2:
                continue
            value = " ".join(words[1:])
            if keyword in _MULTIPLE:
                found.setdefault(keyword, []).append(value)
            elif keyword in ("proxyjump", "proxycommand"):
                if "proxyjump" not in found and "proxycommand" not in found:  # the first of the two wins
                    found[keyword] = [value]
            elif keyword not in found:
                found[keyword] = [value]
    for keyword in ("proxyjump", "proxycommand"):
        if found.get(keyword, [""])[0].lower() == "none":
            del found[keyword]  # ssh -G prints nothing for none
    hostname = found.get("hostname", [alias])[0].replace("%h", name).replace("%%", "%")
    defaults = {
        "host": [alias], "user": [local_user], "port": ["22"],
        "identityfile": list(OPENSSH_DEFAULT_IDENTITIES), "identitiesonly": ["no"],
        "userknownhostsfile": ["~/.ssh/known_hosts ~/.ssh/known_hosts2"],
        "globalknownhostsfile": ["/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"],
        "stricthostkeychecking": ["ask"], "hashknownhosts": ["no"], "connecttimeout": ["none"],
        "serveraliveinterval": ["0"], "serveralivecountmax": ["3"],
    }
    for keyword, values in defaults.items():
        found.setdefault(keyword, values)
    found["hostname"] = [hostname]
    if user:
        found["user"] = [user]
    if port:
        found["port"] = [str(port)]
    return found
