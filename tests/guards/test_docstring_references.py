"""Docstrings name only what exists: every ``:func:``/``:meth:``/``:class:``/``:mod:``/
``:data:``/``:attr:``/``:exc:`` target in ``cachebrew`` resolves to a module, class, function
or attribute of the package (or Python's builtins).

A target resolves when it is a dotted path from an importable module (``~`` and ``!`` prefixes
and a trailing ``()`` dropped), a name relative to the docstring's class or module (``.x`` is
relative to the package), a name any module of the package defines, or an attribute the package
assigns on ``self`` (instance attributes exist only at run time).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "cachebrew"
ROLE = re.compile(r":(?:meth|func|mod|class|data|attr|exc|obj):`([^`]+)`")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue  # importing it runs the CLI
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _self_attributes() -> set[str]:
    names = set()
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            target = getattr(node, "value", None)
            if isinstance(node, ast.Attribute) and getattr(target, "id", None) == "self":
                names.add(node.attr)
    return names


def _lookup(start: Any, parts: list[str]) -> bool:
    obj = start
    for part in parts:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def resolves(target: str, module: ModuleType, cls: type | None, self_attributes: set[str]) -> bool:
    """Whether a docstring cross-reference ``target`` names something that exists."""
    name = target.strip().lstrip("~!").removesuffix("()")
    if name.startswith("."):
        package = module.__name__ if hasattr(module, "__path__") else module.__package__
        if importlib.util.find_spec(f"{package}{name}") is not None:
            return True
        name = name[1:]
    parts = name.split(".")
    for i in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
        try:
            found = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        if _lookup(found, parts[i:]):
            return True
    package_modules = [m for n, m in sys.modules.items() if n.startswith("cachebrew") and m]
    scopes = [s for s in (cls, module) if s is not None] + package_modules
    if any(_lookup(scope, parts) for scope in scopes):
        return True
    return (len(parts) == 1 and parts[0] in self_attributes) or hasattr(builtins, parts[0])


def _references(path: Path, module: ModuleType) -> list[tuple[int, str, type | None]]:
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    classes = {id(n): n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    owner: dict[int, ast.ClassDef] = {}
    for node in classes.values():
        for child in ast.walk(node):
            owner.setdefault(id(child), node)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node, clean=False)
        enclosing = owner.get(id(node))
        cls = getattr(module, enclosing.name, None) if enclosing is not None else None
        for match in ROLE.finditer(doc or ""):
            found.append((getattr(node, "lineno", 1), match.group(1), cls))
    return found


def test_every_docstring_reference_resolves() -> None:
    attributes = _self_attributes()
    modules = {name: importlib.import_module(name) for name in _modules()}  # all, before lookups
    stale = []
    for name, path in _modules().items():
        for line, target, cls in _references(path, modules[name]):
            if not resolves(target, modules[name], cls, attributes):
                stale.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {target}")
    assert not stale, "docstrings name what does not exist:\n" + "\n".join(stale)


@pytest.mark.parametrize(
    "target",
    [
        "CacheWriter.no_such_method",
        "~cachebrew.cache.format.storage.Storage",
        ".multitask",
        "cachebrew.no_such_module.function",
    ],
)
def test_a_stale_reference_is_caught(target: str) -> None:
    module = importlib.import_module("cachebrew.distill.loop")
    assert not resolves(target, module, None, {"loss_history"})


@pytest.mark.parametrize(
    "target",
    ["~cachebrew.cache.format.storage.CacheLocation", ".sources", "CacheWriter.add", "Path"],
)
def test_a_live_reference_resolves(target: str) -> None:
    importlib.import_module("cachebrew.cache.write.writer")
    module = importlib.import_module("cachebrew.distill.loop")
    assert resolves(target, module, None, set())
