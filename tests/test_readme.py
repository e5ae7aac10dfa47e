"""The README is true: its Python example runs as written (on a tiny model and a synthetic case), and its
"Layout" table lists exactly the modules under src/mucosa."""

import ast
import doctest
import re
from pathlib import Path

import pytest

import mucosa

README = Path(__file__).resolve().parents[1] / "README.md"
PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mucosa"


def section(title: str) -> str:
    """The README's ``## title`` section, up to the next ``## `` heading."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert found, f"the README has no '## {title}' section"
    return found.group(1)


def listed_modules(layout: str) -> set[str]:
    """Every module a Layout row names: its second column's `names`, under the first column's `package`
    (plain ``mucosa`` for the rows "ground" and "top")."""
    modules = set()
    for line in layout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("layer", "---"):
            continue
        package = re.findall(r"`([\w.]+)`", cells[0]) or ["mucosa"]
        modules |= {f"{package[0]}.{name}" for name in re.findall(r"`([\w.]+)`", cells[1])}
    return modules


def tree_modules() -> tuple[set[str], set[str]]:
    """(the modules to list, every importable name) under src/mucosa. Not to list: packages themselves, private
    modules (``_version``), ``__main__``, and the store's Alembic scripts (``store/migrations``)."""
    names, to_list = set(), set()
    for path in PACKAGE.rglob("*.py"):
        parts = ("mucosa",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            names.add(".".join(parts[:-1]))
            continue
        names.add(".".join(parts))
        if not parts[-1].startswith("_") and parts[1:3] != ("store", "migrations"):
            to_list.add(".".join(parts))
    return to_list, names


def test_layout_table_lists_every_module_and_only_real_ones():
    listed = listed_modules(section("Layout"))
    to_list, names = tree_modules()
    assert not to_list - listed, f"modules missing from the README's Layout table: {sorted(to_list - listed)}"
    assert not listed - names, f"the README's Layout table lists modules that do not exist: {sorted(listed - names)}"


@pytest.mark.parametrize("row, expected", [
    ("| ground | `errors`, `atomic` | job `not_a_module` |", {"mucosa.errors", "mucosa.atomic"}),
    ("| `mucosa.service` | `routes.cases` | `x` |", {"mucosa.service.routes.cases"}),
    ("| layer | modules | job |\n| --- | --- | --- |", set()),
])
def test_layout_rows_are_read_as_modules(row, expected):
    assert listed_modules(row) == expected


@pytest.mark.slow
def test_readme_python_example_runs(tiny_run, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "the README has no Python example"
    case = next((tiny_run.cohort / "images" / "active").iterdir())
    code = blocks[0].replace('"runs/pcle/best.ckpt"', repr(str(tiny_run.best))).replace(
        '"exams/patient-017/"', repr(str(case)))
    assert str(tiny_run.best) in code and str(case) in code, "the example's paths changed: update this test"
    capsys.readouterr()  # what training printed
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith(str(case))
    assert ("active inflammation" in printed[0]) != ("mucosal healing" in printed[0])


def running_doctests(source: str) -> int:
    """How many docstrings of a module's source (the module's, its classes', functions' and methods') hold an
    example that runs: one not all ``# doctest: +SKIP``."""
    parser, skip = doctest.DocTestParser(), doctest.OPTIONFLAGS_BY_NAME["SKIP"]
    count = 0
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            examples = parser.get_examples(ast.get_docstring(node, clean=False) or "")
            count += any(not example.options.get(skip) for example in examples)
    return count


def test_the_doctests_the_readme_promises_exist():
    """The README's count of doctests is the number there are, and the API's example calls every function of
    ``mucosa.__all__``."""
    claim = re.search(r"Docstring examples run as doctests in the test suite, (\d+) of them",
                      README.read_text(encoding="utf-8"))
    assert claim, "the README no longer says how many doctests run: update this test"
    found = sum(running_doctests(p.read_text(encoding="utf-8")) for p in PACKAGE.rglob("*.py"))
    assert found == int(claim.group(1)), f"the README says {claim.group(1)} doctests run; {found} do"
    example = ast.get_docstring(ast.parse((PACKAGE / "api.py").read_text(encoding="utf-8")))
    functions = [name for name in mucosa.__all__ if name[0].islower() and not name.startswith("_")]
    assert functions and all(f"mucosa.{name}(" in example for name in functions), functions


@pytest.mark.parametrize("source, expected", [
    ('"""\n>>> 1\n1\n"""\ndef f():\n    """>>> f()  # doctest: +SKIP\n"""\n', 1),
    ('class A:\n    def m(self):\n        """\n        >>> 2\n        2\n        """\n', 1),
    ('"""No example."""\n', 0),
])
def test_running_doctests_are_counted(source, expected):
    assert running_doctests(source) == expected
