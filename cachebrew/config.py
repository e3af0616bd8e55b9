"""TextBrewer's ``TrainingConfig`` and ``DistillationConfig``, validated and read-only.

Field names, defaults and meanings are TextBrewer's (v0.2.1). Differences:

- every problem is reported at once in one :class:`~cachebrew.errors.ConfigError`, at
  construction, whether the config comes from keyword arguments, a dict, JSON or YAML;
- configs are frozen dataclasses holding tuples, so training cannot mutate them;
- scheduler fields keep the *name* (``'none'``, ``'linear_decay'``, ``('flsw', 1, 2)``) and are
  turned into functions by ``*_fn()`` methods; a bare ``'flsw'`` is an error, not a crash at
  train time;
- ``TrainingConfig`` does not create ``output_dir``; ``device`` defaults to ``'auto'``;
  ``fp16`` uses ``torch.amp``; new fields ``bf16``, ``seed`` and ``DistillationConfig.kd_t2_scale``.

Names of losses, projections and schedulers are resolved against :mod:`cachebrew.presets` when a
config is built, so names added with :func:`~cachebrew.presets.register_new` are valid.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, Self

import torch
import yaml

from cachebrew import presets
from cachebrew.errors import ConfigError

PathLike = str | os.PathLike[str]

NONE = "none"
_APEX_OPT_LEVELS = ("O0", "O1", "O2", "O3")


def load_yaml_mapping(path: PathLike) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid YAML, or its top level is
            not a mapping; the message names ``path``.
    """
    return _load_mapping(path, yaml.safe_load, yaml.YAMLError, "YAML")


