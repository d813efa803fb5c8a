"""ARCHITECTURE.md's "## Modules" table is the dependency rule, and the code keeps it.

The table's columns are module | job | may import. Every import of a project module (a *.py file at
the repository root) counts, wherever it is written: at the top, inside a function (lazy), or under
`if TYPE_CHECKING:`; a lazy import still makes the importer depend on the imported module.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
TABLE_HEADING = "## Modules"
#: A "may import" cell that starts with this allows every project module (main.py's row).
ALLOW_ALL = "everything"
#: Root modules that need no row of their own.
UNLISTED_OK = frozenset({"main"})


@dataclass(frozen=True)
class Row:
    """One row of the Modules table: the module's name (no .py) and the project modules it may
    import."""

    module: str
    may_import: frozenset[str]
    allows_all: bool
    cell: str


@dataclass(frozen=True)
class Import:
    """`importer`.py imports project module `imported` at `line` (1-based)."""

    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer}.py:{self.line} imports {self.imported}"


# --- Reading the table and the code ---------------------------------------------------------------
def project_modules(root: Path = ROOT) -> frozenset[str]:
    """Names (no .py) of the modules at the repository root."""
    return frozenset(p.stem for p in root.glob("*.py"))


def _cells(line: str) -> list[str]:
    """Cells of one Markdown table line; `\\|` inside a cell is text, not a separator."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _table_lines(markdown: str) -> list[str]:
    """Lines of the first table after TABLE_HEADING, header and separator included."""
    lines = markdown.splitlines()
    if TABLE_HEADING not in lines:
        raise AssertionError(f"{ARCHITECTURE.name} has no {TABLE_HEADING!r} section")
    start = lines.index(TABLE_HEADING) + 1
    table: list[str] = []
    for line in lines[start:]:
        if line.startswith("## "):
            break
        if line.lstrip().startswith("|"):
            table.append(line)
        elif table:
            break
    return table


def read_modules_table(markdown: str, modules: Iterable[str]) -> dict[str, Row]:
    """Rows of the Modules table keyed by module name. Names in backticks in the "may import" cell
    that are project modules are the allowed imports; other names (filelock, alpaca-py) are
    third-party and not checked here."""
    known = frozenset(modules)
    lines = _table_lines(markdown)
    assert len(lines) >= 3, f"the {TABLE_HEADING!r} table of {ARCHITECTURE.name} has no rows"
    header = [c.lower() for c in _cells(lines[0])]
    assert header == ["module", "job", "may import"], f"unexpected table header {header}"
    rows: dict[str, Row] = {}
    for line in lines[2:]:
        cells = _cells(line)
        assert len(cells) == 3, f"a Modules row needs 3 cells, got {len(cells)}: {line}"
        name = cells[0].strip("`").removesuffix(".py")
        assert name not in rows, f"{name}.py has two rows in the Modules table"
        named = {n.removesuffix(".py") for n in re.findall(r"`([^`]+)`", cells[2])}
        rows[name] = Row(
            name,
            frozenset(named & known),
            cells[2].lower().startswith(ALLOW_ALL),
            cells[2],
        )
    return rows


def imports_in(source: str, importer: str, modules: Iterable[str]) -> list[Import]:
    """Every import of a project module in `source`, top-level, lazy or TYPE_CHECKING alike."""
    known = frozenset(modules)
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in known and top != importer:
                found.append(Import(importer, top, node.lineno))
    return sorted(found, key=lambda i: (i.line, i.imported))


def import_graph(root: Path = ROOT) -> dict[str, list[Import]]:
    """Project imports of each root module."""
    modules = project_modules(root)
    return {
        m: imports_in((root / f"{m}.py").read_text(encoding="utf-8"), m, modules)
        for m in sorted(modules)
    }


