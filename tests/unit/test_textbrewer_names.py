"""TextBrewer names a ported script uses exist and behave like TextBrewer's."""

from __future__ import annotations

import pytest
import textbrewer
import torch
from textbrewer.utils import display_parameters as tb_display_parameters

import cachebrew
from cachebrew.utils import display_parameters


def test_top_level_names_match_textbrewer() -> None:
    assert list(cachebrew.FEATURES) == list(textbrewer.FEATURES)
    assert set(cachebrew.ADAPTOR_KEYS) >= set(textbrewer.ADAPTOR_KEYS)
    assert set(cachebrew.Distillers) == set(textbrewer.Distillers)
    assert cachebrew.Distillers["General"] is cachebrew.GeneralDistiller
    assert cachebrew.Distillers["Train"] is cachebrew.BasicTrainer
    for name in ("KD_LOSS_MAP", "MATCH_LOSS_MAP", "PROJ_MAP", "WEIGHT_SCHEDULER"):
        assert set(getattr(textbrewer, name)) <= set(getattr(cachebrew, name)), name
    assert callable(cachebrew.register_new)


def test_cache_dataset_is_exported() -> None:
    from cachebrew.cache.feed.dataset import CacheDataset

    assert cachebrew.CacheDataset is CacheDataset
    assert "CacheDataset" in cachebrew.__all__


def test_display_parameters_counts_like_textbrewer() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)
    )
    text, root = display_parameters(model, max_level=1)
    _, tb_root = tb_display_parameters(model, max_level=1)
    assert root.num_params == sum(p.numel() for p in model.parameters()) == 61
    assert root.num_params == tb_root.value[0]
    assert root.children["1"].num_params == tb_root["1"].value[0] == 15
    assert root.num_bytes / 2**20 == pytest.approx(tb_root.value[1])
    assert "model" in text and "61" in text


def test_display_parameters_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="torch.nn.Module or a dict"):
        display_parameters([1, 2])  # type: ignore[arg-type]
