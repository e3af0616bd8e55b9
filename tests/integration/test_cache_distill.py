"""Precompute a tiny teacher, then distill from CacheDataset batches: the same training as with
the live teacher on the same inputs, fp16 close to fp32, and bit-identical mid-epoch resume."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertForSequenceClassification

from cachebrew import DistillationConfig, GeneralDistiller, TrainingConfig
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.models import default_adaptor, load_model
from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

FEATURES = "logits:logprobs,hidden:0,2,attention:1"
MATCHES = [
    {
        "layer_T": 2,
        "layer_S": 1,
        "feature": "hidden",
        "loss": "hidden_mse",
        "weight": 1,
        "proj": ["linear", 16, 32],
    },
    {"layer_T": 1, "layer_S": 0, "feature": "attention", "loss": "attention_mse", "weight": 1},
    {"layer_T": [0, 2], "layer_S": [0, 2], "feature": "hidden", "loss": "nst", "weight": 1},
]
student_adaptor = partial(default_adaptor, kind="sequence_classification")


class Interrupt(Exception):
    """Stands in for a killed job."""


@pytest.fixture(scope="module")
def caches(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    root = tmp_path_factory.mktemp("caches")
    out = {}
    for dtype in ("fp32", "fp16"):
        config = PrecomputeConfig(
            teacher=str(tiny_teacher_dir),
            data=str(tiny_corpus_jsonl),
            out=str(root / dtype),
            features=FEATURES,
            dtype=dtype,
            label_field="label",
            shard_size=16,
            batch_size=8,
        )
        run_precompute(config, progress=False)
        out[dtype] = config.out
    return out


@pytest.fixture(scope="module")
def student(tiny_bert_config: Callable[..., Any]) -> BertForSequenceClassification:
    """Hidden 16 (teacher 32), 2 layers, dropout 0.1: every copy starts from these weights."""
    torch.manual_seed(1)
    config = tiny_bert_config(
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        output_hidden_states=True,
        output_attentions=True,
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config)


def distill(
    output_dir: Path,
    student: torch.nn.Module,
    data: Any,
    teacher: Any = None,
    *,
    callback: Callable[..., Any] | None = None,
    resume_from: str | None = None,
) -> GeneralDistiller:
    """Two epochs of GeneralDistiller (KD at T=4, three matches, hard labels)."""
    model = copy.deepcopy(student)
    train_config = TrainingConfig(
        device="cpu", output_dir=str(output_dir), seed=0, ckpt_frequency=2
    )
    distill_config = DistillationConfig(
        temperature=4, hard_label_weight=0.5, intermediate_matches=MATCHES
    )
    torch.manual_seed(123)  # projection init
    model_T, adaptor_T = (None, None) if teacher is None else (teacher.model, teacher.adaptor)
    distiller = GeneralDistiller(
        train_config, distill_config, model_T, model, adaptor_T, student_adaptor
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with distiller:
        distiller.train(optimizer, data, num_epochs=2, callback=callback, resume_from=resume_from)
    return distiller


def test_cached_training_equals_online_training(
    caches: dict[str, str], student: torch.nn.Module, tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    cached_data = CacheDataset(caches["fp32"], batch_size=8, seed=0)
    online_data = CacheDataset(caches["fp32"], batch_size=8, seed=0, teacher_cache=False)
    teacher = load_model(tiny_teacher_dir)

    cached = distill(tmp_path / "cached", student, cached_data)
    online = distill(tmp_path / "online", student, online_data, teacher)

    assert len(cached.loss_history) == len(online.loss_history) == 10  # 40 examples / 8, x2
    assert {"unweighted_kd_loss", "unweighted_hard_label_loss"} < set(cached.loss_history[0])
    for a, b in zip(cached.loss_history, online.loss_history, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=0, msg=key)
    for a, b in zip(
        cached.model_S.state_dict().values(), online.model_S.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_fp16_cache_trains_like_fp32(
    caches: dict[str, str], student: torch.nn.Module, tmp_path: Path
) -> None:
    losses = {}
    for dtype, path in caches.items():
        distiller = distill(tmp_path / dtype, student, CacheDataset(path, batch_size=8))
        losses[dtype] = distiller.loss_history[-1]["total_loss"]
    assert losses["fp16"] == pytest.approx(losses["fp32"], rel=5e-3)


def test_resume_mid_epoch_is_bit_identical(
    caches: dict[str, str],
    student: torch.nn.Module,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def data() -> CacheDataset:
        return CacheDataset(caches["fp16"], batch_size=8, seed=5, buffer_size=16)

    full = distill(tmp_path / "full", student, data())

    def interrupt(model: torch.nn.Module, step: int) -> None:
        if step == 7:  # epoch 2, after its mid-epoch checkpoint at batch 2
            raise Interrupt

    with pytest.raises(Interrupt):
        distill(tmp_path / "cut", student, data(), callback=interrupt)
    assert (tmp_path / "cut" / "latest").read_text().strip() == "checkpoint-gs7"

    positions: list[int] = []
    original = CacheDataset.resume_at
    monkeypatch.setattr(
        CacheDataset, "resume_at", lambda self, p: (positions.append(p), original(self, p))[1]
    )
    resumed = distill(tmp_path / "cut", student, data(), resume_from="latest")

    assert positions == [2]
    assert [row["step"] for row in resumed.loss_history] == [8, 9, 10]
    for a, b in zip(
        full.model_S.state_dict().values(), resumed.model_S.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    full_tail = {row["step"]: row["total_loss"] for row in full.loss_history}
    assert all(row["total_loss"] == full_tail[row["step"]] for row in resumed.loss_history)
