"""The project's import graph: no circles, libraries under the harness, wings apart.

Layers, bottom to top:

* libraries: ``problems``, ``extensions`` (never import ``bench``);
* the shared floor: ``bench.spec``, ``bench.environment``, ``bench.results_io``, ``bench.plotting``,
  ... (every ``bench`` module that is neither a wing nor the top);
* the wings: ``bench.overhead``, ``bench.gridsearch`` (each imports the floor and itself only);
* the top: ``bench.cli``, ``bench.__main__`` and ``bench.commands`` (dispatch to the wings).

Every import counts, also one inside a function, and so does a string import whose target is
written out (``importlib.import_module("bench.spec")``, ``__import__("bench.spec")``).

Argument parsing lives in CLI modules: ``cli.py`` and ``cli_*.py`` (one ``cli_<tool>.py`` per
``python -m`` tool, beside the library module whose logic it runs), ``__main__.py``,
``bench/commands/*`` and the top, plus the declared CLI helper ``bench.options`` (the argparse
validators every CLI shares). Only CLI modules import ``argparse``, and only CLI modules import
CLI modules (``bench.options`` included): a library module never parses arguments.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "extensions", "problems")
LIBRARIES = ("problems", "extensions")
WINGS = ("bench.overhead", "bench.gridsearch")
TOP = ("bench.cli", "bench.__main__", "bench.commands")
#: floor modules that only CLI modules may import (they exist to build parsers)
CLI_HELPERS = ("bench.options",)
#: standard-library modules only CLI modules may import
CLI_ONLY_STDLIB = ("argparse",)
#: non-CLI modules that still parse arguments, each with the change that ends it; an entry that is
#: no longer needed fails ``test_no_stale_exemption`` (delete it then)
EXEMPT: dict[str, str] = {}


def module_names(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the packages."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _string_import(node: ast.Call) -> str | None:
    """The module ``importlib.import_module("x")`` / ``__import__("x")`` names, if literal."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if called not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return None if first.value.startswith(".") else first.value
    return None


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import sub`` resolves to ``pkg.sub``)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.Call) and _string_import(node):
            targets = [_string_import(node)]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import sub`` imports the submodule; ``from pkg import obj`` the package
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:  # the most specific project module (parents' __init__ not counted)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    files = module_names(root, packages)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def stdlib_users(root: Path = ROOT, packages=PACKAGES, stdlib=CLI_ONLY_STDLIB) -> dict[str, set]:
    """Module -> which of ``stdlib`` it imports (modules importing none are left out)."""
    out = {}
    for name, path in module_names(root, packages).items():
        used = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                used |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                used.add(node.module.split(".")[0])
            elif isinstance(node, ast.Call) and _string_import(node):
                used.add(_string_import(node).split(".")[0])
        if used & set(stdlib):
            out[name] = used & set(stdlib)
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(name: str) -> str:
    """``library``, ``floor``, a wing's name or ``top``."""
    if name.split(".")[0] in LIBRARIES:
        return "library"
    if any(_within(name, top) for top in TOP):
        return "top"
    for wing in WINGS:
        if _within(name, wing):
            return wing
    return "floor"


def is_cli(name: str) -> bool:
    """Whether ``name`` is a command-line module (it may parse arguments)."""
    last = name.rpartition(".")[2]
    return (
        last in ("cli", "__main__")
        or last.startswith("cli_")
        or name in CLI_HELPERS
        or any(_within(name, top) for top in TOP)
    )


def violations(
    graph: dict[str, set[str]],
    parsers: dict[str, set[str]] | None = None,
    exempt: dict[str, str] | None = None,
) -> list[str]:
    """Every import going up a layer, across wings, or into a CLI module or argparse from a library.

    Args:
        graph: module -> the project modules it imports (:func:`import_graph`).
        parsers: module -> the CLI-only standard modules it imports (:func:`stdlib_users`).
        exempt: modules whose CLI-rule breaches are known and scheduled to end.

    """
    exempt = exempt or {}
    out = [
        f"{name} imports {', '.join(sorted(used))}: argument parsing outside a CLI module"
        for name, used in sorted((parsers or {}).items())
        if not is_cli(name) and name not in exempt
    ]
    for name, targets in sorted(graph.items()):
        here = layer_of(name)
        for target in sorted(targets):
            there = layer_of(target)
            if here == "library" and there != "library":
                out.append(f"{name} -> {target}: a library imports the harness")
            elif here == "floor" and there not in ("library", "floor"):
                out.append(f"{name} -> {target}: the shared floor imports up into {there}")
            elif here in WINGS and there not in ("library", "floor", here):
                out.append(f"{name} -> {target}: wing {here} imports {there}")
            elif is_cli(target) and not is_cli(name) and name not in exempt:
                out.append(f"{name} -> {target}: a library module imports a CLI module")
    return out