def _load_mapping(
    path: PathLike, parse: Callable[[Any], Any], parse_error: type[Exception], fmt: str
) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = parse(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from e
    except parse_error as e:
        raise ConfigError(f"{path}: invalid {fmt}: {e}") from e
    return _require_mapping(data, path)


def _require_mapping(data: object, path: PathLike) -> dict[str, Any]:
    if not isinstance(data, dict):
        got = "an empty document" if data is None else f"{type(data).__name__} {data!r}"
        raise ConfigError(f"{path}: the top level must be a mapping of field names, got {got}")
    return data


# ----------------------------------------------------------------------------- value checks
# Each check appends its problems to ``problems`` and returns the normalised value.


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(problems: list[str], name: str, value: Any, minimum: int) -> Any:
    if _is_int(value) and value >= minimum:
        return int(value)
    problems.append(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def _check_real(problems: list[str], name: str, value: Any, positive: bool = False) -> Any:
    if _is_real(value) and (value > 0 or not positive):
        return float(value)
    wanted = "a number > 0" if positive else "a finite number"
    problems.append(f"{name}: expected {wanted}, got {value!r}")
    return value


def _check_bool(problems: list[str], name: str, value: Any) -> None:
    if not isinstance(value, bool):
        problems.append(f"{name}: expected true or false, got {value!r}")


def _check_choice(
    problems: list[str], name: str, value: Any, choices: Iterable[str], what: str
) -> None:
    choices = list(choices)
    if not (isinstance(value, str) and value in choices):
        problems.append(f"{name}: unknown {what} {value!r}; choose one of {sorted(choices)}")


def _check_weight_scheduler(problems: list[str], name: str, value: Any) -> Any:
    # `==`, not TextBrewer's `is not 'none'`, so a 'none' read from JSON works.
    if value is None or (isinstance(value, str) and value == NONE):
        return NONE
    _check_choice(problems, name, value, [NONE, *presets.WEIGHT_SCHEDULER], "weight scheduler")
    return value


def _check_path(problems: list[str], name: str, value: Any, optional: bool) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, str | os.PathLike):
        return os.fspath(value)
    wanted = "None or a directory path" if optional else "a directory path"
    problems.append(f"{name}: expected {wanted}, got {value!r}")
    return value


def _check_device(problems: list[str], value: Any) -> Any:
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


# ------------------------------------------------------------------- temperature schedulers


def _build_temperature_scheduler(kind: str, params: tuple[Any, ...]) -> Callable[..., Any]:
    builder = presets.TEMPERATURE_SCHEDULER[kind]
    if len(params) == 1 and isinstance(params[0], Mapping):
        return builder(**params[0])
    return builder(*params)


def _temperature_scheduler_usage(kind: str) -> str:
    """How to write ``kind`` with its required parameters, e.g. ``['flsw', beta, gamma]``."""
    try:
        signature = inspect.signature(presets.TEMPERATURE_SCHEDULER[kind])
    except (TypeError, ValueError):
        return f"[{kind!r}, param, ...]"
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [
        p.name
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind in positional
    ]
    as_list = ", ".join([repr(kind), *required])
    as_dict = ", ".join(f"{n!r}: ..." for n in required)
    return f"[{as_list}] or [{kind!r}, {{{as_dict}}}]"


def _temperature_build_problem(kind: str, params: tuple[Any, ...]) -> str | None:
    try:
        scheduler = _build_temperature_scheduler(kind, params)
    except (TypeError, ValueError, ConfigError) as e:
        usage = _temperature_scheduler_usage(kind)
        if not params:
            return f"{kind!r} needs parameters ({e}); use {usage}"
        return f"{[kind, *params]!r} does not fit the parameters of {kind!r} ({e}); use {usage}"
    if not callable(scheduler):
        return f"{kind!r} built {scheduler!r}, which is not callable"
    return None


def _check_temperature_scheduler(problems: list[str], value: Any) -> Any:
    name = "temperature_scheduler"
    if value is None or (isinstance(value, str) and value == NONE):
        return NONE
    params: tuple[Any, ...] = ()
    if isinstance(value, str):
        kind = value
    elif isinstance(value, list | tuple) and value:
        kind = value[0]
        params = tuple(dict(p) if isinstance(p, Mapping) else p for p in value[1:])
    else:
        problems.append(
            f"{name}: expected 'none', a scheduler name or a list [name, params...], got {value!r}"
        )
        return value
    choices = [NONE, *presets.TEMPERATURE_SCHEDULER]
    if not (isinstance(kind, str) and kind in presets.TEMPERATURE_SCHEDULER):
        problems.append(
            f"{name}: unknown temperature scheduler {kind!r}; choose one of {sorted(choices)}"
        )
        return value
    problem = _temperature_build_problem(kind, params)
    if problem is not None:
        problems.append(f"{name}: {problem}")
        return value
    return kind if isinstance(value, str) else (kind, *params)


# ------------------------------------------------------------------ intermediate-match parts


def _layer_form(value: Any) -> str | None:
    if _is_int(value) and value >= 0:
        return "int"
    if isinstance(value, list | tuple) and len(value) == 2:
        if all(_is_int(v) and v >= 0 for v in value):
            return "pair"
    return None


def _layer_problem(name: str, value: Any, form: str | None, loss: Any) -> str | None:
    if isinstance(loss, str) and loss in presets.MATCH_LOSS_MAP:
        if loss in presets.TWO_LAYER_LOSSES and form != "pair":
            return f"{name}: loss {loss!r} compares two layers; expected a pair like [0, 6], got {value!r}"
        if loss not in presets.TWO_LAYER_LOSSES and form != "int":
            pairs = sorted(presets.TWO_LAYER_LOSSES)
            return f"{name}: loss {loss!r} takes one layer index (int >= 0), got {value!r}; only {pairs} take pairs"
    elif form is None:
        return f"{name}: expected a layer index (int >= 0) or a pair of them, got {value!r}"
    return None


def _check_layers(problems: list[str], layer_T: Any, layer_S: Any, loss: Any) -> list[Any]:
    normalised, forms, before = [], [], len(problems)
    for name, value in (("layer_T", layer_T), ("layer_S", layer_S)):
        form = _layer_form(value)
        forms.append(form)
        problem = _layer_problem(name, value, form, loss)
        if problem is not None:
            problems.append(problem)
            normalised.append(value)
        elif form == "int":
            normalised.append(int(value))
        else:
            normalised.append(tuple(int(v) for v in value))
    if len(problems) == before and forms[0] != forms[1]:
        problems.append(
            f"layer_S: must have the same form as layer_T ({layer_T!r}), got {layer_S!r}"
        )
    return normalised


def _check_proj(problems: list[str], proj: Any) -> Any:
    if proj is None:
        return None
    if not isinstance(proj, list | tuple) or len(proj) not in (3, 4):
        problems.append(
            f"proj: expected [kind, dim_S, dim_T] or [kind, dim_S, dim_T, {{options}}], got {proj!r}"
        )
        return proj
    before = len(problems)
    _check_choice(problems, "proj[0]", proj[0], presets.PROJ_MAP, "projection kind")
    for i, what in ((1, "dim_S (student feature size)"), (2, "dim_T (teacher feature size)")):
        if not (_is_int(proj[i]) and proj[i] > 0):
            problems.append(f"proj[{i}]: {what} must be a positive int, got {proj[i]!r}")
    options = proj[3] if len(proj) == 4 else {}
    if not isinstance(options, Mapping):
        problems.append(
            f"proj[3]: expected a dict of optimizer param-group options like {{'lr': 1e-3}}, "
            f"got {options!r}"
        )
    elif "params" in options:
        problems.append("proj[3]: must not set 'params'; the projection's parameters are added")
    if len(problems) > before:
        return proj
    # Copies: the user's list and dict are never mutated or shared (TextBrewer appended {}).
    return (proj[0], int(proj[1]), int(proj[2]), dict(options))


# --------------------------------------------------------------------------------- the base


def _plain(value: Any) -> Any:
    if isinstance(value, _ConfigBase):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _raise_if_any(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


def _key_problems(cls: type, data: Mapping[Any, Any], where: str) -> list[str]:
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


class _ConfigBase:
    """Loading, saving and printing shared by the config dataclasses."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build from a mapping of field names; raises ConfigError listing every problem."""
        return cls._from_mapping(data, where="")

    @classmethod
    def _from_mapping(cls, data: Any, where: str) -> Self:
        if not isinstance(data, Mapping):
            name = where or cls.__name__
            raise ConfigError(f"{name}: expected a mapping of field names, got {data!r}")
        problems = _key_problems(cls, data, where)
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
        return cls._from_file_data(_load_mapping(path, json.load, ValueError, "JSON"), path)

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
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    def __str__(self) -> str:
        return "\n".join(f"{f.name} : {getattr(self, f.name)}" for f in fields(self))  # type: ignore[arg-type]


def _set(config: object, name: str, value: Any) -> None:
    object.__setattr__(config, name, value)  # frozen dataclass: normalise in __post_init__ only


# ------------------------------------------------------------------------------ the configs


@dataclass(frozen=True)
class IntermediateMatch(_ConfigBase):
    """One intermediate-feature match (TextBrewer's ``intermediate_matches`` entry).

    Args:
        layer_T: index into the teacher adaptor's ``feature`` list; a pair for two-layer losses.
        layer_S: same for the student; must have the same form as ``layer_T``.
        weight: weight of this match's loss.
        loss: key of :data:`~cachebrew.presets.MATCH_LOSS_MAP`.
        feature: one of :data:`~cachebrew.presets.FEATURES`.
        proj: ``[kind, dim_S, dim_T]`` or ``[kind, dim_S, dim_T, param_group_options]``, applied
            to the student feature; stored as ``(kind, dim_S, dim_T, options_dict)``.

    Raises:
        ConfigError: listing every invalid field.
    """

    layer_T: int | tuple[int, int]
    layer_S: int | tuple[int, int]
    weight: float
    loss: str
    feature: str
    proj: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        layers = _check_layers(problems, self.layer_T, self.layer_S, self.loss)
        _set(self, "layer_T", layers[0])
        _set(self, "layer_S", layers[1])
        _set(self, "weight", _check_real(problems, "weight", self.weight))
        _check_choice(problems, "loss", self.loss, presets.MATCH_LOSS_MAP, "match loss")
        _check_choice(problems, "feature", self.feature, presets.FEATURES, "feature")
        _set(self, "proj", _check_proj(problems, self.proj))
        _raise_if_any(problems)

    def loss_fn(self) -> Callable[..., Any]:
        """The match loss function, ``MATCH_LOSS_MAP[self.loss]``."""
        return presets.MATCH_LOSS_MAP[self.loss]

    def __str__(self) -> str:
        return ", ".join(f"{f.name} : {getattr(self, f.name)}" for f in fields(self))


def _check_matches(problems: list[str], matches: Any) -> Any:
    if matches is None:
        return ()
    if not isinstance(matches, list | tuple):
        problems.append(f"intermediate_matches: expected a list of matches, got {matches!r}")
        return matches
    built = []
    for i, item in enumerate(matches):
        if isinstance(item, IntermediateMatch):
            built.append(item)
            continue
        try:
            built.append(IntermediateMatch._from_mapping(item, f"intermediate_matches[{i}]"))
        except ConfigError as e:
            problems.extend(e.problems)
    return tuple(built)


@dataclass(frozen=True)
class DistillationConfig(_ConfigBase):
    """How the distillation loss is made (TextBrewer's fields and defaults, plus ``kd_t2_scale``).

    Total loss = ``kd_loss * kd_loss_weight + sum(losses) * hard_label_weight +
    sum(match losses)``. Scheduler fields hold names; use the ``*_fn()`` methods to get the
    functions. ``kd_t2_scale=True`` multiplies the KD term by ``T**2`` (TextBrewer never did,
    issue #39); the default keeps TextBrewer's behaviour.

    Raises:
        ConfigError: listing every invalid field, including each bad intermediate match.
    """

    temperature: float = 4
    temperature_scheduler: str | tuple[Any, ...] = NONE
    hard_label_weight: float = 0
    hard_label_weight_scheduler: str = NONE
    kd_loss_type: str = "ce"
    kd_loss_weight: float = 1
    kd_loss_weight_scheduler: str = NONE
    probability_shift: bool = False
    intermediate_matches: tuple[IntermediateMatch, ...] = ()
    is_caching_logits: bool = False
    kd_t2_scale: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        _set(self, "temperature", _check_real(problems, "temperature", self.temperature, True))
        scheduler = _check_temperature_scheduler(problems, self.temperature_scheduler)
        _set(self, "temperature_scheduler", scheduler)
        for name in ("hard_label_weight", "kd_loss_weight"):
            _set(self, name, _check_real(problems, name, getattr(self, name)))
        for name in ("hard_label_weight_scheduler", "kd_loss_weight_scheduler"):
            _set(self, name, _check_weight_scheduler(problems, name, getattr(self, name)))
        _check_choice(problems, "kd_loss_type", self.kd_loss_type, presets.KD_LOSS_MAP, "KD loss")
        for name in ("probability_shift", "is_caching_logits", "kd_t2_scale"):
            _check_bool(problems, name, getattr(self, name))
        _set(self, "intermediate_matches", _check_matches(problems, self.intermediate_matches))
        _raise_if_any(problems)

    def kd_loss_fn(self) -> Callable[..., Any]:
        """The KD loss on logits, ``KD_LOSS_MAP[kd_loss_type]``."""
        return presets.KD_LOSS_MAP[self.kd_loss_type]

    def temperature_scheduler_fn(self) -> Callable[..., Any] | None:
        """``scheduler(logits_S, logits_T, base_temperature)``, or None for ``'none'``."""
        if self.temperature_scheduler == NONE:
            return None
        if isinstance(self.temperature_scheduler, str):
            return _build_temperature_scheduler(self.temperature_scheduler, ())
        kind, *params = self.temperature_scheduler
        return _build_temperature_scheduler(kind, tuple(params))

    def kd_loss_weight_scheduler_fn(self) -> Callable[[float], float] | None:
        """``fn(progress) -> weight`` for the KD term, or None for ``'none'``."""
        return _weight_scheduler_fn(self.kd_loss_weight_scheduler)

    def hard_label_weight_scheduler_fn(self) -> Callable[[float], float] | None:
        """``fn(progress) -> weight`` for the ``losses`` term, or None for ``'none'``."""
        return _weight_scheduler_fn(self.hard_label_weight_scheduler)


def _weight_scheduler_fn(name: str) -> Callable[[float], float] | None:
    return None if name == NONE else presets.WEIGHT_SCHEDULER[name]


@dataclass(frozen=True)
class TrainingConfig(_ConfigBase):
    """How training runs (TextBrewer's fields and defaults, plus ``bf16`` and ``seed``).

    ``output_dir`` is created by the trainer when it first saves, not here. ``device='auto'``
    means CUDA if available (``cuda:local_rank`` under DDP), else CPU. ``fp16`` uses
    ``torch.amp`` with a GradScaler; ``fp16_opt_level`` (an apex option) is accepted and ignored.

    Raises:
        ConfigError: listing every invalid field.
    """

    gradient_accumulation_steps: int = 1
    ckpt_frequency: int = 1
    ckpt_epoch_frequency: int = 1
    ckpt_steps: int | None = None
    log_dir: str | None = None
    output_dir: str = "./saved_models"
    device: str = "auto"
    fp16: bool = False
    fp16_opt_level: str = "O1"
    bf16: bool = False
    data_parallel: bool = False
    local_rank: int = -1
    seed: int | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("gradient_accumulation_steps", "ckpt_frequency", "ckpt_epoch_frequency"):
            _set(self, name, _check_int(problems, name, getattr(self, name), minimum=1))
        if self.ckpt_steps is not None:
            _set(self, "ckpt_steps", _check_int(problems, "ckpt_steps", self.ckpt_steps, 1))
        _set(self, "log_dir", _check_path(problems, "log_dir", self.log_dir, optional=True))
        _set(self, "output_dir", _check_path(problems, "output_dir", self.output_dir, False))
        _set(self, "device", _check_device(problems, self.device))
        for name in ("fp16", "bf16", "data_parallel"):
            _check_bool(problems, name, getattr(self, name))
        _check_choice(problems, "fp16_opt_level", self.fp16_opt_level, _APEX_OPT_LEVELS, "level")
        if self.fp16 is True and self.bf16 is True:
            problems.append("fp16, bf16: both are true; choose at most one mixed-precision mode")
        _set(self, "local_rank", _check_int(problems, "local_rank", self.local_rank, -1))
        if self.data_parallel is True and _is_int(self.local_rank) and self.local_rank >= 0:
            problems.append(
                f"data_parallel: DataParallel and DDP (local_rank={self.local_rank}) are "
                "exclusive; set data_parallel to false or local_rank to -1"
            )
        if self.seed is not None and not (_is_int(self.seed) and 0 <= self.seed < 2**32):
            problems.append(f"seed: expected None or an integer in [0, 2**32), got {self.seed!r}")
        elif self.seed is not None:
            _set(self, "seed", int(self.seed))
        _raise_if_any(problems)

    def resolved_device(self) -> torch.device:
        """The torch device to train on; ``'auto'`` picks CUDA when available."""
        if self.device != "auto":
            return torch.device(self.device)
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return (
            torch.device("cuda", self.local_rank) if self.local_rank >= 0 else torch.device("cuda")
        )
