"""The one table of per-kind shapes, and the one stored-dtype -> float32 reading (issue 20)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cachebrew.cache.format.codecs import decode, decode_tensor, encode
from cachebrew.cache.format.shapes import (
    ARRAY_SHAPES,
    padded_shape,
    restore_shape,
    stored_rows,
)
from cachebrew.cache.format.spec import KINDS
from cachebrew.errors import CacheError

L, D, H = 5, 4, 3
EXAMPLES = {
    "hidden.1": np.arange(L * D, dtype=np.float32).reshape(L, D),
    "hidden_cls.1": np.arange(D, dtype=np.float32),
    "attention.1": np.arange(H * L * L, dtype=np.float32).reshape(H, L, L),
    "attention_sum.1": np.arange(L * L, dtype=np.float32).reshape(L, L),
    "attention_mean.1": np.arange(L * L, dtype=np.float32).reshape(L, L),
}
PADDED = {  # batch of two examples of L tokens, padded to W = 7
    "hidden.1": (2, 7, D),
    "hidden_cls.1": (2, D),
    "attention.1": (2, H, 7, 7),
    "attention_sum.1": (2, 7, 7),
    "attention_mean.1": (2, 7, 7),
}


def test_every_layered_kind_has_one_shape_rule() -> None:
    assert set(ARRAY_SHAPES) == set(KINDS) - {"logits"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_stored_rows_and_back_and_padded(name: str) -> None:
    value = EXAMPLES[name]
    rows = stored_rows(name, value)
    assert rows.ndim == 2
    np.testing.assert_array_equal(restore_shape(name, rows, L), value)
    assert padded_shape(name, [rows, rows], [L, L], 7) == PADDED[name]


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
def test_decode_tensor_equals_decode(dtype: str) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(6, 8)).astype(np.float32)
    stored, scale = encode(values, dtype)
    tensor = decode_tensor(
        torch.from_numpy(stored), dtype, torch.from_numpy(scale) if scale is not None else None
    )
    assert tensor.dtype == torch.float32
    np.testing.assert_array_equal(tensor.numpy(), decode(stored, scale, dtype))


def test_decode_tensor_refuses_int8_without_scales() -> None:
    with pytest.raises(CacheError, match="without its .scale"):
        decode_tensor(torch.zeros(2, 2, dtype=torch.int8), "int8")
