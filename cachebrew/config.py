"""TextBrewer's ``TrainingConfig`` and ``DistillationConfig``, validated and read-only.

Field names, defaults and meanings are TextBrewer's (v0.2.1). Differences:

- every problem is reported at once in one :class:`~cachebrew.errors.ConfigError`, at
  construction, whether the config comes from keyword arguments, a dict, JSON or YAML;
- configs are frozen dataclasses holding tuples, so training cannot mutate them;
- scheduler fields keep the *name* (``'none'``, ``'linear_decay'``, ``('flsw', 1, 2)``) and are
  turned into functions by ``*_fn()`` methods; a bare ``'flsw'`` is an error, not a crash at
  train time;
- ``TrainingConfig`` does not create ``output_dir``; ``device`` defaults to ``'auto'``;
  ``fp16`` uses ``torch.amp``; new fields ``bf16``, ``seed``, ``DistillationConfig.kd_t2_scale``
  and ``DistillationConfig.textbrewer_compat``.

Names of losses, projections and schedulers are resolved against :mod:`cachebrew.presets` when a
config is built, so names added with :func:`~cachebrew.presets.register_new` are valid.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from cachebrew import presets
from cachebrew.errors import ConfigError
from cachebrew.validation import (
    ConfigBase,
    check_bool,
    check_choice,
    check_device,
    check_int,
    check_path,
    check_real,
    is_int,
    raise_if_any,
    set_field,
)

NONE = "none"
_APEX_OPT_LEVELS = ("O0", "O1", "O2", "O3")


# ----------------------------------------------------------------------------- value checks
# Each check appends its problems to ``problems`` and returns the normalised value.


def _check_weight_scheduler(problems: list[str], name: str, value: Any) -> Any:
    # `==`, not TextBrewer's `is not 'none'`, so a 'none' read from JSON works.
    if value is None or (isinstance(value, str) and value == NONE):
        return NONE
    check_choice(problems, name, value, [NONE, *presets.WEIGHT_SCHEDULER], "weight scheduler")
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
    if is_int(value) and value >= 0:
        return "int"
    if isinstance(value, list | tuple) and len(value) == 2:
        if all(is_int(v) and v >= 0 for v in value):
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
    check_choice(problems, "proj[0]", proj[0], presets.PROJ_MAP, "projection kind")
    for i, what in ((1, "dim_S (student feature size)"), (2, "dim_T (teacher feature size)")):
        if not (is_int(proj[i]) and proj[i] > 0):
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


# ------------------------------------------------------------------------------ the configs


@dataclass(frozen=True)
class IntermediateMatch(ConfigBase):
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
        set_field(self, "layer_T", layers[0])
        set_field(self, "layer_S", layers[1])
        set_field(self, "weight", check_real(problems, "weight", self.weight))
        check_choice(problems, "loss", self.loss, presets.MATCH_LOSS_MAP, "match loss")
        check_choice(problems, "feature", self.feature, presets.FEATURES, "feature")
        set_field(self, "proj", _check_proj(problems, self.proj))
        raise_if_any(problems)

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
class DistillationConfig(ConfigBase):
    """How the distillation loss is made (TextBrewer's fields and defaults, plus ``kd_t2_scale``).

    Total loss = ``kd_loss * kd_loss_weight + sum(losses) * hard_label_weight +
    sum(match losses)``. Scheduler fields hold names; use the ``*_fn()`` methods to get the
    functions. ``kd_t2_scale=True`` multiplies the KD term by ``T**2`` (TextBrewer never did,
    issue #39); the default keeps TextBrewer's behaviour. ``textbrewer_compat=True`` undoes the
    deliberate fixes that change numbers (:mod:`cachebrew.distill.compat`), reproducing
    textbrewer 0.2.1.post1 exactly.

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
    textbrewer_compat: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        set_field(self, "temperature", check_real(problems, "temperature", self.temperature, True))
        scheduler = _check_temperature_scheduler(problems, self.temperature_scheduler)
        set_field(self, "temperature_scheduler", scheduler)
        for name in ("hard_label_weight", "kd_loss_weight"):
            set_field(self, name, check_real(problems, name, getattr(self, name)))
        for name in ("hard_label_weight_scheduler", "kd_loss_weight_scheduler"):
            set_field(self, name, _check_weight_scheduler(problems, name, getattr(self, name)))
        check_choice(problems, "kd_loss_type", self.kd_loss_type, presets.KD_LOSS_MAP, "KD loss")
        for name in ("probability_shift", "is_caching_logits", "kd_t2_scale", "textbrewer_compat"):
            check_bool(problems, name, getattr(self, name))
        set_field(self, "intermediate_matches", _check_matches(problems, self.intermediate_matches))
        raise_if_any(problems)

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


def launched_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` without it.

    The one reader of torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (precompute's ranks and
    distill's DDP both start here).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str | torch.device = "auto", local_rank: int = -1) -> torch.device:
    """The one device resolver: ``"auto"`` -> CUDA if available (``cuda:local_rank`` for a
    DDP rank >= 0), else CPU; any other name must be a usable torch device.

    Raises:
        ConfigError: an unparseable name, or CUDA asked for and not available (caught here,
            before a model is moved, rather than as a RuntimeError mid-run).
    """
    if isinstance(name, str) and name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local_rank) if local_rank >= 0 else torch.device("cuda")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"unknown device {name!r}: {error}; try 'auto', 'cpu', 'cuda'") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} asked for but CUDA is not available; use 'auto' or 'cpu'"
        )
    return device


@dataclass(frozen=True)
class TrainingConfig(ConfigBase):
    """How training runs (TextBrewer's fields and defaults, plus ``bf16`` and ``seed``).

    ``output_dir`` is created by the trainer when it first saves, not here. ``device='auto'``
    means CUDA if available (``cuda:local_rank`` under DDP), else CPU. ``fp16`` uses
    ``torch.amp`` with a GradScaler; ``fp16_opt_level`` (an apex option) is accepted and ignored.
    ``gradient_checkpointing`` recomputes a Hugging Face student's activations in backward
    (HF's ``gradient_checkpointing_enable``; the runner applies it when it loads the student).

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
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("gradient_accumulation_steps", "ckpt_frequency", "ckpt_epoch_frequency"):
            set_field(self, name, check_int(problems, name, getattr(self, name), minimum=1))
        if self.ckpt_steps is not None:
            set_field(self, "ckpt_steps", check_int(problems, "ckpt_steps", self.ckpt_steps, 1))
        set_field(self, "log_dir", check_path(problems, "log_dir", self.log_dir, optional=True))
        set_field(self, "output_dir", check_path(problems, "output_dir", self.output_dir, False))
        set_field(self, "device", check_device(problems, self.device))
        for name in ("fp16", "bf16", "data_parallel", "gradient_checkpointing"):
            check_bool(problems, name, getattr(self, name))
        check_choice(problems, "fp16_opt_level", self.fp16_opt_level, _APEX_OPT_LEVELS, "level")
        if self.fp16 is True and self.bf16 is True:
            problems.append("fp16, bf16: both are true; choose at most one mixed-precision mode")
        set_field(self, "local_rank", check_int(problems, "local_rank", self.local_rank, -1))
        if self.data_parallel is True and is_int(self.local_rank) and self.local_rank >= 0:
            problems.append(
                f"data_parallel: DataParallel and DDP (local_rank={self.local_rank}) are "
                "exclusive; set data_parallel to false or local_rank to -1"
            )
        if self.seed is not None and not (is_int(self.seed) and 0 <= self.seed < 2**32):
            problems.append(f"seed: expected None or an integer in [0, 2**32), got {self.seed!r}")
        elif self.seed is not None:
            set_field(self, "seed", int(self.seed))
        raise_if_any(problems)

    def resolved_device(self) -> torch.device:
        """The torch device to train on (:func:`resolve_device`; ``cuda:local_rank`` under DDP)."""
        return resolve_device(self.device, self.local_rank)
