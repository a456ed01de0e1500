"""README's "## Layout" section names every module of ``problems/``, ``extensions/`` and ``bench/``.

The section's code block has one entry per folder: a line starting with the folder
(``bench/overhead/``), continued by indented lines. A module counts as named when its stem
(``cli_gate`` or ``cli_gate.py``) stands as a word in its own folder's entry; every package folder
needs an entry, and every ``name.py`` an entry names must exist in that folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("problems", "extensions", "bench")
#: named in the Layout although not in this tree yet, each with the change that adds it; an entry
#: whose file exists fails ``test_no_stale_allowance`` (delete it then)
NOT_YET: dict[str, str] = {}


def layout_entries(readme: str) -> dict[str, str]:
    """Folder (``bench/overhead/``) -> the text of its entry in the Layout section's code block."""
    match = re.search(r"^## Layout\n(.*?)(?=^## )", readme, re.S | re.M)
    assert match, "README.md has no '## Layout' section"
    block = re.search(r"^```\n(.*?)^```", match.group(1), re.S | re.M)
    assert block, "the Layout section has no code block"
    entries: dict[str, str] = {}
    folder = None
    for line in block.group(1).splitlines():
        if line and not line[0].isspace():
            folder, _, text = line.partition(" ")
            entries[folder] = text.strip()
        elif folder is not None:
            entries[folder] += " " + line.strip()
    return entries


def modules(root: Path = ROOT) -> list[Path]:
    """Every ``.py`` file of the packages, ``__init__.py`` left out, relative to ``root``."""
    return sorted(
        path.relative_to(root)
        for package in PACKAGES
        for path in (root / package).rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    )


def missing(entries: dict[str, str], files: list[Path]) -> list[str]:
    """The folders without an entry and the modules their folder's entry does not name."""
    out = []
    for path in files:
        folder = f"{path.parent.as_posix()}/"
        if folder not in entries:
            out.append(f"{folder}: no entry")
            continue
        if not re.search(rf"(?<![\w.]){re.escape(path.stem)}(?:\.py)?(?![\w])", entries[folder]):
            out.append(f"{path.as_posix()}: not named in the entry of {folder}")
    return sorted(set(out))


def named_but_absent(entries: dict[str, str], root: Path = ROOT) -> list[str]:
    """Every ``name.py`` an entry of a package folder names that is not in that folder."""
    out = []
    for folder, text in entries.items():
        if folder.split("/")[0] not in PACKAGES:
            continue
        for name in re.findall(r"(?<![\w.])(\w+\.py)\b", text):
            if not (root / folder / name).exists():
                out.append(f"{folder}{name}")
    return sorted(out)


@pytest.fixture(scope="module")
def entries() -> dict[str, str]:
    return layout_entries((ROOT / "README.md").read_text(encoding="utf-8"))


def test_every_module_is_named_in_its_folders_entry(entries):
    assert missing(entries, modules()) == []


def test_every_module_the_layout_names_exists(entries):
    assert set(named_but_absent(entries)) <= set(NOT_YET)


def test_no_stale_allowance():
    present = [name for name in NOT_YET if (ROOT / name).exists()]
    assert present == [], f"these exist now, delete them from NOT_YET: {present}"


# --------------------------------------------------------------------------------------------
# the checker itself, on a made-up README and tree
# --------------------------------------------------------------------------------------------

README = """# x

## Layout

```
problems/          registry.py, nets
problems/data/     cifar.py (the source)
bench/             spec.py, cli.py (`curvbench`),
                   __main__.py
bench/overhead/    run.py, cli_gate.py
```

## Development
"""


def _tree(tmp_path: Path, rels: list[str]) -> list[Path]:
    for rel in rels:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    return modules(tmp_path)


TREE = [
    "problems/__init__.py",
    "problems/registry.py",
    "problems/nets.py",
    "problems/data/cifar.py",
    "bench/spec.py",
    "bench/cli.py",
    "bench/__main__.py",
    "bench/overhead/run.py",
    "bench/overhead/cli_gate.py",
]


def test_checker_accepts_a_complete_layout(tmp_path):
    files = _tree(tmp_path, TREE)
    entries = layout_entries(README)
    assert entries["bench/"] == "spec.py, cli.py (`curvbench`), __main__.py"
    assert missing(entries, files) == [] and named_but_absent(entries, tmp_path) == []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("bench/overhead/memory.py", "bench/overhead/memory.py: not named"),
        ("bench/overhead/cli.py", "bench/overhead/cli.py: not named"),  # cli_gate does not count
        ("bench/overhead/gate.py", "bench/overhead/gate.py: not named"),  # nor does cli_gate.py
        ("bench/options.py", "bench/options.py: not named"),
        ("bench/gridsearch/grid.py", "bench/gridsearch/: no entry"),
        ("problems/data/mnist.py", "problems/data/mnist.py: not named"),
    ],
    ids=["new-module", "stem-inside-a-word", "stem-after-prefix", "floor", "folder", "subpackage"],
)
def test_checker_finds_an_unnamed_module(tmp_path, extra, expected):
    files = _tree(tmp_path, [*TREE, extra])
    found = missing(layout_entries(README), files)
    assert any(expected in f for f in found), found


def test_checker_finds_a_named_module_that_is_gone(tmp_path):
    _tree(tmp_path, [t for t in TREE if t != "bench/overhead/cli_gate.py"])
    assert named_but_absent(layout_entries(README), tmp_path) == ["bench/overhead/cli_gate.py"]
