"""Loading teachers and students, identity hashes, the default adaptor, tokenizers, layer init."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cachebrew.errors import ConfigError
from cachebrew.models import (
    LoadedModel,
    count_parameters,
    default_adaptor,
    init_from_teacher,
    load_model,
    load_tokenizer,
    resolve_device,
)


@pytest.fixture
def config_json(tmp_path, tiny_bert_config):
    def write(**overrides):
        path = tmp_path / f"config_{len(list(tmp_path.glob('config_*')))}.json"
        path.write_text(tiny_bert_config(**overrides).to_json_string())
        return path

    return write


@pytest.fixture
def factory_module(tmp_path, tiny_bert_config, monkeypatch):
    """A module ``tiny_factories`` with a plain and an (model, adaptor) factory."""
    config_path = tmp_path / "factory_config.json"
    config_path.write_text(tiny_bert_config(num_labels=2).to_json_string())
    (tmp_path / "tiny_factories.py").write_text(
        textwrap.dedent(f"""
        import torch
        from transformers import BertConfig, BertForTokenClassification

        def build():
            return BertForTokenClassification(BertConfig.from_json_file({str(config_path)!r}))

        def build_with_adaptor():
            return torch.nn.Linear(4, 2), lambda batch, outputs: {{"logits": outputs}}

        def build_nothing():
            return 42
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tiny_factories"
    sys.modules.pop("tiny_factories", None)


def encode(tokenizer, texts, labels=None):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    if labels is not None:
        batch["labels"] = labels
    return dict(batch)


def test_load_teacher_from_directory(tiny_teacher_dir):
    loaded = load_model(tiny_teacher_dir)
    assert isinstance(loaded, LoadedModel)
    assert loaded.kind == "sequence_classification"
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.model.config._attn_implementation == "eager"
    assert loaded.tokenizer is not None
    identity = loaded.identity
    assert identity["class"] == "BertForSequenceClassification"
    assert identity["weights_hash_of"] == "file"
    assert identity["fresh_head"] is False
    assert identity["source"] == str(tiny_teacher_dir)
    assert len(identity["config_sha256"]) == len(identity["weights_sha256"]) == 64
    assert len(identity["tokenizer_sha256"]) == 64


def test_load_student_from_config_json(config_json):
    path = config_json()
    loaded = load_model(path, task="token_classification", num_labels=5, role="student")
    assert loaded.kind == "token_classification"
    assert type(loaded.model).__name__ == "BertForTokenClassification"
    assert loaded.model.training
    assert loaded.model.classifier.out_features == 5
    assert loaded.identity["weights_hash_of"] == "state_dict"
    assert loaded.tokenizer is None


def test_config_json_weights_are_seeded(config_json):
    path = config_json()
    rng_before = torch.get_rng_state()
    first = load_model(path, task="masked_lm")
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    second = load_model(path, task="masked_lm")
    other_seed = load_model(path, task="masked_lm", seed=1)
    assert first.identity == second.identity
    assert first.identity["weights_sha256"] != other_seed.identity["weights_sha256"]
    assert first.identity["config_sha256"] == other_seed.identity["config_sha256"]


def test_identity_changes_with_weights(tiny_teacher_dir, tmp_path):
    first, second = load_model(tiny_teacher_dir), load_model(tiny_teacher_dir)
    assert first.identity == second.identity
    changed_dir = tmp_path / "changed"
    shutil.copytree(tiny_teacher_dir, changed_dir)
    model = first.model
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    model.save_pretrained(changed_dir)
    changed = load_model(changed_dir)
    assert changed.identity["weights_sha256"] != first.identity["weights_sha256"]
    assert changed.identity["config_sha256"] == first.identity["config_sha256"]