def find_cycle(graph: Mapping[str, Iterable[Import]]) -> list[Import] | None:
    """One import cycle as its edges in order (the last edge returns to the first importer), or
    None when the graph is acyclic. Depth-first search over modules in name order."""
    edges = {m: sorted(imps, key=lambda i: (i.imported, i.line)) for m, imps in graph.items()}
    done: set[str] = set()
    path: list[Import] = []
    on_path: dict[str, int] = {}  # module -> index in `path` of the edge that leaves it

    def visit(module: str) -> list[Import] | None:
        on_path[module] = len(path)
        for edge in edges.get(module, []):
            if edge.imported in on_path:
                return [*path[on_path[edge.imported] :], edge]
            if edge.imported in done:
                continue
            path.append(edge)
            cycle = visit(edge.imported)
            if cycle:
                return cycle
            path.pop()
        del on_path[module]
        done.add(module)
        return None

    for module in sorted(edges):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def describe_cycle(cycle: list[Import]) -> str:
    chain = " -> ".join([cycle[0].importer, *(edge.imported for edge in cycle)])
    return f"{chain} ({'; '.join(map(str, cycle))})"


# --- The checker itself, on small made-up inputs --------------------------------------------------
def test_imports_inside_functions_and_type_checking_blocks_count():
    source = (
        "from typing import TYPE_CHECKING\n"
        "import numpy as np\n"
        "from b import x\n"
        "if TYPE_CHECKING:\n"
        "    import c\n"
        "def f():\n"
        "    import d.sub as s\n"
    )
    found = imports_in(source, "a", {"a", "b", "c", "d"})
    assert [(i.imported, i.line) for i in found] == [("b", 3), ("c", 5), ("d", 7)]


def test_cycle_finder_reports_the_cycle_with_the_offending_lines():
    graph = {
        "a": [Import("a", "b", 3)],
        "b": [Import("b", "c", 7)],
        "c": [Import("c", "a", 12)],
        "d": [Import("d", "a", 1)],
    }
    cycle = find_cycle(graph)
    assert cycle is not None
    assert describe_cycle(cycle) == (
        "a -> b -> c -> a (a.py:3 imports b; b.py:7 imports c; c.py:12 imports a)"
    )


def test_cycle_finder_accepts_a_diamond():
    graph = {
        "a": [Import("a", "b", 1), Import("a", "c", 2)],
        "b": [Import("b", "d", 1)],
        "c": [Import("c", "d", 1)],
        "d": [],
    }
    assert find_cycle(graph) is None


def test_table_cells_keep_escaped_pipes_and_ignore_third_party_names():
    markdown = (
        "## Modules\n\n"
        "| module | job | may import |\n"
        "| --- | --- | --- |\n"
        "| `a.py` | `x verify\\|tail` | `b`; `filelock`, `c` lazily |\n"
        "| `m.py` | CLI | everything, lazily |\n"
    )
    rows = read_modules_table(markdown, {"a", "b", "c", "m"})
    assert rows["a"].may_import == {"b", "c"} and not rows["a"].allows_all
    assert rows["m"].allows_all


# --- The project ----------------------------------------------------------------------------------
def _project_table() -> dict[str, Row]:
    return read_modules_table(ARCHITECTURE.read_text(encoding="utf-8"), project_modules())


def test_every_module_in_the_table_exists():
    missing = sorted(set(_project_table()) - project_modules())
    assert not missing, (
        f"{ARCHITECTURE.name} lists modules that are not at the repository root: "
        + ", ".join(f"{m}.py" for m in missing)
    )


def test_every_root_module_has_a_row_in_the_table():
    unlisted = sorted(project_modules() - set(_project_table()) - UNLISTED_OK)
    assert not unlisted, (
        f"add a row to the {TABLE_HEADING!r} table of {ARCHITECTURE.name} for: "
        + ", ".join(f"{m}.py" for m in unlisted)
    )


def test_each_module_imports_only_the_project_modules_its_row_allows():
    rows = _project_table()
    offences = [
        f"{imp} (its row allows: {rows[module].cell})"
        for module, imports in import_graph().items()
        if module in rows and not rows[module].allows_all
        for imp in imports
        if imp.imported not in rows[module].may_import
    ]
    assert not offences, (
        f"imports not allowed by the 'may import' column of {ARCHITECTURE.name}:\n"
        + "\n".join(offences)
    )


def test_project_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {describe_cycle(cycle)}"
