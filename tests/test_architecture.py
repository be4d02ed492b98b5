"""The rules the layout stands for, checked on the source.

- No import cycle among ecshell's modules, counting imports inside functions.
- ``ecshell/remote/`` runs on the machines: each file imports with the
  standard library alone (``python3 -I -S``, nothing else on the path).
- Only ``ecshell/shell/`` imports IPython (or prompt_toolkit) at module level.
"""

import ast
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import ecshell

PACKAGE = pathlib.Path(ecshell.__file__).parent


def _modules():
    """``{module name: path}`` for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imported(name, path, node):
    """The ecshell modules an import statement in module ``name`` loads."""
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([node.module] if node.module else []))
        candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
    return {c for c in candidates if c in MODULES}


def _is_ancestor(package, module):
    return module.startswith(package + ".")


def _type_checking_only(tree):
    """The import statements under ``if TYPE_CHECKING:``: read by type checkers, never run."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return skipped


def import_graph():
    """``{module: {modules it imports}}``, from every import statement that runs, wherever it is.

    Importing ``a.b.c`` always runs ``a`` and ``a.b`` first; that is how
    packages work, not a dependency of one module on another, so edges to a
    module's own ancestors are left out. So are imports under
    ``if TYPE_CHECKING:``, which only the type checker reads.
    """
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        skipped = _type_checking_only(tree)
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skipped:
                edges |= _imported(name, path, node)
        graph[name] = {e for e in edges if e != name and not _is_ancestor(e, name)}
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_ecshell_modules():
    found = cycles(import_graph())
    assert not found, "import cycles (function-level imports included): " + "; ".join(
        " <-> ".join(c) for c in found)


REMOTE = sorted(p for p in (PACKAGE / "remote").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", REMOTE, ids=lambda p: p.name)
def test_remote_files_import_with_the_standard_library_alone(path, tmp_path):
    """Each file of ecshell/remote/, alone in a directory, imported by ``python3 -I -S``."""
    shutil.copy(path, tmp_path / path.name)
    module = path.stem
    check = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import {module}; "
             "loaded = {m.split('.')[0] for m in sys.modules}; "
             f"print(sorted(loaded - set(sys.stdlib_module_names) - {{'{module}', '__main__'}}))")
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    for interpreter in sorted({python, sys.executable}):
        done = subprocess.run([interpreter, "-I", "-S", "-c", check], capture_output=True, text=True,
                              cwd=tmp_path, timeout=60)
        assert done.returncode == 0, f"{interpreter}: {done.stderr}"
        assert done.stdout.strip() == "[]", f"{path.name} loads {done.stdout.strip()} under {interpreter}"


def _module_level_imports(tree):
    """Import statements that run when the module is imported (not inside a def)."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        pending.extend(ast.iter_child_nodes(node))


SHELL_ONLY = ("IPython", "prompt_toolkit")


def test_only_the_shell_package_imports_ipython_at_module_level():
    offenders = []
    for name, path in MODULES.items():
        if name == "ecshell.shell" or name.startswith("ecshell.shell."):
            continue
        for node in _module_level_imports(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if not getattr(node, "level", 0) and any(n.split(".")[0] in SHELL_ONLY for n in names):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders, f"IPython imported at module level outside ecshell/shell/: {offenders}"


def test_the_core_imports_without_ipython():
    """Importing every module outside ecshell/shell/ loads neither IPython nor prompt_toolkit."""
    core = sorted(n for n in MODULES if not (n == "ecshell.shell" or n.startswith("ecshell.shell.")))
    code = ("import importlib, sys\n"
            f"for name in {core!r}: importlib.import_module(name)\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(SHELL_ONLY)!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              p for p in (str(PACKAGE.parent), os.environ.get("PYTHONPATH")) if p)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _private(name):
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_crosses_modules():
    """What two modules share is public in the module that owns it."""
    offenders = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        bound = set()  # local names of imported ecshell modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _imported(name, path, node):
                targets = _imported(name, path, node)
                for alias in node.names:
                    if _private(alias.name):
                        offenders.append(f"{path.name}:{node.lineno} imports {alias.name}")
                    base = sorted(targets)[0]
                    if f"{base}.{alias.name}" in MODULES:
                        bound.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in MODULES and alias.asname:
                        bound.add(alias.asname)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and _private(node.attr)):
                offenders.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not offenders, offenders


def _message_texts(tree):
    """The string literals of a module (f-strings' literal parts included): what its messages say."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_every_remedy_a_message_names_exists():
    """A message that says to call ``cluster.x(...)`` or set ``c.EcShell.y`` names something real."""
    import ecshell
    from ecshell.machine import Machine

    objects = {"cluster": ecshell.Cluster, "web": ecshell.MachineSet, "machines": ecshell.MachineSet,
               "machine": Machine}
    configurables = {name: getattr(ecshell, name) for name in ("EcShell", "LocalFabric", "StaticFabric",
                                                               "Ec2Fabric")}
    calls = re.compile(r"\b(cluster|web|machines|machine)\.([a-z_]+)\(")
    settings = re.compile(r"\bc\.([A-Z][A-Za-z0-9]+)\.([a-z_]+)")
    missing = []
    for name, path in MODULES.items():
        for line, text in _message_texts(ast.parse(path.read_text(), str(path))):
            for owner, attribute in calls.findall(text):
                if not hasattr(objects[owner], attribute):
                    missing.append(f"{path.name}:{line}: {owner}.{attribute}()")
            for owner, attribute in settings.findall(text):
                cls = configurables.get(owner)
                if cls is None or attribute not in cls.class_traits(config=True):
                    missing.append(f"{path.name}:{line}: c.{owner}.{attribute}")
    assert not missing, f"messages name remedies that do not exist: {missing}"


def test_the_examples_in_docstrings_run(isolated_home):
    """Every module's doctest examples run as written (launching nothing: those lines say +SKIP)."""
    import doctest
    import importlib

    failed = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        if module.startswith("ecshell.remote."):
            continue  # run on machines, by python3 -I -S: their examples are not for this interpreter
        outcome = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS, report=False)
        if outcome.failed:
            failed[module] = outcome.failed
    assert failed == {}