def test_base_model_checkpoint_gets_fresh_head(tmp_path, tiny_bert_config, caplog):
    from transformers import BertModel

    BertModel(tiny_bert_config()).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"name no known head; pass task= one of \["):
        load_model(tmp_path)
    with caplog.at_level("INFO", logger="cachebrew.models"):
        loaded = load_model(tmp_path, task="sequence_classification", num_labels=4)
    assert "fresh" in caplog.text
    assert loaded.model.classifier.out_features == 4
    assert loaded.identity["fresh_head"] is True
    assert loaded.identity["weights_hash_of"] == "state_dict"


def test_checkpoint_head_with_other_label_count_is_an_error(tiny_teacher_dir):
    with pytest.raises(ConfigError, match="head has 3 labels, num_labels=5"):
        load_model(tiny_teacher_dir, num_labels=5)


def test_load_from_factory(factory_module):
    loaded = load_model(f"{factory_module}:build")
    assert loaded.kind == "token_classification"
    assert loaded.identity["source"] == f"{factory_module}:build"
    assert not loaded.model.training
    custom = load_model(f"{factory_module}:build_with_adaptor", role="student")
    assert custom.kind == "custom"
    assert custom.adaptor(None, "out") == {"logits": "out"}
    assert custom.model.training


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("/no/such/model_dir", {}, "'/no/such/model_dir': no such file or directory"),
        ("no_such_module_xyz:build", {}, "cannot import model factory .*ModuleNotFoundError"),
        ("json:no_such_function", {}, "cannot import model factory .*AttributeError"),
        ("/no/such/dir", {"task": "regression"}, r"unknown task 'regression'; choose one of \["),
        ("/no/such/dir", {"role": "coach"}, r"unknown role 'coach'; choose one of \['teacher'"),
    ],
)
def test_load_errors(spec, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        load_model(spec, **kwargs)


def test_factory_returning_a_non_module(factory_module):
    with pytest.raises(ConfigError, match="returned int; expected a torch.nn.Module"):
        load_model(f"{factory_module}:build_nothing")


def test_directory_without_config_or_safetensors(tmp_path, tiny_teacher_dir):
    with pytest.raises(ConfigError, match="has no config.json"):
        load_model(tmp_path)
    shutil.copy(tiny_teacher_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ConfigError, match="no \\*.safetensors"):
        load_model(tmp_path)


def test_default_adaptor_sequence_classification(tiny_teacher_dir, tiny_sentences):
    loaded = load_model(tiny_teacher_dir)
    batch = encode(loaded.tokenizer, tiny_sentences[:3], labels=torch.tensor([0, 1, 2]))
    outputs = loaded.model(**batch)
    adapted = loaded.adaptor(batch, outputs)
    B, L = batch["input_ids"].shape
    assert set(adapted) == {"logits", "hidden", "attention", "inputs_mask", "labels", "losses"}
    assert adapted["logits"].shape == (B, 3)
    assert len(adapted["hidden"]) == 2 + 1  # embeddings + one per layer
    assert all(h.shape == (B, L, 32) for h in adapted["hidden"])
    assert len(adapted["attention"]) == 2
    assert all(a.shape == (B, 2, L, L) for a in adapted["attention"])
    # probabilities, not scores: rows sum to one, padded keys get zero
    torch.testing.assert_close(adapted["attention"][0].sum(-1), torch.ones(B, 2, L))
    assert torch.equal(adapted["inputs_mask"], batch["attention_mask"])
    assert torch.equal(adapted["labels"], batch["labels"])
    assert adapted["losses"].ndim == 0


def test_default_adaptor_token_classification(config_json, tiny_teacher_dir, tiny_sentences):
    loaded = load_model(config_json(), task="token_classification", num_labels=4)
    tokenizer = load_tokenizer(tiny_teacher_dir)
    batch = encode(tokenizer, tiny_sentences[:2])
    mask = batch["attention_mask"]
    labels = torch.where(mask.bool(), torch.arange(mask.shape[1]) % 4, -100)
    labels[:, 0] = -100
    batch["labels"] = labels
    adapted = loaded.adaptor(batch, loaded.model(**batch))
    assert torch.equal(adapted["logits_mask"], mask)
    assert adapted["logits"].shape == (*mask.shape, 4)
    assert adapted["labels"].shape == (int(mask.sum()),)  # pre-selected like the logits
    assert torch.equal(adapted["labels"], labels[mask.bool()])


def test_default_adaptor_without_labels_or_mask():
    outputs = {"logits": torch.zeros(2, 3, 5), "hidden_states": None}
    adapted = default_adaptor(
        {"input_ids": torch.ones(2, 3, dtype=torch.long)}, outputs, kind="masked_lm"
    )
    assert set(adapted) == {"logits", "inputs_mask", "logits_mask"}
    assert torch.equal(adapted["inputs_mask"], torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ConfigError, match="needs dict-like model outputs"):
        default_adaptor({}, (torch.zeros(1),))


def test_tokenizer_from_tokenizer_json_is_not_unk(tiny_tokenizer_dir, tiny_sentences, tmp_path):
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    ids = tokenizer(tiny_sentences[0])["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids
    assert "token_type_ids" in tokenizer("a b", "c d")
    # without tokenizer_config.json the special tokens come from the vocabulary
    shutil.copy(tiny_tokenizer_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    bare = load_tokenizer(tmp_path / "tokenizer.json")
    assert bare(tiny_sentences[0])["input_ids"] == ids
    assert bare.pad_token == "[PAD]" and bare.unk_token_id not in ids


def test_tokenizer_needs_tokenizer_json(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ConfigError, match=r"vocab.txt found.*maps every token to \[UNK\]"):
        load_tokenizer(tmp_path)


def test_count_parameters_and_device(tiny_teacher_dir):
    model = torch.nn.Linear(3, 2)
    assert count_parameters(model) == 8
    model.bias.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 6
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(ConfigError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")


def test_init_from_teacher_copies_chosen_layers(tiny_teacher_dir, tiny_bert_config):
    from transformers import BertForSequenceClassification

    teacher = load_model(tiny_teacher_dir).model
    student = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1, num_labels=3))
    init_from_teacher(student, tiny_teacher_dir, layers=[1])
    for name, tensor in teacher.bert.embeddings.state_dict().items():
        assert torch.equal(student.bert.embeddings.state_dict()[name], tensor), name
    for name, tensor in teacher.bert.encoder.layer[1].state_dict().items():
        assert torch.equal(student.bert.encoder.layer[0].state_dict()[name], tensor), name
    assert not torch.equal(
        student.bert.encoder.layer[0].attention.self.query.weight,
        teacher.bert.encoder.layer[0].attention.self.query.weight,
    )


def test_init_from_teacher_errors(tiny_teacher_dir, tiny_bert_config):
    from transformers import BertModel

    teacher = load_model(tiny_teacher_dir)
    narrow = BertModel(tiny_bert_config(hidden_size=16, intermediate_size=32, num_hidden_layers=1))
    with pytest.raises(ConfigError, match="hidden sizes must match"):
        init_from_teacher(narrow, teacher, layers=[0])
    student = BertModel(tiny_bert_config(num_hidden_layers=2))
    with pytest.raises(ConfigError, match=r"indices \[5\] out of range \[0, 1\]"):
        init_from_teacher(student, teacher, layers=[0, 5])
    with pytest.raises(ConfigError, match="layers has 1 entries; the student has 2 layers"):
        init_from_teacher(student, teacher, layers=[0])
    with pytest.raises(ConfigError, match="not BERT-family"):
        init_from_teacher(torch.nn.Linear(2, 2), teacher, layers=[0])


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(
        ConfigError, match="not an HF config JSON with a known .model_type.: KeyError"
    ):
        load_model(bad, task="masked_lm")
    Path(tmp_path / "weird.json").write_text(json.dumps({"model_type": "no-such-model"}))
    with pytest.raises(ConfigError, match="weird.json"):
        load_model(tmp_path / "weird.json", task="masked_lm")
