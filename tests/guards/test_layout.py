"""The package's shape, kept by tests: the import table, module sizes, top-level count.

**The import table.** Every module of ``cachebrew`` lives in one room: a folder (``corpus``,
``distill``, ...), one of the six rooms of ``cache/`` (``cache.logits`` ... ``cache.tools``), the
``cache`` package itself (its lazy export table), or the top level (``top``: the leaves
``errors``, ``config``, ``losses``, ...; ``api``: ``cachebrew/__init__``; ``main``:
``__main__``). :data:`MAY_IMPORT` says which rooms each room may import (a room may always import
itself); ``docs/layout.md`` shows the same table. No room imports another room's private
(``_name``) names.

The checker reads source, never runs it: it sees module-level imports and imports inside
functions, ``importlib.import_module("...")`` with a literal name, and the values of a
module-level ``_LAZY = {name: "module"}`` table (the lazy exports of a package ``__init__``).
Every rule is also fed a synthetic tree that breaks it, to prove the check can fail.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "cachebrew"
MAX_MODULE_LINES = 450
MAX_TOP_LEVEL_MODULES = 16
ROOT = "cachebrew"
CACHE_ROOMS = ("logits", "format", "read", "write", "feed", "tools")
FOLDERS = ("cache", "cli", "corpus", "data", "distill", "hf", "models", "runner", "teacher")

_STAGE_USES = ("top", "corpus", "models", "cache", "cache.logits", "cache.format", "cache.read")

#: room -> the rooms it may import besides itself ("X imports only these"). docs/layout.md
#: prints the same table; test_docs_show_the_same_table keeps them equal.
MAY_IMPORT: dict[str, frozenset[str]] = {
    room: frozenset(rooms)
    for room, rooms in {
        # the top level: the leaves (errors, files, validation, config, losses, metrics, ...)
        "top": (),
        "api": ("top", "distill", "cache.feed"),  # cachebrew/__init__: the public names
        "main": ("cli",),  # python -m cachebrew
        "corpus": ("top",),
        "models": ("top",),
        # cache/: each room imports only rooms before it; read and write never each other
        "cache.logits": ("top",),
        "cache.format": ("top", "cache.logits"),
        "cache.read": ("top", "cache.logits", "cache.format"),
        "cache.write": ("top", "cache.logits", "cache.format"),
        "cache.feed": ("top", "cache.logits", "cache.format", "cache.read"),
        "cache.tools": (
            "top",
            "cache.logits",
            "cache.format",
            "cache.read",
            "cache.write",
            "cache.feed",
        ),
        "cache": (
            "top",
            "cache.logits",
            "cache.format",
            "cache.read",
            "cache.write",
            "cache.feed",
            "cache.tools",
        ),
        # the stages: the library loop needs only the logits rows of the cache
        "distill": ("top", "cache.logits"),
        "teacher": (*_STAGE_USES, "cache.write", "cache.feed", "cache.tools", "distill"),
        "runner": (*_STAGE_USES, "cache.feed", "distill"),
        "data": ("top", "models"),
        # students in Hugging Face's Trainer: the loop's loss, the runner's student tokens
        "hf": (*_STAGE_USES, "cache.feed", "distill", "runner"),
        # the command layer drives every stage
        "cli": (*_STAGE_USES, "cache.tools", "teacher", "runner", "data"),
    }.items()
}


def module_name(path: Path, package_dir: Path) -> str:
    """``cachebrew.cache.read.shard`` for ``<package_dir>/cache/read/shard.py``."""
    parts = path.relative_to(package_dir).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((ROOT, *parts))


def room_of(module: str) -> str | None:
    """The room of a dotted module name; None for a folder the table does not know."""
    parts = module.split(".")[1:]
    if not parts:
        return "api"
    if parts == ["__main__"]:
        return "main"
    if len(parts) == 1 and parts[0] not in FOLDERS:
        return "top"
    if parts[0] not in FOLDERS:
        return None
    if parts[0] == "cache" and len(parts) > 1 and parts[1] in CACHE_ROOMS:
        return f"cache.{parts[1]}"
    return parts[0]


def _is_module(name: str, package_dir: Path) -> bool:
    path = package_dir.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _from_base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def imported_modules(path: Path, package_dir: Path) -> Iterator[tuple[int, str, str | None]]:
    """``(line, module, name)`` for every module of the package ``path`` imports, anywhere in
    it; ``name`` is the name taken from the module by ``from module import name``, else None."""
    module = module_name(path, package_dir)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        found: list[tuple[str, str | None]] = []
        if isinstance(node, ast.Import):
            found = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, module, path.name == "__init__.py")
            # `from pkg import sub` imports the module pkg.sub if there is one, else a name of pkg
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, None) if _is_module(sub, package_dir) else (base, alias.name))
        elif _is_import_module_call(node):
            found = [(node.args[0].value, None)]  # type: ignore[attr-defined]
        elif isinstance(node, ast.Assign) and _is_lazy_table(node):
            values = node.value.values  # type: ignore[attr-defined]
            found = [(v.value, None) for v in values if isinstance(v, ast.Constant)]
        for target, name in found:
            if target == ROOT or target.startswith(ROOT + "."):
                yield node.lineno, target, name


def _is_import_module_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call) or not node.args:
        return False
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    first = node.args[0]
    literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
    return called == "import_module" and literal


def _is_lazy_table(node: ast.Assign) -> bool:
    named = any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets)
    return named and isinstance(node.value, ast.Dict)


def import_violations(
    package_dir: Path, table: Mapping[str, frozenset[str]] = MAY_IMPORT
) -> list[str]:
    """Every import of ``package_dir`` (a ``cachebrew`` tree) that breaks ``table`` or takes
    another room's private name, one line each (``file:line: room X imports module (room Y)``),
    and every module in a folder the table does not know."""
    problems: list[str] = []
    for path in sorted(package_dir.rglob("*.py")):
        where = path.relative_to(package_dir.parent)
        room = room_of(module_name(path, package_dir))
        if room not in table:
            problems.append(f"{where}: folder not in the import table; give it a row")
            continue
        for line, target, name in imported_modules(path, package_dir):
            target_room = room_of(target)
            if target_room == room:
                continue
            if target_room not in table[room]:
                problem = f"{where}:{line}: {room} imports {target} ({target_room})"
            elif name is not None and name.startswith("_") and not name.startswith("__"):
                problem = f"{where}:{line}: {room} imports the private {target}.{name}"
            else:
                continue
            if problem not in problems:
                problems.append(problem)
    return problems


# ---------------------------------------------------------------------------------------------
# The rules on the package


def test_every_import_follows_the_table() -> None:
    problems = import_violations(PACKAGE)
    assert not problems, "\n".join(["imports against MAY_IMPORT:", *problems])


def test_docs_show_the_same_table() -> None:
    rows = {}
    for line in (PACKAGE.parent / "docs" / "layout.md").read_text(encoding="utf-8").splitlines():
        cells = line.split("|")
        if line.startswith("| `") and len(cells) == 4 and "may import" not in line:
            room = cells[1].split("`")[1]
            rows[room] = frozenset(cells[2].split("`")[1::2])
    assert rows == MAY_IMPORT


HEAVY = ("fsspec", "zarr", "pyarrow", "numcodecs")


def loaded_after_import(module: str) -> list[str]:
    """Every ``cachebrew`` module and heavy dependency (:data:`HEAVY`) that importing
    ``module`` loads, in a fresh interpreter (nothing imported by other tests hides one)."""
    code = (
        f"import importlib, json, sys; importlib.import_module({module!r}); "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{(ROOT, *HEAVY)!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout)


def _beyond_logits(loaded: list[str]) -> list[str]:
    cache_rooms = [m for m in loaded if m.startswith("cachebrew.cache.")]
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    return [m for m in cache_rooms if room_of(m) != "cache.logits"] + heavy


def test_import_distill_loads_only_the_logits_room() -> None:
    assert _beyond_logits(loaded_after_import("cachebrew.distill")) == []


def test_import_cachebrew_is_light() -> None:
    loaded = loaded_after_import("cachebrew")
    assert [m for m in loaded if m.startswith(("cachebrew.distill", "cachebrew.teacher"))] == []
    assert [m for m in loaded if m.split(".")[0] in HEAVY] == []


def modules_over(package_dir: Path, limit: int) -> dict[str, int]:
    """Modules of ``package_dir`` longer than ``limit`` lines, with their length."""
    sizes = {
        str(p.relative_to(package_dir.parent)): len(p.read_text(encoding="utf-8").splitlines())
        for p in package_dir.rglob("*.py")
    }
    return {name: n for name, n in sizes.items() if n > limit}


def test_no_module_over_the_size_limit() -> None:
    too_long = modules_over(PACKAGE, MAX_MODULE_LINES)
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def top_level_modules(package_dir: Path) -> list[str]:
    return sorted(p.name for p in package_dir.glob("*.py"))


def test_top_level_stays_small() -> None:
    modules = top_level_modules(PACKAGE)
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules


# ---------------------------------------------------------------------------------------------
# Each rule can fail: synthetic trees that break it


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    """A ``cachebrew`` package under ``root`` with ``files`` (path -> source) and the
    ``__init__.py`` of every folder they sit in."""
    package_dir = root / ROOT
    for relative, source in files.items():
        path = package_dir / relative
        for folder in [path.parent, *path.parent.parents]:
            if folder == package_dir.parent:
                break
            init = folder / "__init__.py"
            if not init.exists():
                folder.mkdir(parents=True, exist_ok=True)
                init.write_text("")
        path.write_text(source)
    return package_dir


# one module path and one importable name per room
_ROOM_FILES = {
    "top": ("leaf.py", "cachebrew.leaf"),
    "api": ("__init__.py", "cachebrew"),
    "main": ("__main__.py", "cachebrew.__main__"),
    "cache": ("cache/__init__.py", "cachebrew.cache"),
    **{r: (f"{r.replace('.', '/')}/mod.py", f"cachebrew.{r}.mod") for r in MAY_IMPORT if "." in r},
    **{r: (f"{r}/mod.py", f"cachebrew.{r}.mod") for r in FOLDERS if r != "cache"},
}


def test_every_room_of_the_table_has_a_synthetic_module() -> None:
    assert set(_ROOM_FILES) == set(MAY_IMPORT)
    assert {room_of(name) for _, name in _ROOM_FILES.values()} == set(MAY_IMPORT)


@pytest.mark.parametrize("room", sorted(MAY_IMPORT))
def test_every_cell_of_the_table_is_enforced(room: str, tmp_path: Path) -> None:
    """Each room importing each room it may not is caught; each one it may is not."""
    path = _ROOM_FILES[room][0]
    for other in sorted(MAY_IMPORT):
        target = _ROOM_FILES[other][1]
        package_dir = _tree(tmp_path / other, {path: f"import {target}\n"})
        problems = import_violations(package_dir)
        if other == room or other in MAY_IMPORT[room]:
            assert problems == [], (room, other)
        else:
            assert problems == [f"cachebrew/{path}:1: {room} imports {target} ({other})"]


@pytest.mark.parametrize(
    ("rule", "files"),
    [
        (
            "read never imports write",
            {
                "cache/read/shard.py": "def f():\n    from cachebrew.cache.write import writer\n",
                "cache/write/writer.py": "",
            },
        ),
        (
            "write never imports read",
            {
                "cache/write/writer.py": "import cachebrew.cache.read.reader as reader\n",
            },
        ),
        (
            "logits imports no other cache room",
            {
                "cache/logits/sparse.py": "from ..format import spec\n",
                "cache/format/spec.py": "",
            },
        ),
        (
            "format comes before read",
            {
                "cache/format/spec.py": "import importlib\n"
                "def f():\n    return importlib.import_module('cachebrew.cache.read.reader')\n",
            },
        ),
        (
            "feed comes before tools",
            {
                "cache/feed/collate.py": "from cachebrew.cache.tools.compare import logprobs\n",
            },
        ),
        (
            "cache never imports distill (lazy table)",
            {
                "cache/__init__.py": "_LAZY = {'train': 'cachebrew.distill.loop'}\n",
            },
        ),
        (
            "cache never imports runner",
            {
                "cache/read/reader.py": "from cachebrew.runner.config import DistillRunConfig\n",
            },
        ),
        (
            "cache never imports teacher",
            {
                "cache/tools/compare.py": "from cachebrew import teacher\n",
                "teacher/__init__.py": "",
            },
        ),
        (
            "distill imports only cache.logits",
            {
                "distill/loop.py": "from cachebrew.cache.format.spec import FeatureSpec\n",
            },
        ),
        (
            "distill does not use the cache package's lazy names",
            {
                "distill/loop.py": "from cachebrew.cache import CacheWriter\n",
            },
        ),
        (
            "teacher never imports runner",
            {
                "teacher/precompute.py": "def f():\n    from cachebrew.runner.reads import load_runs\n",
            },
        ),
        (
            "distill never imports teacher",
            {
                "distill/loop.py": "from cachebrew.teacher.precompute import run_precompute\n",
            },
        ),
        (
            "runner never imports teacher",
            {
                "runner/__init__.py": "_LAZY = {'finetune': 'cachebrew.teacher.finetune'}\n",
            },
        ),
        (
            "no room takes another's private names",
            {
                "runner/checks.py": "from cachebrew.cache.read.reader import _open_index\n",
            },
        ),
        ("a new folder needs a row", {"newroom/mod.py": ""}),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_each_rule_can_fail(rule: str, files: Mapping[str, str], tmp_path: Path) -> None:
    assert import_violations(_tree(tmp_path, files)), f"not caught: {rule}"


def test_the_loading_check_can_fail() -> None:
    beyond = _beyond_logits(loaded_after_import("cachebrew.cache.read.reader"))
    assert "cachebrew.cache.read.reader" in beyond and "fsspec" in beyond


def test_the_size_and_count_checks_can_fail(tmp_path: Path) -> None:
    package_dir = _tree(tmp_path, {f"m{i}.py": "x = 1\n" * (i + 1) for i in range(3)})
    assert modules_over(package_dir, 2) == {"cachebrew/m2.py": 3}
    assert len(top_level_modules(package_dir)) == 4  # with __init__.py
