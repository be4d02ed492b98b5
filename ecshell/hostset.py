"""Host names: what a machine may be called, fold a list into ``web-[0-2,5]``, match targets.

>>> fold(["web-0", "web-1", "web-2", "web-5", "db-0"])
'db-0,web-[0-2,5]'
>>> match(["web-0", "web-1", "web-10", "db-0"], "web-[0-1]")
['web-0', 'web-1']
>>> match(["web-0", "web-1", "web-10", "db-0"], "web-1*,db-0")
['web-1', 'web-10', 'db-0']
>>> match(["web-5"], "web-[0-999999999999]")        # tested name by name, never expanded
['web-5']
>>> name_problem("role=db")
"'role=db' has '=': a machine name is letters, digits, '-', '_' and '.', starting with a letter or digit"

Range syntax is ClusterShell's NodeSet (``web-[0-3,7]``, ``web-[00-15/5]``,
the operators ``,`` ``!`` ``&`` ``^`` applied left to right), without its
group resolver; ``*`` and ``?`` are globs. A target is matched against each
known name: ranges are parsed, never expanded, so ``web-[0-9999999]`` costs
what ``web-[0-9]`` does. Only :func:`expand` lists what a pattern stands
for, and it refuses past :data:`MAX_EXPANSION` elements.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetParseError

from .errors import ArgumentError, SelectionError

# -- machine names -------------------------------------------------------------

#: Longest machine name accepted (also keeps ``<name>/<file>`` paths short).
MAX_NAME_LENGTH = 64
#: The characters of a machine name: it must start with a letter or digit. Such a name is
#: selectable by every target form, one safe path component, and plain text in any config.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: Target words with a meaning of their own, so never machine names.
RESERVED_NAMES = ("all", "ok", "failed")
_NAME_RULE = "a machine name is letters, digits, '-', '_' and '.', starting with a letter or digit"


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a machine name, or None when it can."""
    if not isinstance(name, str) or not name:
        return f"{name!r} is not a name: {_NAME_RULE}"
    if len(name) > MAX_NAME_LENGTH:
        return f"{name[:20]!r}... is {len(name)} characters long: at most {MAX_NAME_LENGTH}"
    if not NAME_PATTERN.fullmatch(name):
        good = NAME_PATTERN.match(name)
        if good is None:
            return f"{name!r} starts with {name[0]!r}: {_NAME_RULE}"
        return f"{name!r} has {name[good.end()]!r}: {_NAME_RULE}"
    if name in RESERVED_NAMES:
        return f"{name!r} is a target word ({', '.join(RESERVED_NAMES)}), so it cannot name a machine"
    return None


def valid_name(name: object) -> bool:
    """Whether ``name`` is an allowed machine name (see :data:`NAME_PATTERN`)."""
    return name_problem(name) is None


def check_name(name: str) -> str:
    """``name`` if it is an allowed machine name; else :class:`ArgumentError` saying why."""
    problem = name_problem(name)
    if problem is not None:
        raise ArgumentError(f"bad machine name: {problem}; e.g. 'web-0'")
    return name


def check_prefix(prefix: str, count: int = 1) -> str:
    """``prefix`` if ``prefix-0`` ... ``prefix-<count - 1>`` are allowed names; else ArgumentError."""
    problem = name_problem(f"{prefix}-{max(count, 1) - 1}" if isinstance(prefix, str) else prefix)
    if problem is not None:
        raise ArgumentError(f"cannot launch machines named {prefix!r}-<n>: {problem}; e.g. name='web'")
    return prefix


# -- folding -------------------------------------------------------------------


def fold(names: Iterable[str]) -> str:
    """The compact form of ``names``: ``web-[0-2,5]``."""
    names = list(names)
    if not names:
        return ""
    try:
        return str(NodeSet.fromlist(names, resolver=RESOLVER_NOGROUP))
    except NodeSetParseError:
        return ",".join(names)


# -- patterns: parsed, matched name by name ---------------------------------------

#: Most names :func:`expand` lists; a larger pattern is refused (match() has no limit).
MAX_EXPANSION = 10_000

_OPERATORS = ",!&^"
_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+)(?:/([0-9]+))?)?")


@dataclass(frozen=True)
class _Span:
    """``start-end/step`` of a range, numbers written ``pad`` digits wide (0: as they come)."""

    start: int
    end: int
    step: int
    pad: int

    def __contains__(self, digits: object) -> bool:
        assert isinstance(digits, str)
        n = int(digits)
        return (self.start <= n <= self.end and (n - self.start) % self.step == 0
                and str(n).zfill(self.pad) == digits)

    def size(self) -> int:
        return (self.end - self.start) // self.step + 1

    def __iter__(self) -> Iterator[str]:
        return (str(n).zfill(self.pad) for n in range(self.start, self.end + 1, self.step))


#: A parsed term is a list of parts: literal text, "*", "?", or a range (a tuple of spans).
_Part = str | tuple[_Span, ...]


def _bad(pattern: str, fragment: str) -> SelectionError:
    return SelectionError(f"bad range in target {pattern!r} near {fragment!r}: "
                          "write ranges like 'web-[0-3]' or 'web-[0-3,7]'")


def _range(pattern: str, text: str) -> tuple[_Span, ...]:
    spans = []
    for item in text.split(","):
        found = _ITEM.fullmatch(item.strip())
        if not found:
            raise _bad(pattern, f"[{text}]")
        first, last, step = found.group(1), found.group(2) or found.group(1), int(found.group(3) or 1)
        pad = len(first) if len(first) > 1 and first[0] == "0" else 0
        padded_end = len(last) > 1 and last[0] == "0"
        if int(last) < int(first) or step < 1 or ((pad or padded_end) and len(first) != len(last)):
            raise _bad(pattern, f"[{text}]")
        spans.append(_Span(int(first), int(last), step, pad))
    return tuple(spans)


