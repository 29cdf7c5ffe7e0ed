"""Static checks over ``src/odearch`` (read with :mod:`ast`; nothing is imported, no torch needed).

- no function is longer than ``MAX_FUNCTION_LINES`` formatted lines (``def`` line to last line, docstring included;
  a tripwire for functions that do more than one job, ``ruff format`` owning the layout);
- docstrings are RST: literals are ``double`` backticks, never Markdown's single ones (:func:`roles` and
  `links`_ are RST and fine);
- imports inside the package are relative (``from .x import y``), except under an ``if __name__ == "__main__":``
  guard; docstring examples are not code and are not checked;
- ``schemes/`` is torch-free data;
- the layers hold: a module imports only from its own unit or a lower layer (``LAYERS``), never upward.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from datapaths import REPO

PACKAGE = REPO / "src" / "odearch"
MAX_FUNCTION_LINES = 80  # a tripwire: the formatter owns the layout, a function with one job stays well below
# Lowest first: a unit (a subpackage, or a top-level module by its stem) may import its own layer or one below.
LAYERS = (
    ("schemes", "datastats", "data", "packing", "runfiles", "runsummary"),
    ("nn",),
    ("models",),
    ("convert", "mesh", "timm_models", "train", "analysis", "report", "arms", "depth", "probe_report"),
    ("__init__",),  # the public facade, ``import odearch``
    ("cli",),
    ("__main__",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
ROLE_BEFORE = re.compile(r":[A-Za-z][\w.+-]*(?::[A-Za-z][\w.+-]*)*:$")  # :func:, :math:, :py:class: ...


def sources() -> Iterator[tuple[Path, ast.Module]]:
    """(path relative to the repository, parsed module) of every file of the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(REPO), ast.parse(path.read_text(), filename=str(path))


def unit_of(path: Path) -> str:
    """``train`` for ``src/odearch/train/loop.py``, ``cli`` for ``src/odearch/cli.py``."""
    parts = path.relative_to(PACKAGE.relative_to(REPO)).parts
    return parts[0] if len(parts) > 1 else Path(parts[0]).stem


def single_backticks(text: str) -> list[tuple[int, int]]:
    """(start, end) of each Markdown-style single-backtick literal in ``text``.

    Not counted: RST literals (two backticks on each side), RST roles (a backtick pair right after ``:func:``,
    ``:math:``, ...) and RST links (a backtick pair followed by an underscore). An unclosed backtick counts, to the end.
    """
    spans: list[tuple[int, int]] = []
    i = text.find("`")
    while i != -1:
        if text.startswith("``", i):
            close = text.find("``", i + 2)
            i = -1 if close == -1 else text.find("`", close + 2)
            continue
        close = text.find("`", i + 1)
        if close == -1:
            spans.append((i, len(text)))
            break
        if not ROLE_BEFORE.search(text, 0, i) and not text.startswith("_", close + 1):
            spans.append((i, close + 1))
        i = text.find("`", close + 1)
    return spans


def docstrings(tree: ast.Module) -> Iterator[ast.Constant]:
    """The docstring constants of the module and of every class and function in it."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                if isinstance(first.value.value, str):
                    yield first.value


def main_guarded(tree: ast.Module) -> set[int]:
    """ids of the nodes inside an ``if __name__ == "__main__":`` block."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test):
            inside |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return inside


