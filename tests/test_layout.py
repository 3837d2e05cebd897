"""Package layout rules (docs/CONVENTIONS.md, "Import direction"), checked on the source with ``ast``.

1. Import direction: a module may import its own package and packages of strictly lower level only
   (``LEVELS``). Every import counts: module level, inside functions, under ``if TYPE_CHECKING``, relative
   imports and ``importlib.import_module("depthmux....")`` with a literal name.
2. No import cycle between modules (runtime, module-level imports; ``if TYPE_CHECKING`` blocks excluded).
3. Every module belongs to a known package, and every package folder has an ``__init__.py`` (setuptools'
   ``packages.find`` leaves a folder without one out of the wheel).
4. No module imports a private name (``_x``) or a private module from another package.
5. No source file over ``MAX_LINES`` lines unless its module docstring has a line ``Length: <why>``.

The checker is plain functions over a source root, so the tests at the bottom run it on small synthetic
trees too: each rule must report a planted violation.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "depthmux"
MAX_LINES = 400

# A package may import itself and packages of strictly lower level.
LEVELS: dict[str, int] = {
    "errors": 0,
    "utils": 0,
    "assets": 0,
    "data": 1,
    "backbones": 1,
    "multiplexing": 2,
    "recursion": 2,
    "early_exit": 3,
    "lm": 4,
    "training": 5,
    "engine": 6,
    "recipes": 7,
    "serve": 8,
    "cli": 9,
}
# Below everything: depthmux.errors (every module may import it; it imports nothing of ours), then the package
# root depthmux/__init__.py (runs before any submodule; it re-exports errors and may import nothing else).
# depthmux/__main__.py (`python -m depthmux`) is the entry point above the CLI.
SPECIAL_LEVELS = {"errors": -2, "__init__": -1, "__main__": 10}


@dataclass(frozen=True)
class Import:
    file: Path
    line: int
    importer: str  # dotted module name of the importing file
    target: str  # dotted module the statement loads (a module if one exists, else its package)
    names: tuple[str, ...]  # names taken with `from x import a, b` (empty for `import x`)
    module_level: bool  # executed when the importer is imported (not in a function, not TYPE_CHECKING)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """The layout package of a dotted module: ``depthmux.recursion.modeling`` -> ``recursion``;
    ``depthmux`` -> ``__init__``; ``depthmux.__main__`` -> ``__main__``."""
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def level_of(package: str) -> int | None:
    return SPECIAL_LEVELS.get(package, LEVELS.get(package))


def _label(package: str) -> str:
    if package in SPECIAL_LEVELS:
        return {"errors": "level 0, foundation", "__init__": "package root", "__main__": "entry point"}[package]
    return f"level {LEVELS[package]}"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, runtime: bool):
    """Yield (node, runs_at_import) for every node, tracking function bodies and TYPE_CHECKING blocks."""
    for child in ast.iter_child_nodes(node):
        child_runtime = runtime
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            child_runtime = False
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            yield child, runtime
            for stmt in child.body:
                yield stmt, False
                yield from _walk(stmt, False)
            for stmt in child.orelse:
                yield stmt, runtime
                yield from _walk(stmt, runtime)
            continue
        yield child, child_runtime
        yield from _walk(child, child_runtime)


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def collect_imports(root: Path) -> tuple[list[Import], set[str]]:
    """Every import of a ``depthmux`` module in the tree under ``root`` (the folder holding ``depthmux/``),
    and the set of module names found there."""
    files = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(root, f) for f in files}
    found: list[Import] = []
    for path in files:
        importer = module_name(root, path)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, runtime in _walk(tree, True):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                        found.append(Import(path, node.lineno, importer, alias.name, (), runtime))
            elif isinstance(node, ast.ImportFrom):
                base = (
                    _resolve_relative(importer, is_package, node.level, node.module)
                    if node.level
                    else node.module or ""
                )
                if base != PACKAGE and not base.startswith(PACKAGE + "."):
                    continue
                names = tuple(a.name for a in node.names)
                submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
                for sub in submodules:  # `from depthmux.x import module`
                    found.append(Import(path, node.lineno, importer, sub, (), runtime))
                rest = tuple(n for n in names if f"{base}.{n}" not in modules)
                if rest or not submodules:
                    found.append(Import(path, node.lineno, importer, base, rest, runtime))
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                func = node.func
                fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                arg = node.args[0].value
                if fname == "import_module" and isinstance(arg, str) and arg.split(".")[0] == PACKAGE:
                    found.append(Import(path, node.lineno, importer, arg, (), runtime))
    return found, modules


def _where(root: Path, imp: Import) -> str:
    return f"{imp.file.relative_to(root)}:{imp.line}"


def direction_violations(root: Path) -> list[str]:
    imports, _ = collect_imports(root)
    out = []
    for imp in imports:
        src, dst = package_of(imp.importer), package_of(imp.target)
        src_level, dst_level = level_of(src), level_of(dst)
        if src_level is None or dst_level is None or src == dst:
            continue  # unknown packages are reported by unknown_packages()
        if dst_level >= src_level:
            out.append(f"{_where(root, imp)}: {imp.importer} ({_label(src)}) -> {imp.target} ({_label(dst)})")
    return out


def unknown_packages(root: Path) -> list[str]:
    imports, modules = collect_imports(root)
    out = [
        f"{PACKAGE}/{m.split('.')[1]}: module {m} is in no known package"
        for m in sorted(modules)
        if level_of(package_of(m)) is None
    ]
    out += [
        f"{_where(root, imp)}: {imp.importer} imports {imp.target}, which is in no known package"
        for imp in imports
        if level_of(package_of(imp.target)) is None
    ]
    return out


def folders_without_init(root: Path) -> list[str]:
    folders = sorted({p.parent for p in (root / PACKAGE).rglob("*.py")})
    return [
        f"{f.relative_to(root)}/ has modules but no __init__.py (a non-editable install would leave it out)"
        for f in folders
        if not (f / "__init__.py").is_file()
    ]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(root: Path) -> list[str]:
    imports, _ = collect_imports(root)
    out = []
    for imp in imports:
        if package_of(imp.importer) == package_of(imp.target):
            continue
        private = [p for p in imp.target.split(".") if _private(p)] + [n for n in imp.names if _private(n)]
        if private:
            out.append(f"{_where(root, imp)}: {imp.importer} imports private {', '.join(private)} from {imp.target}")
    return out


def import_cycles(root: Path) -> list[str]:
    """Cycles in the module graph of import-time imports (Tarjan's strongly connected components)."""
    imports, modules = collect_imports(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.module_level and imp.target in modules and imp.target != imp.importer:
            graph[imp.importer].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for comp in components:
        members = set(comp)
        # the shortest cycle through the first member (breadth-first inside the component)
        start, parent, queue, cycle = comp[0], {comp[0]: None}, [comp[0]], comp
        while queue:
            v = queue.pop(0)
            if start in graph[v]:
                path = [v]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                cycle = [*reversed(path), start]
                break
            for w in sorted(graph[v] & members):
                if w not in parent:
                    parent[w] = v
                    queue.append(w)
        out.append("import cycle: " + " -> ".join(cycle) + f" (modules in the cycle: {', '.join(comp)})")
    return out


def long_files(root: Path) -> list[str]:
    out = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not re.search(r"^\s*Length: \S.{10,}", doc, re.MULTILINE):
            out.append(
                f"{path.relative_to(root)}: {n} lines (> {MAX_LINES}) and its docstring has no 'Length: <why>' line"
            )
    return out


def _report(title: str, problems: list[str]) -> str:
    return f"{len(problems)} {title}:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------- the real tree


def test_import_direction():
    problems = direction_violations(SRC)
    assert not problems, _report("imports against the layout direction (docs/CONVENTIONS.md)", problems)


def test_no_import_cycles():
    problems = import_cycles(SRC)
    assert not problems, _report("import cycles", problems)


def test_every_module_in_a_known_package():
    problems = unknown_packages(SRC)
    assert not problems, _report(
        "modules outside the known packages (add the package to LEVELS and the docs)", problems
    )


def test_every_package_folder_has_an_init():
    problems = folders_without_init(SRC)
    assert not problems, _report("package folders without __init__.py", problems)


def test_no_private_names_across_packages():
    problems = private_imports(SRC)
    assert not problems, _report("imports of private names from another package", problems)


def test_long_files_say_why():
    problems = long_files(SRC)
    assert not problems, _report("long files", problems)


def test_levels_match_the_conventions_doc():
    doc = (SRC.parent / "docs" / "CONVENTIONS.md").read_text(encoding="utf-8")
    for package, level in LEVELS.items():
        assert re.search(rf"\|\s*{level}\s*\|[^\n]*`{PACKAGE}\.{package}`", doc), (
            f"docs/CONVENTIONS.md does not list {PACKAGE}.{package} at level {level}"
        )


# ---------------------------------------------------------------- the checker itself, on synthetic trees


def make_tree(root: Path, files: dict[str, str], inits: bool = True) -> Path:
    for rel, text in files.items():
        path = root / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for folder in {p.parent for p in (root / PACKAGE).rglob("*.py")} if inits else ():
        (folder / "__init__.py").touch()
    return root


CLEAN = {
    "__init__.py": "from depthmux.errors import DepthmuxError\n",
    "__main__.py": "from depthmux.cli import main\n",
    "errors.py": "class DepthmuxError(ValueError): ...\n",
    "utils/flops.py": "import math\nfrom depthmux.errors import DepthmuxError\n",
    "assets.py": "from depthmux import DepthmuxError\n",
    "multiplexing/model.py": "from depthmux.utils.flops import math\nfrom .mixers import Mixer\n",
    "multiplexing/mixers.py": "from depthmux import DepthmuxError\nclass Mixer: ...\n",
    "recipes/mux.py": "from depthmux.multiplexing.model import Mixer\nimport depthmux.training.mux\n",
    "training/mux.py": "from depthmux.multiplexing import model\n",
    "cli/__init__.py": "def main():\n    from depthmux.recipes import mux\n",
}


def test_checker_accepts_a_clean_tree(tmp_path):
    root = make_tree(tmp_path, CLEAN)
    assert direction_violations(root) == []
    assert import_cycles(root) == []
    assert unknown_packages(root) == []
    assert private_imports(root) == []
    assert long_files(root) == []
    assert folders_without_init(root) == []


def test_checker_reports_a_folder_without_init(tmp_path):
    root = make_tree(tmp_path, {"__init__.py": "", "recipes/mux.py": "", "cli/__init__.py": ""}, inits=False)
    assert folders_without_init(root) == [
        f"{PACKAGE}/recipes/ has modules but no __init__.py (a non-editable install would leave it out)"
    ]


@pytest.mark.parametrize(
    ("rel", "source", "expected"),
    [
        (
            "multiplexing/bad.py",
            "from depthmux.recipes.mux import x\n",
            "multiplexing/bad.py:1: depthmux.multiplexing.bad (level 2) -> depthmux.recipes.mux (level 7)",
        ),
        (
            "multiplexing/bad.py",
            "def f():\n    import depthmux.cli\n",
            "multiplexing/bad.py:2: depthmux.multiplexing.bad (level 2) -> depthmux.cli (level 9)",
        ),
        (
            "multiplexing/bad.py",
            "from ..training import mux\n",
            "depthmux.multiplexing.bad (level 2) -> depthmux.training.mux (level 5)",
        ),
        (
            "multiplexing/bad.py",
            "from depthmux.recursion import modeling\n",  # same level, other package
            "depthmux.multiplexing.bad (level 2) -> depthmux.recursion (level 2)",
        ),
        (
            "utils/bad.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from depthmux.data import x\n",
            "utils/bad.py:3: depthmux.utils.bad (level 0) -> depthmux.data (level 1)",
        ),
        (
            "errors.py",
            "from depthmux.utils import flops\n",
            "errors.py:1: depthmux.errors (level 0, foundation) -> depthmux.utils.flops (level 0)",
        ),
        (
            "utils/bad.py",
            "from depthmux.assets import x\n",  # same level, other package
            "depthmux.utils.bad (level 0) -> depthmux.assets (level 0)",
        ),
        (
            "utils/bad.py",
            "import importlib\nimportlib.import_module('depthmux.lm')\n",
            "depthmux.utils.bad (level 0) -> depthmux.lm (level 4)",
        ),
        (
            "__init__.py",
            "def main():\n    from depthmux.cli import main\n",
            "__init__.py:2: depthmux (package root) -> depthmux.cli (level 9)",
        ),
    ],
)
def test_checker_reports_a_forbidden_import(tmp_path, rel, source, expected):
    root = make_tree(tmp_path, {**CLEAN, rel: source})
    problems = direction_violations(root)
    assert any(expected in p for p in problems), problems


def test_checker_reports_a_cycle(tmp_path):
    root = make_tree(tmp_path, {**CLEAN, "multiplexing/mixers.py": "from depthmux.multiplexing.model import x\n"})
    problems = import_cycles(root)
    assert len(problems) == 1
    assert "depthmux.multiplexing.mixers -> depthmux.multiplexing.model -> depthmux.multiplexing.mixers" in problems[0]


def test_checker_ignores_function_level_and_type_checking_imports_for_cycles(tmp_path):
    mixers = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from depthmux.multiplexing.model import x\n"
        "def f():\n    from depthmux.multiplexing import model\n"
    )
    root = make_tree(tmp_path, {**CLEAN, "multiplexing/mixers.py": mixers})
    assert import_cycles(root) == []


def test_checker_reports_a_cycle_through_a_package_init(tmp_path):
    root = make_tree(
        tmp_path,
        {
            **CLEAN,
            "recursion/__init__.py": "from .modeling import Model\n",
            "recursion/modeling.py": "from depthmux.recursion import config\n"
            "from depthmux.recursion import helper_name\n",
            "recursion/config.py": "",
        },
    )
    problems = import_cycles(root)
    assert len(problems) == 1
    assert "depthmux.recursion -> depthmux.recursion.modeling -> depthmux.recursion" in problems[0]


def test_checker_reports_unknown_packages(tmp_path):
    root = make_tree(tmp_path, {**CLEAN, "misc/thing.py": "", "cli/x.py": "import depthmux.nowhere\n"})
    problems = unknown_packages(root)
    assert any("module depthmux.misc.thing is in no known package" in p for p in problems), problems
    assert any("imports depthmux.nowhere, which is in no known package" in p for p in problems), problems


def test_checker_reports_private_imports(tmp_path):
    root = make_tree(
        tmp_path,
        {
            **CLEAN,
            "cli/lm.py": "from depthmux.recipes.mux import _find_run_meta, ok\n",
            "recipes/x.py": "from depthmux.training._impl import f\n",
            "training/y.py": "from depthmux.training.mux import _same_package_is_fine\n",
        },
    )
    problems = private_imports(root)
    assert len(problems) == 2, problems
    assert "imports private _find_run_meta from depthmux.recipes.mux" in problems[0]
    assert "imports private _impl from depthmux.training._impl" in problems[1]


def test_checker_reports_long_files_without_a_reason(tmp_path):
    body = "x = 1\n" * MAX_LINES
    root = make_tree(
        tmp_path,
        {
            **CLEAN,
            "utils/long.py": '"""Helpers."""\n' + body,
            "utils/why.py": '"""Helpers.\n\nLength: one table of 400 constants, split it and '
            'it reads worse.\n"""\n' + body,
            "utils/short.py": '"""Helpers."""\n' + "x = 1\n" * (MAX_LINES - 1),
        },
    )
    assert long_files(root) == [
        f"{PACKAGE}/utils/long.py: {MAX_LINES + 1} lines (> {MAX_LINES}) and its docstring has no 'Length: <why>' line"
    ]
