"""The package's shape: no import cycles, modules of a readable size, one place that reads the environment.

The import graph is built from the source with :mod:`ast`, function-level imports included (an import
inside a function is still a dependency; only ``if TYPE_CHECKING:`` imports, which never run, are left out).
Known exceptions are listed with the reason they remain; an exception that no longer applies fails too, so
the lists only shrink.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "qafl_core"
MAX_LINES = 250

#: Cycles left in modules this test's author could not change; each is to be broken by the modules' owners.
KNOWN_CYCLES = {
}
#: Modules other than :mod:`qafl_core.environment` that still read ``os.environ``, to be moved onto it.
KNOWN_ENV_READERS: dict[str, str] = {}
#: Modules over MAX_LINES without a stated reason, to be split or given one by their owners.
KNOWN_LONG: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its source)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_only(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = []
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        deps = set()
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target not in ("qafl_core", name):  # the root package only holds the lazy ``run``
                deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_on_a_planted_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]


def test_no_import_cycles():
    found = set(cycles(import_graph(_modules())))
    new = [sorted(c) for c in found - set(KNOWN_CYCLES)]
    assert not new, f"import cycles: {new}"
    gone = [sorted(c) for c in set(KNOWN_CYCLES) - found]
    assert not gone, f"fixed, remove from KNOWN_CYCLES: {gone}"


def _reads_environment(tree: ast.AST) -> list[int]:
    """Line numbers that read ``os.environ`` (get, [], in, copies) or call ``os.getenv``; writes are allowed."""
    writes = ("setdefault", "update", "clear", "pop")
    parents = {id(c): p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            parent = parents.get(id(node))
            if node.attr == "getenv":
                lines.append(node.lineno)
            elif node.attr == "environ":
                if isinstance(parent, ast.Attribute) and parent.attr in writes:
                    continue
                if isinstance(parent, ast.Subscript) and not isinstance(parent.ctx, ast.Load):
                    continue
                lines.append(node.lineno)
    return sorted(lines)


def test_environment_is_read_in_one_place():
    readers = {}
    for name, path in _modules().items():
        lines = _reads_environment(ast.parse(path.read_text()))
        if lines and name != "qafl_core.environment":
            readers[name] = lines
    new = {k: v for k, v in readers.items() if k not in KNOWN_ENV_READERS}
    assert not new, f"read the environment through qafl_core.environment, not os.environ: {new}"
    gone = sorted(set(KNOWN_ENV_READERS) - set(readers))
    assert not gone, f"no longer read the environment, remove from KNOWN_ENV_READERS: {gone}"


def test_environment_reader_finder():
    src = "import os\na = os.environ.get('X')\nos.environ['Y'] = '1'\nos.environ.setdefault('Z', '2')\nb = os.getenv('W')\n"
    assert _reads_environment(ast.parse(src)) == [2, 5]


def _states_its_size(path: Path) -> bool:
    """A ``# size:`` comment near the top, or a module docstring that says why it is longer."""
    text = path.read_text()
    doc = (ast.get_docstring(ast.parse(text)) or "").lower()
    return "# size:" in "\n".join(text.splitlines()[:40]) or any(p in doc for p in ("longer than", "over 250"))


def test_long_modules_state_why():
    long = {name: len(path.read_text().splitlines()) for name, path in _modules().items()
            if len(path.read_text().splitlines()) > MAX_LINES and not _states_its_size(path)}
    new = {k: v for k, v in long.items() if k not in KNOWN_LONG}
    assert not new, f"modules over {MAX_LINES} lines without a reason at the top (# size: ... or docstring): {new}"
    gone = sorted(set(KNOWN_LONG) - set(long))
    assert not gone, f"now short or explained, remove from KNOWN_LONG: {gone}"
