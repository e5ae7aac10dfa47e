"""The package's layering rule, checked on its source: data → models → inference → evaluation → store → top.

Every ``import`` of a mucosa module, at module level or inside a function, must point to the same layer or
a lower one, and the import graph must have no circle. A new module must be given a layer here.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mucosa"

LAYERS = [  # lowest first
    ("ground", ("mucosa._version", "mucosa.errors", "mucosa.formats", "mucosa.atomic", "mucosa.metrics",
                "mucosa.tables", "mucosa.intervals", "mucosa.settings", "mucosa.allocator", "mucosa.choices")),
    ("data", ("mucosa.data",)),
    ("models", ("mucosa.models",)),
    ("inference", ("mucosa.inference",)),
    ("evaluation", ("mucosa.evaluation",)),
    ("store", ("mucosa.store",)),
    ("top", ("mucosa", "mucosa.api", "mucosa.cli", "mucosa.demo", "mucosa.__main__", "mucosa.service")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """Rank of the layer a module belongs to (the longest matching prefix wins)."""
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "mucosa" and module.startswith(prefix + "."))
            if inside and len(prefix) > best:
                best, rank = len(prefix), index
    if rank is None:
        raise AssertionError(f"{module} has no layer: add it to LAYERS in tests/test_layers.py")
    return rank


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(module: str) -> set[str]:
    """Every mucosa module that ``module`` imports, anywhere in its source."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "mucosa"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mucosa":
            for alias in node.names:  # `from mucosa.data import fov` imports the module mucosa.data.fov
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return found


GRAPH = {module: imported(module) for module in MODULES}


def test_every_module_has_a_layer_and_imports_only_downward():
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
              for m, targets in GRAPH.items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)


def test_no_import_circle():
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in GRAPH.get(node, ()):
                circles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("source, expected", [
    ("from mucosa.evaluation.evaluate import score\n", "mucosa.evaluation.evaluate"),
    ("def f():\n    from mucosa.inference import verdict\n", "mucosa.inference.verdict"),
])
def test_the_checker_sees_imports_at_any_depth(tmp_path, source, expected, monkeypatch):
    monkeypatch.setitem(MODULES, "mucosa.data._probe", tmp_path / "probe.py")
    (tmp_path / "probe.py").write_text(source)
    assert expected in imported("mucosa.data._probe")
    assert layer_of(expected) > layer_of("mucosa.data._probe")
