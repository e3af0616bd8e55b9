"""Parity of cachebrew.projections with textbrewer==0.2.1.post1's PROJ_MAP and initializer."""

from __future__ import annotations

import pytest
import textbrewer.presets as tb_presets
import torch
from textbrewer.utils import initializer_builder
from torch import nn

from cachebrew import projections
from cachebrew.errors import ConfigError

OURS = {
    "linear": projections.linear_projection,
    "relu": projections.projection_with_activation("ReLU"),
    "tanh": projections.projection_with_activation("Tanh"),
}
ACTIVATION_TYPES = {"linear": None, "relu": nn.ReLU, "tanh": nn.Tanh}


@pytest.mark.parametrize("name", sorted(OURS))
@pytest.mark.parametrize("dim_in, dim_out", [(8, 16), (32, 24), (64, 128)])
def test_projection_weights_and_outputs_match_textbrewer(name, dim_in, dim_out):
    torch.manual_seed(1234)
    ours = OURS[name](dim_in, dim_out)
    torch.manual_seed(1234)
    theirs = tb_presets.PROJ_MAP[name](dim_in, dim_out)

    ours_params, theirs_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert ours_params.keys() == theirs_params.keys()
    for key, value in ours_params.items():
        assert torch.equal(value, theirs_params[key]), key

    student_hidden = torch.randn(3, 5, dim_in) * 10  # (B, L, D_S)
    projected = ours(student_hidden)
    assert projected.shape == (3, 5, dim_out)
    assert torch.equal(projected, theirs(student_hidden))
    if ACTIVATION_TYPES[name] is not None:
        assert isinstance(ours[1], ACTIVATION_TYPES[name])


def test_projections_differ_without_reseeding():
    torch.manual_seed(0)
    first, second = projections.linear_projection(8, 8), projections.linear_projection(8, 8)
    assert not torch.equal(first.weight, second.weight)


def test_each_projection_gets_its_own_activation():
    builder = projections.projection_with_activation("Tanh")
    assert builder(4, 4)[1] is not builder(4, 4)[1]
    # TextBrewer shares one instance between every projection of a kind
    assert tb_presets.PROJ_MAP["tanh"](4, 4)[1] is tb_presets.PROJ_MAP["tanh"](4, 4)[1]


def test_projection_accepts_an_activation_class():
    model = projections.projection_with_activation(nn.GELU)(4, 6)
    assert isinstance(model[1], nn.GELU)
    assert model(torch.randn(2, 4)).shape == (2, 6)


@pytest.mark.parametrize("bad", ["relu", "Swish", 3])
def test_unknown_activation_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="activation"):
        projections.projection_with_activation(bad)


@pytest.mark.parametrize("name", sorted(OURS))
def test_init_statistics_on_a_large_layer(name):
    torch.manual_seed(0)
    model = OURS[name](512, 768)
    linear = model if isinstance(model, nn.Linear) else model[0]
    weight = linear.weight.detach()
    assert abs(weight.std().item() - 0.02) < 0.0005
    assert abs(weight.mean().item()) < 0.0005
    assert torch.count_nonzero(linear.bias) == 0
    # nn.Linear's own init is uniform with bound 1/sqrt(512) ~ 0.044: beyond that means normal
    assert weight.abs().max().item() > 0.05


@pytest.mark.parametrize("std", [0.02, 0.1])
def test_initialize_weights_matches_textbrewer_initializer(std):
    def make_model() -> nn.Module:
        return nn.Sequential(
            nn.Embedding(50, 16), nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 4)
        )

    torch.manual_seed(7)
    ours = make_model()
    layer_norm_before = ours[2].weight.detach().clone()
    ours[2].weight.data.fill_(0.5)  # layer norms are left alone
    projections.initialize_weights(ours, std=std)
    torch.manual_seed(7)
    theirs = make_model()
    theirs[2].weight.data.fill_(0.5)
    theirs.apply(initializer_builder(std))

    for (key, value), (_, expected) in zip(
        ours.state_dict().items(), theirs.state_dict().items(), strict=True
    ):
        assert torch.equal(value, expected), key
    assert torch.equal(ours[2].weight, torch.full_like(layer_norm_before, 0.5))
    assert torch.count_nonzero(ours[1].bias) == torch.count_nonzero(ours[3].bias) == 0
    assert abs(ours[0].weight.std().item() - std) < 0.15 * std
