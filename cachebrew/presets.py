"""Name -> implementation maps for every configurable choice (TextBrewer's presets, kept).

Configs refer to losses, projections and schedulers by name; these plain dicts are the only
place names are resolved. Add your own with :func:`register_new` (or by assigning into a map)
before building the config that uses it::

    from cachebrew.presets import register_new

    def hid_l1_loss(state_S, state_T, mask=None):
        ...

    register_new("match_loss", "hidden_l1", hid_l1_loss)
    # now usable as {"loss": "hidden_l1", ...} in intermediate_matches

Signatures a registered function must have:

- ``kd_loss``: ``fn(logits_S, logits_T, temperature) -> scalar``
- ``match_loss``: ``fn(state_S, state_T, mask=None) -> scalar`` (lists of two tensors for
  two-layer losses, see :data:`TWO_LAYER_LOSSES`)
- ``projection``: ``fn(dim_in, dim_out) -> nn.Module``
- ``weight_scheduler``: ``fn(progress) -> weight`` with ``progress = step / total_steps``
- ``temperature_scheduler``: a *builder* ``fn(*params) -> scheduler`` where
  ``scheduler(logits_S, logits_T, base_temperature) -> float | Tensor``
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cachebrew import losses, projections, schedules
from cachebrew.errors import ConfigError

KD_LOSS_MAP: dict[str, Callable[..., Any]] = {
    "ce": losses.kd_ce_loss,
    "mse": losses.kd_mse_loss,
    "kl": losses.kd_kl_loss,
    "multilabel": losses.kd_multilabel_loss,
}

MATCH_LOSS_MAP: dict[str, Callable[..., Any]] = {
    "attention_mse_sum": losses.att_mse_sum_loss,
    "attention_mse": losses.att_mse_loss,
    "attention_ce_mean": losses.att_ce_mean_loss,
    "attention_ce": losses.att_ce_loss,
    "hidden_mse": losses.hid_mse_loss,
    "cos": losses.cos_loss,
    "pkd": losses.pkd_loss,
    "gram": losses.fsp_loss,
    "fsp": losses.fsp_loss,
    "mmd": losses.mmd_loss,
    "nst": losses.mmd_loss,
}

# Match losses whose layer_T / layer_S are two-element lists (a pair of layers).
TWO_LAYER_LOSSES: set[str] = {"gram", "fsp", "mmd", "nst"}

PROJ_MAP: dict[str, Callable[..., Any]] = {
    "linear": projections.linear_projection,
    "relu": projections.projection_with_activation("ReLU"),
    "tanh": projections.projection_with_activation("Tanh"),
}

WEIGHT_SCHEDULER: dict[str, Callable[[float], float]] = {
    "linear_decay": schedules.linear_decay_weight_scheduler,
    "linear_growth": schedules.linear_growth_weight_scheduler,
}

# Every entry is a builder: TEMPERATURE_SCHEDULER[name](*params) -> scheduler.
TEMPERATURE_SCHEDULER: dict[str, Callable[..., Any]] = {
    "constant": schedules.constant_temperature_scheduler_builder,
    "flsw": schedules.flsw_temperature_scheduler_builder,
    "cwsm": schedules.cwsm_temperature_scheduler_builder,
}

FEATURES: tuple[str, ...] = ("hidden", "attention")

ADAPTOR_KEYS: tuple[str, ...] = (
    "logits",
    "logits_mask",
    "losses",
    "inputs_mask",
    "labels",
    *FEATURES,
)

MAPS: dict[str, dict[str, Callable[..., Any]]] = {
    "kd_loss": KD_LOSS_MAP,
    "match_loss": MATCH_LOSS_MAP,
    "projection": PROJ_MAP,
    "weight_scheduler": WEIGHT_SCHEDULER,
    "temperature_scheduler": TEMPERATURE_SCHEDULER,
}


def register_new(map_name: str, name: str, func: Callable[..., Any]) -> None:
    """Register ``func`` under ``name`` in the preset map ``map_name``.

    Args:
        map_name: one of ``kd_loss``, ``match_loss``, ``projection``, ``weight_scheduler``,
            ``temperature_scheduler`` (TextBrewer's ``match_Loss`` spelling is accepted too).
        name: the name configs will use.
        func: the implementation, with the signature the module docstring gives.

    Raises:
        ConfigError: unknown ``map_name`` or a ``func`` that is not callable.
    """
    key = "match_loss" if map_name == "match_Loss" else map_name
    if key not in MAPS:
        raise ConfigError(f"unknown preset map {map_name!r}; choose one of {sorted(MAPS)}")
    if not callable(func):
        raise ConfigError(f"register_new({map_name!r}, {name!r}, ...): {func!r} is not callable")
    MAPS[key][name] = func
