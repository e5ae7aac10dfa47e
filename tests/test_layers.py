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


SHARED_PRIVATE_MODULES = {"mucosa._version"}  # holds only ``__version__``, read by every layer


def private(name: str) -> bool:
    """``_name`` is private to its module; ``__dunder__`` names are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(module: str, tree: ast.AST) -> list[str]:
    """Underscored names that ``module`` takes from another mucosa module: ``from m import _x``, ``import
    m._x``, and ``name._x`` where ``name`` was imported from mucosa (a module, a class, a function)."""
    found, bound = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mucosa":
            if node.module not in SHARED_PRIVATE_MODULES and any(private(p) for p in node.module.split(".")):
                found.append(f"{module}:{node.lineno} imports from {node.module}")
            for alias in node.names:
                if private(alias.name):
                    found.append(f"{module}:{node.lineno} imports {alias.name} from {node.module}")
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mucosa":
                    if any(private(p) for p in alias.name.split(".")):
                        found.append(f"{module}:{node.lineno} imports {alias.name}")
                    bound[alias.asname or "mucosa"] = alias.name if alias.asname else "mucosa"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr) and root_name(node.value) in bound:
            found.append(f"{module}:{node.lineno} uses {ast.unparse(node)} ({bound[root_name(node.value)]})")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in NAME_READERS \
                and len(node.args) > 1 and root_name(node.args[0]) in bound and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str) and private(node.args[1].value):
            found.append(f"{module}:{node.lineno} uses {ast.unparse(node)} ({bound[root_name(node.args[0])]})")
    return found


NAME_READERS = ("getattr", "setattr", "hasattr", "delattr")


def root_name(node: ast.AST) -> str | None:
    """The name an attribute chain starts from (``training`` of ``training.FrameClassifierModule.x``)."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def test_no_module_uses_another_modules_underscored_names():
    found = [use for module, path in MODULES.items()
             for use in private_uses(module, ast.parse(path.read_text(encoding="utf-8")))]
    assert not found, "underscored names used outside their module (make them public or move the code):\n" \
        + "\n".join(found)


@pytest.mark.parametrize("source", [
    "from mucosa.evaluation.report import _md_table\n",
    "def f():\n    from mucosa.models import training\n    return training._trainer()\n",
    "from mucosa.inference.classifier import Classifier\nClassifier._keep_freed_memory()\n",
    "import mucosa.models._hidden\n",
    "import mucosa.models.training\nmucosa.models.training._trainer()\n",
    "from mucosa.models import training\ntraining.FrameClassifierModule._hook\n",
    "from mucosa.inference import onnx\ngetattr(onnx, '_with_metadata')\n",
])
def test_the_private_name_check_sees_each_kind_of_use(source):
    assert private_uses("mucosa.data.probe", ast.parse(source))


def test_the_private_name_check_allows_own_and_dunder_names():
    source = "import mucosa\nfrom mucosa._version import __version__\nx = mucosa.__name__\ndef _f():\n    return _f\n"
    assert private_uses("mucosa.data.probe", ast.parse(source)) == []