def imported_units(path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package units an import statement reads from (empty for imports from outside the package)."""
    package = list(path.relative_to(PACKAGE.relative_to(REPO)).parent.parts)
    if isinstance(node, ast.Import):
        names = [alias.name.split(".") for alias in node.names if alias.name.split(".")[0] == "odearch"]
        return [parts[1] if len(parts) > 1 else "__init__" for parts in names]
    if node.level:
        module = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
    elif node.module and node.module.split(".")[0] == "odearch":
        module = node.module.split(".")[1:]
    else:
        return []
    if module:
        return [module[0]]
    return [alias.name if alias.name in RANK else "__init__" for alias in node.names]  # from . import cli / Stage


def imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at module level or inside a function."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


# ------------------------------------------------------------------------------------------------ the checkers
def test_single_backticks_finds_markdown_literals_only() -> None:
    def found(text: str) -> list[str]:
        return [text[start:end] for start, end in single_backticks(text)]

    assert found("``x`` and :func:`f` and :math:`k_n` and :py:class:`C` and `a link`_ and `y`") == ["`y`"]
    assert found("`a` then ``b`` then `c`") == ["`a`", "`c`"]
    assert found("``one\nline`` `two\nlines`") == ["`two\nlines`"]
    assert found("an unclosed `x") == ["`x"]
    assert found("``x`` is RST for a literal, ``:func:`` a role name") == []


def test_imported_units_resolves_relative_and_absolute_imports() -> None:
    loop = PACKAGE.relative_to(REPO) / "train" / "loop.py"
    cli = PACKAGE.relative_to(REPO) / "cli.py"

    def units(path: Path, code: str) -> list[str]:
        return imported_units(path, ast.parse(code).body[0])

    assert units(loop, "from ..models import create_model") == ["models"]
    assert units(loop, "from .config import TrainConfig") == ["train"]
    assert units(loop, "from .. import Stage") == ["__init__"]
    assert units(loop, "from odearch.nn.stage import Stage") == ["nn"]
    assert units(loop, "import odearch.cli") == ["cli"]
    assert units(loop, "import torch") == []
    assert units(cli, "from . import analysis, Stage") == ["analysis", "__init__"]
    assert units(cli, "from .train.loop import fit") == ["train"]


# --------------------------------------------------------------------------------------------------- the package
def test_no_function_is_longer_than_the_limit() -> None:
    long = [
        f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path, tree in sources()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_docstrings_use_rst_double_backtick_literals() -> None:
    found = []
    for path, tree in sources():
        for doc in docstrings(tree):
            for start, end in single_backticks(doc.value):
                line = doc.lineno + doc.value.count("\n", 0, start)  # exact unless the docstring has line continuations
                found.append(f"{path}:{line}: {doc.value[start:end]}")
    assert not found, "Markdown `x` in docstrings (RST wants ``x``):\n" + "\n".join(found)


def test_imports_inside_the_package_are_relative() -> None:
    absolute = []
    for path, tree in sources():
        guarded = main_guarded(tree)
        for node in imports(tree):
            if id(node) in guarded or (isinstance(node, ast.ImportFrom) and node.level):
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(name.split(".")[0] == "odearch" for name in names):
                absolute.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    assert not absolute, "absolute imports of odearch inside odearch:\n" + "\n".join(absolute)


def test_schemes_do_not_import_torch() -> None:
    found = []
    for path, tree in sources():
        if unit_of(path) != "schemes":
            continue
        for node in imports(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(name.split(".")[0] in {"torch", "torchvision"} for name in names):
                found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "schemes/ must stay torch-free data:\n" + "\n".join(found)


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(path) for path, _ in sources()}
    assert units <= set(RANK), f"place these in LAYERS: {sorted(units - set(RANK))}"
    assert "schemes" in units and "cli" in units  # the walk found the package


def test_no_module_imports_from_a_higher_layer() -> None:
    upward = []
    for path, tree in sources():
        unit = unit_of(path)
        for node in imports(tree):
            for target in imported_units(path, node):
                if target != unit and RANK.get(target, len(LAYERS)) > RANK.get(unit, -1):
                    upward.append(
                        f"{path}:{node.lineno}: {unit} (layer {RANK.get(unit)}) imports {target} "
                        f"(layer {RANK.get(target)}): {ast.unparse(node)}"
                    )
    assert not upward, "imports against the layering " + " -> ".join(map("/".join, LAYERS)) + ":\n" + "\n".join(upward)


TRACKED_TREE_LIMIT = 15_000_000  # bytes: the tracked tree travels with every call to the GPU machine


def test_tracked_tree_stays_small() -> None:
    """The files git tracks (at HEAD, or in the index while committing) sum to under 15 MB: a finished campaign run
    ships its weights and gives up its checkpoints (``odearch ship --prune-checkpoints``) rather than growing it."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(["git", "ls-files", "-s", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    blobs = [entry.split(b" ")[1].decode() for entry in listing.split(b"\0") if entry]
    sizes = subprocess.run(
        ["git", "cat-file", "--batch-check=%(objectsize)"],
        cwd=REPO,
        check=True,
        input="\n".join(blobs).encode(),
        capture_output=True,
    ).stdout.split()
    total = sum(int(s) for s in sizes if s.isdigit())
    assert total < TRACKED_TREE_LIMIT, f"the tracked tree is {total / 1e6:.1f} MB (limit 15 MB): prune checkpoints"


# ------------------------------------------------------------------------------------------- module graph
def module_name(path: Path) -> str:
    """``odearch.train.loop`` for ``src/odearch/train/loop.py``, ``odearch.nn`` for its ``__init__.py``."""
    parts = list(path.relative_to(PACKAGE.parent.relative_to(REPO)).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path, _ in sources()}


def imported_modules(module: str, node: ast.ImportFrom) -> list[str]:
    """The odearch modules a ``from ... import ...`` statement of ``module`` reads: the named submodules where the
    names are modules, else the module it imports from (a package's ``__init__``)."""
    if node.level:
        base = module.split(".")
        if not MODULES[module].name == "__init__.py":
            base = base[:-1]
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    elif node.module and node.module.split(".")[0] == "odearch":
        target = node.module
    else:
        return []
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]


