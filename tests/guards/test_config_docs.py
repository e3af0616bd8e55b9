"""docs/config.md cannot drift from the config dataclasses: each table (named by its
``<!-- fields: module:Class [exclude=a,b] -->`` line) lists every field, no other key, and
each documented default equals the dataclass default."""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
_MARKER = re.compile(r"<!-- fields: ([\w.]+):(\w+)(?: exclude=([\w,]+))? -->")
_ROW = re.compile(r"^\| `([\w.\[\]]+)` \| [^|]+ \| (required|`[^`]*`) \| .+ \|$")


def _tables() -> list[tuple[type, set[str], dict[str, str]]]:
    tables = []
    lines = DOC.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        marker = _MARKER.search(line)
        if marker is None:
            continue
        cls = getattr(importlib.import_module(marker.group(1)), marker.group(2))
        excluded = set((marker.group(3) or "").split(",")) - {""}
        rows: dict[str, str] = {}
        for row in lines[i + 3 :]:  # after the header and separator lines
            if not row.startswith("|"):
                break
            match = _ROW.match(row)
            assert match, f"docs/config.md: cannot parse the row {row!r}"
            rows[match.group(1)] = match.group(2)
        tables.append((cls, excluded, rows))
    return tables


TABLES = _tables()


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _matches(documented: str, field: dataclasses.Field[Any]) -> bool:
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
        return documented == "required"
    if documented == "required":
        return False
    value = yaml.safe_load(documented.strip("`"))
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
    if dataclasses.is_dataclass(default):  # a nested config: `{}` means all its defaults
        return value == {} and default == type(default)()
    if value == "none" and default == "none":
        return True
    return bool(_plain(default) == value)


def test_every_config_has_a_table() -> None:
    names = {cls.__name__ for cls, _, _ in TABLES}
    assert {"DistillRunConfig", "DistillationConfig", "TrainingConfig", "OptimizerConfig",
            "ScheduleConfig", "EvalConfig", "DataConfig", "InitFromTeacher", "SweepSpec",
            "PrecomputeConfig", "FinetuneConfig", "IntermediateMatch"} <= names  # fmt: skip


@pytest.mark.parametrize("cls, excluded, rows", TABLES, ids=[t[0].__name__ for t in TABLES])
def test_table_matches_the_dataclass(cls: type, excluded: set[str], rows: dict[str, str]) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in excluded}
    missing = sorted(set(fields) - set(rows))
    unknown = sorted(set(rows) - set(fields))
    assert not missing, f"docs/config.md: {cls.__name__} fields not documented: {missing}"
    assert not unknown, f"docs/config.md: {cls.__name__} has no fields {unknown}"
    wrong = {name: rows[name] for name, f in fields.items() if not _matches(rows[name], f)}
    assert not wrong, f"docs/config.md: {cls.__name__} defaults differ from the code: {wrong}"
