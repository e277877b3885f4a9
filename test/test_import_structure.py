"""The package's import graph: no module imports another module's private (``_name``) names, and there are no cycles.

Read from the source with ``ast``, so every import counts, lazy ones inside functions included: a cycle closed by a
function-level import is still two modules that cannot be understood (or moved) one without the other. An edge
``a -> b`` is drawn for ``import b``, ``from b import x`` and ``from pkg import b``; importing a submodule is not
counted as importing its parent package's ``__init__`` (Python runs it, but that is no design dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "flow_anomaly_ros"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_files(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every ``.py`` file under ``root``."""
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def import_graph(mods: dict[str, tuple[Path, bool]]) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> modules of the package it imports, ``file:line`` of each private name imported across modules)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private: list[str] = []
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        module_aliases: dict[str, str] = {}  # local name -> package module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in mods:
                        edges[mod].add(alias.name)
                        if alias.asname:
                            module_aliases[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node)
                if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in mods:  # from pkg import module
                        edges[mod].add(sub)
                        module_aliases[alias.asname or alias.name] = sub
                    elif target in mods:
                        edges[mod].add(target)
                        if alias.name.startswith("_") and target != mod:
                            private.append(f"{path.name}:{node.lineno} {target}.{alias.name}")
        for node in ast.walk(tree):  # module._private through an imported module object
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in module_aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and module_aliases[node.value.id] != mod
            ):
                private.append(f"{path.name}:{node.lineno} {module_aliases[node.value.id]}.{node.attr}")
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted.

    A module importing itself (as a ``__main__`` block may) is no cycle.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_private_names_imported_across_modules():
    _, private = import_graph(module_files())
    assert private == [], "private names used from another module (make them public or move them):\n" + "\n".join(
        private
    )


def test_no_import_cycles():
    edges, _ = import_graph(module_files())
    found = cycles(edges)
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_scan_finds_a_cycle_and_a_private_import(tmp_path):
    """The checks above can fail: a two-module cycle with a private import, a lazy one, is reported."""
    pkg = tmp_path / PACKAGE / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from flow_anomaly_ros.sub.b import helper\n")
    (pkg / "b.py").write_text(
        "def helper():\n    from . import a\n    return a._secret\n\n"
        "def other():\n    from flow_anomaly_ros.sub.a import _hidden\n    return _hidden\n"
    )
    (pkg / "c.py").write_text("from flow_anomaly_ros.sub import a\n")
    mods = module_files(tmp_path / PACKAGE)
    edges, private = import_graph(mods)
    assert cycles(edges) == [["flow_anomaly_ros.sub.a", "flow_anomaly_ros.sub.b"]]
    assert sorted(p.split(" ")[1] for p in private) == [
        "flow_anomaly_ros.sub.a._hidden",
        "flow_anomaly_ros.sub.a._secret",
    ]
    assert edges["flow_anomaly_ros.sub.c"] == {"flow_anomaly_ros.sub.a"}
