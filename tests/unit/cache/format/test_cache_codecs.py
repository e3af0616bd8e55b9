"""Storage dtypes: exact fp32, pinned fp16/bf16/int8 error bounds, refusals; feature preparation."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest

import cachebrew.cache
from cachebrew.cache.format.codecs import chunk_checksums, decode, encode
from cachebrew.cache.format.shapes import restore_shape
from cachebrew.cache.format.spec import parse_feature_spec
from cachebrew.cache.write.prepare import prepare_example
from cachebrew.errors import CacheError


@pytest.fixture
def values() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(64, 48)) * rng.uniform(0.01, 20, size=(64, 1))).astype(np.float32)


def _round_trip(x: np.ndarray, dtype: str) -> np.ndarray:
    stored, scale = encode(x, dtype)
    out = decode(stored, scale, dtype)
    assert out.dtype == np.float32 and out.shape == x.shape
    return out


def test_fp32_is_exact(values: np.ndarray) -> None:
    np.testing.assert_array_equal(_round_trip(values, "fp32"), values)


def test_fp16_and_bf16_relative_error(values: np.ndarray) -> None:
    # Round to nearest: half an ulp, 2^-11 (fp16) and 2^-8 (bf16) of |x|.
    err16 = np.abs(_round_trip(values, "fp16") - values)
    assert np.all(err16 <= np.abs(values) * 2**-11 + 1e-7)
    err_bf16 = np.abs(_round_trip(values, "bf16") - values)
    assert np.all(err_bf16 <= np.abs(values) * 2**-8)
    assert encode(values, "bf16")[0].dtype == np.uint16


def test_bf16_rounds_to_nearest_even() -> None:
    x = np.array([[1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5]], dtype=np.float32)
    np.testing.assert_array_equal(_round_trip(x, "bf16"), [[1.0, 1.0, 1.0 + 4 * 2**-8, -2.5]])


def test_int8_per_row_scale(values: np.ndarray) -> None:
    stored, scale = encode(values, "int8")
    assert stored.dtype == np.int8 and scale.shape == (64, 1) and scale.dtype == np.float32
    row_max = np.abs(values).max(axis=1, keepdims=True)
    err = np.abs(decode(stored, scale, "int8") - values)
    assert np.all(err <= row_max / 254 * 1.0001)
    zeros = np.zeros((2, 3), dtype=np.float32)
    np.testing.assert_array_equal(_round_trip(zeros, "int8"), zeros)


def test_refuses_overflow_and_nan() -> None:
    with pytest.raises(CacheError, match="exceeds the fp16 range.*use bf16|store with bf16"):
        encode(np.array([[7e4]], dtype=np.float32), "fp16")
    assert _round_trip(np.array([[7e4]], dtype=np.float32), "bf16")[0, 0] == pytest.approx(
        7e4, rel=1e-2
    )
    with pytest.raises(CacheError, match="non-finite"):
        encode(np.array([[np.nan]], dtype=np.float32), "fp32")


def test_ids_pass_through() -> None:
    ids = np.array([[1, 70000]], dtype=np.int64)
    stored, scale = encode(ids, "int32")
    assert stored.dtype == np.int32 and scale is None
    assert decode(stored, None, "int32").dtype == np.int64


def test_chunk_checksums_per_row_chunk() -> None:
    data = np.arange(10, dtype=np.float16).reshape(5, 2)
    sums = chunk_checksums(data, 2)
    assert len(sums) == 3 and sums[0] != sums[1]
    assert chunk_checksums(data.copy(), 2) == sums


def test_prepare_reductions_and_shapes() -> None:
    spec = parse_feature_spec(
        "logits:logprobs,hidden_cls:1,attention:0,attention_sum:0,attention_mean:0"
    )
    rng = np.random.default_rng(1)
    att = rng.random((3, 5, 5)).astype(np.float32)
    logits = rng.normal(size=(4,)).astype(np.float32)
    hidden = rng.normal(size=(5, 8)).astype(np.float32)
    features = {
        "logits": logits,
        "hidden_cls.1": hidden,
        "attention.0": att,
        "attention_sum.0": att,
        "attention_mean.0": att,
    }
    out = prepare_example(spec, features, length=5)
    expected = logits - np.log(np.exp(logits).sum())
    np.testing.assert_allclose(out["logits"], expected[None], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["hidden_cls.1"], hidden[:1])
    assert out["attention.0"].shape == (75, 1)
    np.testing.assert_array_equal(restore_shape("attention.0", out["attention.0"], 5), att)
    np.testing.assert_allclose(
        restore_shape("attention_sum.0", out["attention_sum.0"], 5), att.sum(0)
    )
    np.testing.assert_allclose(
        restore_shape("attention_mean.0", out["attention_mean.0"], 5), att.mean(0)
    )


def test_prepare_topk() -> None:
    spec = parse_feature_spec("logits", topk=2)
    logits = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, 1.0, 1.0, 0.0]], dtype=np.float32)
    out = prepare_example(spec, {"logits": logits}, length=1)
    np.testing.assert_array_equal(out["logits.topk_ids"], [[1, 3], [0, 1]])
    np.testing.assert_array_equal(out["logits.topk_values"], [[3.0, 2.0], [5.0, 1.0]])
    lse = np.log(np.exp(logits.astype(np.float64)).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(out["logits.logsumexp"], lse, rtol=1e-6)


def test_prepare_errors() -> None:
    spec = parse_feature_spec("hidden:0,attention:0")
    good = {"hidden.0": np.zeros((4, 8)), "attention.0": np.zeros((2, 4, 4))}
    with pytest.raises(CacheError, match=r"missing \['attention.0'\], unexpected \['hidden.1'\]"):
        prepare_example(spec, {"hidden.0": good["hidden.0"], "hidden.1": good["hidden.0"]}, 4)
    with pytest.raises(CacheError, match=r"'hidden.0' with shape \(4, 8\): expected \(L=5, D\)"):
        prepare_example(spec, good, length=5)


def test_no_cache_module_imports_pickle() -> None:
    package = pathlib.Path(cachebrew.cache.__file__).parent
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] in ("pickle", "cloudpickle", "dill") for n in names), (
                path
            )


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
def test_torch_and_numpy_decode_are_bit_identical(dtype: str, monkeypatch) -> None:
    import sys

    import torch  # noqa: F401  (decode uses torch only when it is already loaded)

    x = np.random.default_rng(3).normal(size=(300, 256)).astype(np.float32)  # above the size cut
    stored, scale = encode(x, dtype)
    with_torch = decode(stored, scale, dtype)
    monkeypatch.delitem(sys.modules, "torch")
    np.testing.assert_array_equal(decode(stored, scale, dtype), with_torch)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_torch_and_numpy_encode_are_bit_identical(dtype: str, monkeypatch) -> None:
    import sys

    import torch  # noqa: F401  (encode uses torch only when it is already loaded)

    rng = np.random.default_rng(4)
    scales = 10.0 ** rng.integers(-9, 4, size=(300, 256))  # subnormal to large halves
    x = (rng.normal(size=(300, 256)) * scales).astype(np.float32)
    x[0, :8] = [0.0, -0.0, 6e-8, 1.0 + 2**-11, 1.0 + 3 * 2**-11, 65504.0, -65504.0, 3e-41]
    with_torch, _ = encode(x, dtype)
    for bad in (np.nan, np.inf, 7e4 if dtype == "fp16" else np.inf):
        y = x.copy()
        y[7, 7] = bad
        with pytest.raises(CacheError, match="non-finite|exceeds the fp16 range"):
            encode(y, dtype)
    monkeypatch.delitem(sys.modules, "torch")
    with_numpy, _ = encode(x, dtype)
    assert with_torch.dtype == with_numpy.dtype
    np.testing.assert_array_equal(with_torch.view(np.uint16), with_numpy.view(np.uint16))