# --------------------------------------------------------------------------------------------
# the project
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_wings_and_the_floor_exist(graph):
    layers = {layer_of(name) for name in graph}
    assert {"library", "floor", "top", *WINGS} <= layers
    assert {"bench.overhead.cli", "bench.gridsearch.cli", "bench.spec"} <= set(graph)


def test_no_import_circles(graph):
    assert circles(graph) == []


def test_no_upward_or_cross_wing_import_and_parsing_only_in_cli_modules(graph):
    assert violations(graph, stdlib_users(), EXEMPT) == []


def test_no_stale_exemption(graph):
    parsers = stdlib_users()
    needed = {
        name for name in EXEMPT if name in parsers or any(is_cli(t) for t in graph.get(name, ()))
    }
    assert set(EXEMPT) == needed, f"no longer needed, delete from EXEMPT: {set(EXEMPT) - needed}"


# --------------------------------------------------------------------------------------------
# the checker itself, on a made-up tree
# --------------------------------------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(tmp_path)


BASE = {
    "bench/__init__.py": "",
    "bench/spec.py": "import problems.registry\n",
    "bench/overhead/__init__.py": "",
    "bench/overhead/run.py": "from bench import spec\n",
    "bench/overhead/cli.py": "import argparse\nfrom bench.overhead import run\n",
    "bench/overhead/cli_gate.py": "import argparse\nfrom bench import options\nfrom . import run\n",
    "bench/overhead/__main__.py": "from bench.overhead.cli import main\n",
    "bench/options.py": "import argparse\n",
    "bench/gridsearch/__init__.py": "",
    "bench/gridsearch/train.py": "from bench.spec import X\n",
    "bench/cli.py": "import bench.overhead.cli\n",
    "problems/__init__.py": "",
    "problems/registry.py": "",
    "extensions/__init__.py": "",
}


def test_checker_accepts_a_clean_tree(tmp_path):
    graph = _tree(tmp_path, BASE)
    assert graph["bench.overhead.run"] == {"bench.spec"}
    assert graph["bench.overhead.cli_gate"] == {"bench.options", "bench.overhead.run"}
    parsers = stdlib_users(tmp_path)
    assert set(parsers) == {"bench.options", "bench.overhead.cli", "bench.overhead.cli_gate"}
    assert circles(graph) == [] and violations(graph, parsers) == []


@pytest.mark.parametrize(
    ("rel", "text", "expected"),
    [
        ("problems/registry.py", "from bench.spec import PROBLEMS\n", "a library imports"),
        ("bench/spec.py", "def f():\n    from bench.overhead import run\n", "floor imports up"),
        (
            "bench/gridsearch/train.py",
            "from bench.overhead.run import x\n",
            "wing bench.gridsearch",
        ),
        ("bench/overhead/run.py", "from bench.overhead.cli import build\n", "imports a CLI"),
        ("bench/overhead/run.py", "from .cli import build\n", "imports a CLI"),
        ("bench/overhead/run.py", "from .cli_gate import main\n", "imports a CLI"),
        ("bench/overhead/run.py", "from bench import options\n", "imports a CLI"),
        ("bench/overhead/run.py", "import argparse\n", "parsing outside a CLI"),
        ("bench/overhead/run.py", "def main():\n    from argparse import A\n", "parsing outside"),
        ("bench/spec.py", "import argparse\n", "parsing outside a CLI"),
        ("problems/registry.py", "import argparse\n", "parsing outside a CLI"),
        (
            "bench/overhead/run.py",
            "import importlib\nimportlib.import_module('bench.gridsearch.train')\n",
            "wing bench.overhead",
        ),
        ("bench/spec.py", "def f():\n    __import__('bench.overhead.run')\n", "floor imports up"),
    ],
    ids=[
        "library-up",
        "floor-up-lazy",
        "cross-wing",
        "cli-import",
        "relative-cli-import",
        "cli-tool-import",
        "cli-helper-import",
        "argparse-in-wing-library",
        "argparse-lazy",
        "argparse-in-floor",
        "argparse-in-library",
        "import-module-string",
        "dunder-import-string",
    ],
)
def test_checker_finds_a_bad_import(tmp_path, rel, text, expected):
    graph = _tree(tmp_path, {**BASE, rel: text})
    found = violations(graph, stdlib_users(tmp_path))
    assert any(expected in v for v in found), found


def test_an_exempt_module_may_parse_until_its_move(tmp_path):
    graph = _tree(
        tmp_path, {**BASE, "bench/overhead/run.py": "import argparse\nimport bench.options\n"}
    )
    assert len(violations(graph, stdlib_users(tmp_path))) == 2
    assert violations(graph, stdlib_users(tmp_path), {"bench.overhead.run": "moves"}) == []


def test_checker_finds_a_circle(tmp_path):
    graph = _tree(tmp_path, {**BASE, "bench/spec.py": "import bench.results\n",
                             "bench/results.py": "def f():\n    import bench.spec\n"})  # fmt: skip
    assert circles(graph) == [["bench.results", "bench.spec"]]