def _term(pattern: str, text: str) -> list[_Part]:
    parts: list[_Part] = []
    literal = ""
    position = 0
    while position < len(text):
        char = text[position]
        if char == "[":
            close = text.find("]", position)
            if close < 0 or "[" in text[position + 1:close]:
                raise _bad(pattern, text[position:])
            if literal:
                parts.append(literal)
                literal = ""
            parts.append(_range(pattern, text[position + 1:close]))
            position = close + 1
            continue
        if char == "]":
            raise _bad(pattern, text[:position + 1])
        if char in "*?":
            if literal:
                parts.append(literal)
                literal = ""
            parts.append(char)
        else:
            literal += char
        position += 1
    if literal:
        parts.append(literal)
    return parts


def _split(pattern: str) -> list[tuple[str, str]]:
    """``[(operator, term text)]``, the first with operator ``,``; commas inside ranges stay."""
    pieces, depth, start, operator = [], 0, 0, ","
    for position, char in enumerate(pattern):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char in _OPERATORS and depth == 0:
            pieces.append((operator, pattern[start:position].strip()))
            operator, start = char, position + 1
    pieces.append((operator, pattern[start:].strip()))
    return pieces


def _parse(pattern: str) -> list[tuple[str, str, list[_Part]]]:
    """``[(operator, term text, parts)]`` of a target pattern; SelectionError if it does not parse."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise SelectionError("empty target: give a name, a glob like 'web-*' or a range like 'web-[0-3]'")
    terms = []
    for operator, text in _split(pattern.strip()):
        if not text:
            if operator == ",":
                continue
            raise _bad(pattern, operator)
        terms.append((operator, text, _term(pattern, text)))
    if not terms:
        raise SelectionError("empty target: give a name, a glob like 'web-*' or a range like 'web-[0-3]'")
    return terms


def _matches(parts: list[_Part], name: str) -> bool:
    """Whether ``name`` is one of the names ``parts`` stands for (globs and ranges, no expansion)."""
    seen: dict[tuple[int, int], bool] = {}

    def at(index: int, position: int) -> bool:
        key = (index, position)
        if key in seen:
            return seen[key]
        if index == len(parts):
            found = position == len(name)
        else:
            part = parts[index]
            if part == "*":
                found = any(at(index + 1, p) for p in range(position, len(name) + 1))
            elif part == "?":
                found = position < len(name) and at(index + 1, position + 1)
            elif isinstance(part, str):
                found = name.startswith(part, position) and at(index + 1, position + len(part))
            else:
                end = position
                while end < len(name) and name[end] in "0123456789":
                    end += 1
                found = any(any(name[position:stop] in span for span in part) and at(index + 1, stop)
                            for stop in range(position + 1, end + 1))
        seen[key] = found
        return found

    return at(0, 0)


def _apply(operator: str, chosen: set[str], hits: Iterable[str]) -> set[str]:
    if operator == ",":
        return chosen | set(hits)
    if operator == "!":
        return chosen - set(hits)
    if operator == "&":
        return chosen & set(hits)
    return chosen ^ set(hits)


def expand(pattern: str) -> list[str]:
    """The patterns that ``web-[0-2]*,db-0`` stands for: one per range element.

    Refuses (SelectionError) a pattern that stands for more than :data:`MAX_EXPANSION`.
    """
    chosen: list[str] = []
    for operator, _, parts in _parse(pattern):
        size = 1
        for part in parts:
            if isinstance(part, tuple):
                size *= sum(span.size() for span in part)
        if size > MAX_EXPANSION:
            raise SelectionError(f"target {pattern!r} stands for {size} names, more than ecshell lists "
                                 f"({MAX_EXPANSION}); select with it instead, e.g. cluster[{pattern!r}]")
        words = [""]
        for part in parts:
            if isinstance(part, tuple):
                words = [w + n for w in words for span in part for n in span]
            else:
                words = [w + part for w in words]
        kept = _apply(operator, set(chosen), words)
        chosen = [w for w in dict.fromkeys(chosen + words) if w in kept]
    return chosen


def match(names: Iterable[str], pattern: str) -> list[str]:
    """Names (in their given order) matched by ``pattern``.

    A plain name that does not exist raises; a glob or a range selects the
    machines that exist among those it covers, and raises only if none do.
    """
    names = list(names)
    known = set(names)
    terms = _parse(pattern)
    ranged = any(isinstance(part, tuple) for _, _, parts in terms for part in parts)
    wanted: set[str] = set()
    for operator, text, parts in terms:
        plain = all(isinstance(part, str) and part not in ("*", "?") for part in parts)
        if plain:
            if operator == "," and text not in known and not ranged:
                raise SelectionError(f"no machine named {text!r}; machines are: {fold(names) or '(none)'}")
            hits = [text] if text in known else []
        else:
            hits = [n for n in names if _matches(parts, n)]
        wanted = _apply(operator, wanted, hits)
    if not wanted:
        raise SelectionError(
            f"target {pattern!r} selects no machine; machines are: {fold(names) or '(none)'}"
        )
    return [n for n in names if n in wanted]


def natural_key(name: str) -> list[int | str]:
    """Sort key that puts web-2 before web-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
