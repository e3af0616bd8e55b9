"""The package's shape, kept by tests: the stages' import rules, module sizes, top-level count.

DESIGN §1-2: ``distill/`` and ``runner/`` never import ``teacher/`` (stage two runs without
the teacher's code path); ``cache/`` (the format between the stages) never imports
``distill/`` or ``runner/``. Checked in a fresh interpreter so nothing imported by other tests
hides a violation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "cachebrew"
MAX_MODULE_LINES = 450
MAX_TOP_LEVEL_MODULES = 16


def _loaded_after_import(module: str) -> list[str]:
    code = (
        f"import importlib, json, sys; importlib.import_module({module!r}); "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('cachebrew'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout)


def _submodules(package: str) -> list[str]:
    folder = PACKAGE / package.removeprefix("cachebrew.").replace(".", "/")
    return [f"{package}.{p.stem}" for p in sorted(folder.glob("*.py")) if p.stem != "__init__"]


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("cachebrew.distill", ("cachebrew.teacher",)),
        ("cachebrew.runner", ("cachebrew.teacher",)),
        ("cachebrew.cache", ("cachebrew.distill", "cachebrew.runner", "cachebrew.teacher")),
    ],
)
def test_stage_import_rules(importer: str, forbidden: tuple[str, ...]) -> None:
    # Every module of the package, not only its __init__ (lazy exports would hide imports).
    modules = [importer, *_submodules(importer)]
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += (
        "import json, sys\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('cachebrew'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = json.loads(out.stdout)
    bad = [m for m in loaded if m.startswith(forbidden)]
    assert not bad, f"importing {importer} loads {bad}"


def test_import_cachebrew_is_light() -> None:
    loaded = _loaded_after_import("cachebrew")
    assert not [m for m in loaded if m.startswith(("cachebrew.distill", "cachebrew.teacher"))]


def test_no_module_over_the_size_limit() -> None:
    sizes = {
        str(p.relative_to(PACKAGE.parent)): len(p.read_text(encoding="utf-8").splitlines())
        for p in PACKAGE.rglob("*.py")
    }
    too_long = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_top_level_stays_small() -> None:
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules
