"""Projections that map student features to the teacher's dimension (TextBrewer's ``proj``).

A projection is built as ``projection(dim_in, dim_out)`` with ``dim_in`` the student dim and
``dim_out`` the teacher dim, and is applied to the student side only. Weights are drawn from
N(0, 0.02) and biases zeroed, as TextBrewer's ``initializer_builder(0.02)``; under the same
``torch.manual_seed`` the weights are identical to TextBrewer's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.modules.activation as activation
from torch import nn

from cachebrew.errors import ConfigError

INIT_STD = 0.02

ACTIVATIONS: dict[str, type[nn.Module]] = {
    name: value
    for name, value in vars(activation).items()
    if isinstance(value, type) and issubclass(value, nn.Module) and value is not nn.Module
}


def initialize_weights(module: nn.Module, std: float = INIT_STD) -> None:
    """Re-initialise every Linear/Embedding weight to N(0, std) and every Linear bias to 0.

    Recurses into submodules (TextBrewer's ``model.apply(initializer_builder(std))``).
    Embedding padding rows are overwritten too, as in TextBrewer.

    Args:
        module: the module to initialise in place.
        std: standard deviation of the weights.
    """
    for submodule in module.modules():
        if isinstance(submodule, (nn.Linear, nn.Embedding)):
            nn.init.normal_(submodule.weight, mean=0.0, std=std)
        if isinstance(submodule, nn.Linear) and submodule.bias is not None:
            nn.init.zeros_(submodule.bias)


def linear_projection(dim_in: int, dim_out: int) -> nn.Linear:
    """Build ``nn.Linear(dim_in, dim_out)`` with weight ~ N(0, 0.02) and bias 0.

    Args:
        dim_in: student feature dim.
        dim_out: teacher feature dim.

    Returns:
        The linear layer, mapping ``(..., dim_in)`` to ``(..., dim_out)``.
    """
    projection = nn.Linear(dim_in, dim_out, bias=True)
    initialize_weights(projection)
    return projection


def projection_with_activation(
    act_name: str | type[nn.Module],
) -> Callable[[int, int], nn.Sequential]:
    """Build a projection builder ``(dim_in, dim_out) -> Sequential(Linear, activation)``.

    Unlike TextBrewer, which shares one activation instance between all projections of a
    kind, each projection gets a fresh activation module.

    Args:
        act_name: a class name from ``torch.nn.modules.activation`` (``"ReLU"``, ``"Tanh"``,
            ...) or an ``nn.Module`` subclass taking no arguments.

    Returns:
        ``projection(dim_in, dim_out)``.

    Raises:
        ConfigError: ``act_name`` names no activation.
    """
    if isinstance(act_name, str):
        if act_name not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {act_name!r} for a projection; "
                f"choose one of {sorted(ACTIVATIONS)}"
            )
        act_class = ACTIVATIONS[act_name]
    elif isinstance(act_name, type) and issubclass(act_name, nn.Module):
        act_class = act_name
    else:
        raise ConfigError(
            f"projection activation must be a name or nn.Module class, got {act_name!r}"
        )

    def projection(dim_in: int, dim_out: int) -> nn.Sequential:
        model = nn.Sequential(nn.Linear(dim_in, dim_out, bias=True), act_class())
        initialize_weights(model)
        return model

    return projection
