"""cachebrew.hf on a synthetic cache: the loader Trainer drives, config loading, errors, bf16."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch
import yaml
from cache_helpers import write_cache
from synthetic_cache import synthetic_examples
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from cachebrew.cache import parse_feature_spec
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.errors import CheckpointError, ConfigError
from cachebrew.hf import CacheBatchLoader, DistillationTrainer, as_distill_config

SPEC = parse_feature_spec("logits:logprobs,hidden:0,2", dtype="fp32")
MATCH = {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 8, 16]}  # fmt: skip
DISTILL = {"temperature": 2, "hard_label_weight": 0.5, "intermediate_matches": [MATCH]}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    examples = synthetic_examples(SPEC, 24, seed=1)  # ids < 1000, hidden 16, 3 classes
    return write_cache(tmp_path_factory.mktemp("hf") / "cache", SPEC, examples)


def student() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=32, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return BertForSequenceClassification(config)


def trainer(cache: Any, out: pathlib.Path, **args: Any) -> DistillationTrainer:
    values = {"output_dir": str(out), "per_device_train_batch_size": 4, "num_train_epochs": 1,
              "report_to": [], "use_cpu": True, "save_strategy": "no", **args}  # fmt: skip
    return DistillationTrainer(
        model=student(), args=TrainingArguments(**values), cache=cache, distill_config=DISTILL
    )


def test_the_loader_yields_the_epoch_order_of_seed_and_epoch(cache: pathlib.Path, tmp_path):
    loader = trainer(str(cache), tmp_path, seed=7).get_train_dataloader()
    assert isinstance(loader, CacheBatchLoader) and len(loader) == 6  # 24 examples / 4
    loader.set_epoch(1)
    ids = [i for batch in loader for i in batch["example_ids"]]
    assert ids == loader.cache_dataset.example_order(1) and sorted(ids) == sorted(set(ids))
    skipped = loader.skipping(4)
    skipped.set_epoch(1)  # Trainer resumes: skip first, then set the epoch
    assert [i for batch in skipped for i in batch["example_ids"]] == ids[16:]
    again = trainer(str(cache), tmp_path, seed=7).get_train_dataloader()
    again.set_epoch(1)
    assert [i for batch in again for i in batch["example_ids"]] == ids  # no hidden state


def test_bf16_and_gradient_accumulation_train_and_log_each_term(cache: pathlib.Path, tmp_path):
    run = trainer(str(cache), tmp_path, bf16=True, gradient_accumulation_steps=2, logging_steps=1)
    run.train()
    assert run.state.global_step == 3
    rows = [row for row in run.state.log_history if "loss" in row]
    assert len(rows) == 3
    for row in rows:
        terms = ("unweighted_kd_loss", "unweighted_hidden_hidden_mse_1_2",
                 "unweighted_hard_label_loss")  # fmt: skip
        assert all(torch.isfinite(torch.tensor(row[name])) for name in terms), row
    assert next(run.projections.parameters()).grad is None  # zeroed after each step
    assert run.state.total_flos > 0  # estimated from the student's inputs


def test_distill_section_from_a_run_config_or_the_fields_alone(tmp_path: pathlib.Path) -> None:
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"cache": "c", "student": "s", "distill": DISTILL}))
    fields = tmp_path / "distill.yaml"
    fields.write_text(yaml.safe_dump(DISTILL))
    assert as_distill_config(run) == as_distill_config(fields) == as_distill_config(DISTILL)
    assert as_distill_config(run).intermediate_matches[0].proj[:3] == ("linear", 8, 16)


def test_distill_section_problems_name_the_file(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"distill": {"temperature": -1, "kd_los_type": "ce"}}))
    with pytest.raises(ConfigError, match="bad.yaml: distill") as error:
        as_distill_config(bad)
    assert len(error.value.problems) == 2
    null = tmp_path / "null.yaml"
    null.write_text("distill: null\n")
    with pytest.raises(ConfigError, match="hard labels only"):
        as_distill_config(null)


def test_a_given_dataset_must_fit_the_arguments(cache: pathlib.Path, tmp_path) -> None:
    dataset = CacheDataset(str(cache), batch_size=8, rank=1, world_size=2, run_examples=4)
    with pytest.raises(ConfigError) as error:
        trainer(dataset, tmp_path)
    assert "per_device_train_batch_size is 4" in str(error.value)
    assert "rank 1 of 2 but this process is rank 0 of 1" in str(error.value)
    with pytest.raises(ConfigError, match="reads its training batches from cache="):
        DistillationTrainer(
            model=student(), args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[]),
            cache=str(cache), distill_config=DISTILL, train_dataset=[],
        )  # fmt: skip


def test_resuming_from_a_checkpoint_without_projections_is_refused(cache, tmp_path) -> None:
    run = trainer(str(cache), tmp_path)
    (tmp_path / "checkpoint-1").mkdir()
    with pytest.raises(CheckpointError, match="has no projections.safetensors"):
        run.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


def test_without_accelerate_the_import_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "accelerate" else real(name, *a),
    )
    monkeypatch.delitem(sys.modules, "cachebrew.hf")
    with pytest.raises(ImportError, match=r"pip install 'cachebrew\[hf\]'"):
        importlib.import_module("cachebrew.hf")
