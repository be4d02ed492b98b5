"""Commands built from values quote them (issue 15, item 8): the README's free-list example taught injection."""

import pathlib
import re
import shlex

import pytest

import ecshell
from ecshell import Shell, quote
from ecshell.errors import ArgumentError

ROOT = pathlib.Path(__file__).resolve().parent.parent


def hostile(canary):
    return f"alice; touch {canary} $(touch {canary}) `touch {canary}` 'q' \"d\" \\ *\nsecond line"


def test_words_reach_the_machine_as_data(machines, tmp_path):
    machine = machines(1)[0]
    canary = tmp_path / "ran"
    value = hostile(canary)
    assert machine.run(["printf", "%s", value]).output == value
    assert machine.run(f"printf %s {quote(value)} {quote(7)} {quote(tmp_path)}").output == f"{value}7{tmp_path}"
    web = machines(2, name="web")
    assert [r.output for r in web.run(["printf", "%s", value]).results()] == [value, value]
    assert not canary.exists()


def test_quote_takes_words_only():
    for bad in (None, True, b"bytes", ["a"], 1.5):
        with pytest.raises(ArgumentError):
            quote(bad)
    with pytest.raises(ArgumentError, match="at least one word"):
        Shell([])
    assert str(Shell(["useradd", "-m", "o'brien"])) == "useradd -m 'o'\"'\"'brien'"


def test_the_readme_free_list_example_quotes_the_user(tmp_path):
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"last=(lambda user: .*?\))\)\n", readme)
    assert found, "the free-list example in the README"
    last = eval(found.group(1), {name: getattr(ecshell, name) for name in ecshell.__all__})
    value = hostile(tmp_path / "ran")
    assert str(last(value)) == "useradd -m " + shlex.quote(value)


def _unquoted_values(text):
    """``{expr}`` fields of f-string commands (Shell(f"..."), .run(f"...")) that are not quoted or a number.

    Quoted: ``quote(...)``, ``shlex.quote(...)``, a name ending in ``_word`` (a shell word quoted where it
    was made) or ``script`` (shell text ecshell composed from quoted parts).
    """
    bad = []
    for call in re.finditer(r"(?:Shell|\.run)\(f(['\"])(.*?)(?<!\\)\1", text):
        for field in re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", call.group(2)):
            if not (field.startswith(("quote(", "shlex.quote(")) or re.search(r":[0-9.]*[dgf]$", field)
                    or field.endswith("_word") or field == "script"):
                bad.append(f"{call.group(0)} -> {{{field}}}")
    return bad


def test_no_command_is_built_from_a_bare_value_in_the_docs_the_package_or_the_benchmarks():
    assert _unquoted_values('Shell(f"useradd -m {user}")') == ['Shell(f"useradd -m {user}" -> {user}']
    assert _unquoted_values('web.run(f"id {quote(user)}; sleep {n:g}")') == []
    files = [ROOT / "README.md", *(ROOT / "ecshell").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    found = {str(path.relative_to(ROOT)): bad for path in files if (bad := _unquoted_values(path.read_text()))}
    assert found == {}
