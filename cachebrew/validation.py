"""Validation building blocks shared by every config (training, distillation, precompute, CLI).

Each ``check_*`` appends its problems to ``problems`` and returns the normalised value, so a
config can collect every problem and raise one :class:`~cachebrew.errors.ConfigError`.
:class:`ConfigBase` gives a frozen dataclass ``from_dict`` / ``from_json_file`` / ``from_yaml`` /
``to_dict`` with unknown keys reported next to bad values; :func:`load_config` is the one way a
command merges its YAML file, CLI flags and ``--set`` overrides. (The corpus keys every config
that reads a corpus shares are :class:`~cachebrew.corpus.fields.CorpusFields`.)

Relative paths written in a config file are relative to that file's folder: each config class
names its path fields in ``PATH_FIELDS`` (dotted for nested ones) and :func:`load_config`
resolves them (:func:`resolve_paths`); CLI flags and ``--set`` values stay relative to the
working directory.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import MISSING, fields
from typing import Any, ClassVar, Self, TypeVar

import torch
import yaml

from cachebrew.errors import ConfigError

PathLike = str | os.PathLike[str]
ConfigT = TypeVar("ConfigT", bound="ConfigBase")


def load_yaml_mapping(path: PathLike) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid YAML, or its top level is
            not a mapping; the message names ``path``.
    """
    return load_mapping(path, yaml.safe_load, yaml.YAMLError, "YAML")


def load_mapping(
    path: PathLike, parse: Callable[[Any], Any], parse_error: type[Exception], fmt: str
) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = parse(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from e
    except parse_error as e:
        raise ConfigError(f"{path}: invalid {fmt}: {e}") from e
    return require_mapping(data, path)


def require_mapping(data: object, path: PathLike) -> dict[str, Any]:
    if not isinstance(data, dict):
        got = "an empty document" if data is None else f"{type(data).__name__} {data!r}"
        raise ConfigError(f"{path}: the top level must be a mapping of field names, got {got}")
    return data


def is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_int(problems: list[str], name: str, value: Any, minimum: int) -> Any:
    if is_int(value) and value >= minimum:
        return int(value)
    problems.append(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def check_real(problems: list[str], name: str, value: Any, positive: bool = False) -> Any:
    if is_real(value) and (value > 0 or not positive):
        return float(value)
    wanted = "a number > 0" if positive else "a finite number"
    problems.append(f"{name}: expected {wanted}, got {value!r}")
    return value


def check_bool(problems: list[str], name: str, value: Any) -> None:
    if not isinstance(value, bool):
        problems.append(f"{name}: expected true or false, got {value!r}")


def check_choice(
    problems: list[str], name: str, value: Any, choices: Iterable[str], what: str
) -> None:
    choices = list(choices)
    if not (isinstance(value, str) and value in choices):
        problems.append(f"{name}: unknown {what} {value!r}; choose one of {sorted(choices)}")


def check_path(problems: list[str], name: str, value: Any, optional: bool) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, str | os.PathLike):
        return os.fspath(value)
    wanted = "None or a directory path" if optional else "a directory path"
    problems.append(f"{name}: expected {wanted}, got {value!r}")
    return value


def check_device(problems: list[str], value: Any) -> Any:
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, str):
        if value == "auto":
            return value
        try:
            torch.device(value)
            return value
        except (RuntimeError, ValueError) as e:
            problems.append(f"device: cannot parse {value!r} ({e}); use 'auto', 'cpu', 'cuda:N'")
            return value
    problems.append(
        f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, got {value!r}"
    )
    return value