def import_graph() -> dict[str, list[tuple[str, bool, int]]]:
    """module -> [(imported module, imported inside a function, line)] over the package (``from`` imports)."""
    graph: dict[str, list[tuple[str, bool, int]]] = {}
    for path, tree in sources():
        module = module_name(path)
        in_function = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
            if n is not f
        }
        for node in imports(tree):
            if isinstance(node, ast.ImportFrom):
                for target in imported_modules(module, node):
                    if target != module:
                        graph.setdefault(module, []).append((target, id(node) in in_function, node.lineno))
    return graph


def path_between(graph: dict[str, list[tuple[str, bool, int]]], start: str, goal: str) -> list[str] | None:
    """A chain of imports from ``start`` to ``goal``, or None."""
    seen, stack = {start}, [[start]]
    while stack:
        chain = stack.pop()
        for target, _, _ in graph.get(chain[-1], []):
            if target == goal:
                return [*chain, goal]
            if target not in seen:
                seen.add(target)
                stack.append([*chain, target])
    return None


def test_no_import_cycle_hides_behind_a_function_level_import() -> None:
    """A function-level import whose target imports (at any depth) the importing module back is a cycle the import
    order merely tolerates: give the shared piece a home of its own instead."""
    graph = import_graph()
    cycles = []
    for module, edges in graph.items():
        for target, in_function, line in edges:
            back = path_between(graph, target, module) if in_function else None
            if back:
                cycles.append(f"{MODULES[module]}:{line}: {module} -> " + " -> ".join(back))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_imports_another_modules_private_names() -> None:
    """``from odearch.x import _name`` and imports of a private module (``models._pretrained``) from outside its
    package are refused: what another module needs is public (or re-exported by its package)."""
    found = []
    for path, tree in sources():
        module = module_name(path)
        for node in imports(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            targets = imported_modules(module, node)  # empty for a module outside odearch (timm's own, say)
            for target in targets:
                private = [p for p in target.split(".") if p.startswith("_") and not p.startswith("__")]
                owner = target.rsplit(".", 1)[0]
                if private and not (module == owner or module.startswith(owner + ".")):
                    found.append(f"{path}:{node.lineno}: private module {target}")
            names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            for name in names if targets else ():
                if not any(t.endswith("." + name) for t in targets):
                    found.append(f"{path}:{node.lineno}: private name {name}")
    assert not found, "imports of private names across modules:\n" + "\n".join(found)


def test_the_graph_checks_find_what_they_look_for() -> None:
    """The two checks above on a made-up module graph: a function-level cycle, and a private import."""
    graph = {
        "odearch.a": [("odearch.b", True, 3)],
        "odearch.b": [("odearch.c", False, 1)],
        "odearch.c": [("odearch.a", False, 1)],
    }
    assert path_between(graph, "odearch.b", "odearch.a") == ["odearch.b", "odearch.c", "odearch.a"]
    assert path_between(graph, "odearch.c", "odearch.b") == ["odearch.c", "odearch.a", "odearch.b"]
    node = ast.parse("from ..models._pretrained import registry_problems").body[0]
    assert imported_modules("odearch.train.ship", node) == ["odearch.models._pretrained"]
    node = ast.parse("from .models import _pretrained, create_model").body[0]
    assert imported_modules("odearch.cli", node) == ["odearch.models._pretrained", "odearch.models"]