def plain(value: Any) -> Any:
    if isinstance(value, ConfigBase):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def raise_if_any(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


def key_problems(cls: type, data: Mapping[Any, Any], where: str) -> list[str]:
    names = [f.name for f in fields(cls)]
    prefix = f"{where}: " if where else ""
    problems = []
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{prefix}unknown key {key!r}{hint}; valid fields: {names}")
    required = [
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    ]
    missing = [name for name in required if name not in data]
    if missing:
        problems.append(f"{prefix}missing required key(s) {missing}")
    return problems


# ``module:function`` factory specs and URLs (``s3://``, ``file://``) are not relative paths.
_NOT_A_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$|://")


def resolve_path(value: str, base_dir: PathLike) -> str:
    """``value`` joined to ``base_dir`` (made absolute) when it is a relative filesystem path.

    Absolute paths, ``~`` paths, URLs (``s3://...``) and ``module:function`` specs are returned
    unchanged, so resolving twice gives the same value.
    """
    if not value or value.startswith("~") or os.path.isabs(value) or _NOT_A_PATH.search(value):
        return value
    return os.path.normpath(os.path.join(os.path.abspath(base_dir), value))


def resolve_paths(
    data: Mapping[str, Any], path_fields: Collection[str], base_dir: PathLike, prefix: str = ""
) -> dict[str, Any]:
    """A copy of ``data`` with every string at a ``path_fields`` name resolved against
    ``base_dir`` (:func:`resolve_path`).

    Names are dotted for nested mappings (``eval.data``); a key may itself be dotted, as in a
    sweep's overrides (``{"init_from_teacher.path": "t"}``). Other values are kept as they are.
    """
    result: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if name in path_fields and isinstance(value, str):
            value = resolve_path(value, base_dir)
        elif isinstance(value, Mapping):
            value = resolve_paths(value, path_fields, base_dir, f"{name}.")
        result[key] = value
    return result


class ConfigBase:
    """Loading, saving and printing shared by the config dataclasses.

    ``PATH_FIELDS``: the (dotted) field names holding paths, resolved against the folder of the
    config file that gives them (:func:`load_config`).
    """

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build from a mapping of field names; raises ConfigError listing every problem."""
        return cls._from_mapping(data, where="")

    @classmethod
    def _from_mapping(cls, data: Any, where: str) -> Self:
        if not isinstance(data, Mapping):
            name = where or cls.__name__
            raise ConfigError(f"{name}: expected a mapping of field names, got {data!r}")
        problems = key_problems(cls, data, where)
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        try:
            # Validate the known keys too, so unknown keys and bad values are reported together.
            config = cls(**{k: v for k, v in data.items() if k in names})
        except ConfigError as e:
            problems.extend(f"{where}.{p}" if where else p for p in e.problems)
        except TypeError:
            if not problems:  # not the missing keys already reported: a bug, let it surface
                raise
        else:
            if not problems:
                return config
        raise ConfigError(problems)

    @classmethod
    def from_json_file(cls, path: PathLike) -> Self:
        """Build from a JSON file holding one object; problems name ``path``."""
        return cls._from_file_data(load_mapping(path, json.load, ValueError, "JSON"), path)

    @classmethod
    def from_yaml(cls, path: PathLike) -> Self:
        """Build from a YAML file holding one mapping; problems name ``path``."""
        return cls._from_file_data(load_yaml_mapping(path), path)

    @classmethod
    def _from_file_data(cls, data: dict[str, Any], path: PathLike) -> Self:
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError([f"{path}: {p}" for p in e.problems]) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable dict; ``from_dict(cfg.to_dict()) == cfg``."""
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    def __str__(self) -> str:
        return "\n".join(f"{f.name} : {getattr(self, f.name)}" for f in fields(self))  # type: ignore[arg-type]


def set_field(config: object, name: str, value: Any) -> None:
    object.__setattr__(config, name, value)  # frozen dataclass: normalise in __post_init__ only


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set key=value`` overrides to a config mapping (returns a new dict).

    Dotted keys reach into nested mappings (``training.seed=3``); values are parsed as YAML, so
    ``3`` is an int, ``true`` a bool, ``[0, 4]`` a list and ``none``-like strings stay strings.

    Raises:
        ConfigError: every override without ``=`` or with an empty key, or whose dotted path
            runs through a non-mapping value.
    """
    result: dict[str, Any] = _deep_copy_mappings(data)
    problems: list[str] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item!r}: expected key=value, e.g. --set batch_size=64")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            problems.append(f"--set {item!r}: cannot parse the value ({e})")
            continue
        _set_dotted(result, key.strip().split("."), value, item, problems)
    raise_if_any(problems)
    return result


def _deep_copy_mappings(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy_mappings(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _set_dotted(
    target: dict[str, Any], path: list[str], value: Any, item: str, problems: list[str]
) -> None:
    for i, part in enumerate(path[:-1]):
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(path[: i + 1])
            problems.append(f"--set {item!r}: {where} is {child!r}, not a mapping")
            return
        target = child
    target[path[-1]] = value


def load_config(
    cls: type[ConfigT],
    path: PathLike | None,
    flags: Mapping[str, Any],
    overrides: Sequence[str] = (),
    *,
    missing_hint: str = "",
    defaults: Mapping[str, Any] | None = None,
) -> ConfigT:
    """Build ``cls`` from a YAML file, then CLI flags, then ``--set`` overrides (later wins).

    Relative paths in the file (``cls.PATH_FIELDS``) are resolved against the file's folder;
    flags and overrides are taken as given (relative to the working directory).

    Args:
        cls: the config class (a :class:`ConfigBase` dataclass).
        path: the YAML file, or None for flags and overrides alone.
        defaults: values used when neither the file nor a flag gives the key.
        flags: CLI values by field name; None means "not given" and keeps the file's value.
        overrides: ``key=value`` strings (:func:`apply_overrides`), applied last.
        missing_hint: appended to a "missing required key(s)" problem, e.g. how to pass them.

    Raises:
        ConfigError: the file cannot be read or parsed; or every problem of the merged mapping
            at once (bad overrides, unknown keys, bad values, missing keys).
    """
    data = dict(defaults or {})
    if path:
        data |= resolve_paths(load_yaml_mapping(path), cls.PATH_FIELDS, os.path.dirname(path))
    data.update({k: v for k, v in flags.items() if v is not None})
    try:
        return cls.from_dict(apply_overrides(data, overrides))
    except ConfigError as error:
        if not missing_hint:
            raise
        problems = [
            p + missing_hint if p.startswith("missing required") else p for p in error.problems
        ]
        raise ConfigError(problems) from None
