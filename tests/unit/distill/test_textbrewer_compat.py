"""``textbrewer_compat=True`` reproduces textbrewer==0.2.1.post1 on its own two examples.

The examples are TextBrewer's ``examples/random_tokens_example/distill.py`` and
``examples/mnli_example/main.distill.py`` (repository HEAD 2c105fa), ported as a user would:
the same script run once with ``import textbrewer`` and once with ``import cachebrew as
textbrewer``. Only the sizes shrink (tiny BERTs, a few random examples) and two lines follow
transformers 5 (``torch.optim.AdamW``; ``BertModel`` outputs read by name). Each example meets
one deliberate fix: the masked ``nst`` divisor (random tokens) and clipping that covers the
projections (MNLI). With the switch the final weights are bit-identical; without it they
differ and one log line names the difference and the switch.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    get_linear_schedule_with_warmup,
)

import cachebrew
from cachebrew.distill import compat

textbrewer = pytest.importorskip("textbrewer")


def tiny_config(layers: int, hidden: int) -> BertConfig:
    """The example's JSON configs, shrunk (dropout 0.1 kept: both libraries draw the same)."""
    return BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        vocab_size=100,
        max_position_embeddings=32,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        attn_implementation="eager",
    )


# ------------------------------------------------------------ random_tokens_example/distill.py


class DictDataset(Dataset):
    def __init__(self, all_input_ids, all_attention_mask, all_labels):
        self.all_input_ids = all_input_ids
        self.all_attention_mask = all_attention_mask
        self.all_labels = all_labels

    def __getitem__(self, index):
        return {
            "input_ids": self.all_input_ids[index],
            "attention_mask": self.all_attention_mask[index],
            "labels": self.all_labels[index],
        }

    def __len__(self):
        return self.all_input_ids.size(0)


def simple_adaptor(batch, model_outputs):
    return {
        "logits": model_outputs[1],
        "hidden": model_outputs[2],
        "inputs_mask": batch["attention_mask"],
    }


def random_tokens_example(lib, output_dir, **compat_flag):
    """The script body with ``textbrewer`` bound to ``lib``; returns the trained student."""
    torch.manual_seed(0)
    bert_config = tiny_config(8, 32)
    bert_config_T3 = tiny_config(3, 32)
    bert_config.output_hidden_states = True
    bert_config_T3.output_hidden_states = True
    teacher_model = BertForSequenceClassification(bert_config)
    student_model = BertForSequenceClassification(bert_config_T3)

    all_input_ids = torch.randint(low=0, high=100, size=(20, 16))
    all_attention_mask = torch.ones_like(all_input_ids)
    all_labels = torch.randint(low=0, high=2, size=(20,))
    dataset = DictDataset(all_input_ids, all_attention_mask, all_labels)
    dataloader = DataLoader(dataset, batch_size=8)
    num_epochs = 2
    num_training_steps = len(dataloader) * num_epochs
    optimizer = torch.optim.AdamW(student_model.parameters(), lr=1e-4)
    scheduler_class = get_linear_schedule_with_warmup
    scheduler_args = {
        "num_warmup_steps": int(0.1 * num_training_steps),
        "num_training_steps": num_training_steps,
    }
    lib.utils.display_parameters(teacher_model, max_level=3)

    train_config = lib.TrainingConfig(device="cpu", output_dir=str(output_dir))
    distill_config = lib.DistillationConfig(
        temperature=8,
        hard_label_weight=0,
        kd_loss_type="ce",
        probability_shift=False,
        intermediate_matches=[
            {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
            {"layer_T": 8, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
            {"layer_T": [0, 0], "layer_S": [0, 0], "feature": "hidden", "loss": "nst", "weight": 1},
            {"layer_T": [8, 8], "layer_S": [2, 2], "feature": "hidden", "loss": "nst", "weight": 1},
        ],
        **compat_flag,
    )
    distiller = lib.GeneralDistiller(
        train_config=train_config,
        distill_config=distill_config,
        model_T=teacher_model,
        model_S=student_model,
        adaptor_T=simple_adaptor,
        adaptor_S=simple_adaptor,
    )
    with distiller:
        distiller.train(
            optimizer,
            dataloader,
            num_epochs=num_epochs,
            scheduler_class=scheduler_class,
            scheduler_args=scheduler_args,
        )
    return student_model


# ------------------------------------------------------------------ mnli_example/main.distill.py


class BertForGLUESimple(nn.Module):
    """``examples/mnli_example/modeling.py``; the BertModel outputs are read by name."""

    def __init__(self, config, num_labels):
        super().__init__()
        config.num_labels = num_labels
        self.num_labels = num_labels
        config.output_hidden_states = True
        config.output_attentions = False
        self.bert = BertModel(config)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, attention_mask, token_type_ids, labels=None):
        out = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        logits = self.classifier(self.dropout(out.pooler_output))
        if labels is not None:
            return logits, out.hidden_states, nn.functional.cross_entropy(logits, labels)
        return logits


def BertForGLUESimpleAdaptor(batch, model_outputs, with_logits=True, with_mask=False):  # noqa: N802
    dict_obj = {"hidden": model_outputs[1]}
    if with_mask:
        dict_obj["inputs_mask"] = batch[1]
    if with_logits:
        dict_obj["logits"] = (model_outputs[0],)
    return dict_obj


def divide_parameters(named_parameters, lr=None, weight_decay_rate=0.01):
    no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]
    decay = [p for n, p in named_parameters if not any(d in n for d in no_decay)]
    rest = [p for n, p in named_parameters if any(d in n for d in no_decay)]
    return [
        {"params": decay, "weight_decay": weight_decay_rate, "lr": lr},
        {"params": rest, "weight_decay": 0.0, "lr": lr},
    ]


L4t_hidden_mse = [  # student hidden 16 -> teacher 32 ("linear", 312, 768 in the example)
    {"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
     "proj": ["linear", 16, 32]}
    for t, s in ((0, 0), (2, 1), (4, 2))
]  # fmt: skip
L4_hidden_smmd = [
    {"layer_T": [t, t], "layer_S": [s, s], "feature": "hidden", "loss": "mmd", "weight": 1}
    for t, s in ((0, 0), (2, 1), (4, 2))
]


def mnli_example(lib, output_dir, **compat_flag):
    """``main()`` with ``--matches L4t_hidden_mse L4_hidden_smmd`` on random MNLI-like data."""
    torch.manual_seed(9580)
    np.random.seed(9580)
    random.seed(9580)
    num_labels = 3
    model_T = BertForGLUESimple(tiny_config(4, 32), num_labels=num_labels)
    model_S = BertForGLUESimple(tiny_config(2, 16), num_labels=num_labels)
    ids = torch.randint(1, 100, (24, 12))
    mask = (torch.arange(12) < torch.randint(4, 13, (24, 1))).long()
    train_dataset = TensorDataset(
        ids * mask, mask, torch.zeros_like(ids), torch.randint(0, num_labels, (24,))
    )
    all_trainable_params = divide_parameters(list(model_S.named_parameters()), lr=1e-4)
    train_dataloader = DataLoader(
        train_dataset, sampler=RandomSampler(train_dataset), batch_size=8, drop_last=True
    )
    num_train_epochs = 2
    num_train_steps = int(len(train_dataloader) // 1 * num_train_epochs)
    train_config = lib.TrainingConfig(
        gradient_accumulation_steps=1,
        ckpt_frequency=1,
        output_dir=str(output_dir),
        device="cpu",
    )
    distill_config = lib.DistillationConfig(
        temperature=8, intermediate_matches=L4t_hidden_mse + L4_hidden_smmd, **compat_flag
    )
    distiller = lib.GeneralDistiller(
        train_config=train_config,
        distill_config=distill_config,
        model_T=model_T,
        model_S=model_S,
        adaptor_T=BertForGLUESimpleAdaptor,
        adaptor_S=BertForGLUESimpleAdaptor,
    )
    optimizer = torch.optim.AdamW(all_trainable_params, lr=1e-4)
    scheduler_args = {
        "num_warmup_steps": int(0.1 * num_train_steps),
        "num_training_steps": num_train_steps,
    }
    with distiller:
        distiller.train(
            optimizer,
            scheduler_class=get_linear_schedule_with_warmup,
            scheduler_args=scheduler_args,
            dataloader=train_dataloader,
            num_epochs=num_train_epochs,
            callback=None,
            max_grad_norm=1,
        )
    return model_S


# ----------------------------------------------------------------------------------- tests

EXAMPLES = {"random_tokens": random_tokens_example, "mnli": mnli_example}
NOTED = {"random_tokens": "nst_divisor", "mnli": "clip_projections"}


def max_abs_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Each example run by textbrewer itself, once per module."""
    root = tmp_path_factory.mktemp("tb")
    return {name: run(textbrewer, root / name) for name, run in EXAMPLES.items()}


@pytest.mark.parametrize("name", EXAMPLES)
def test_switch_reproduces_textbrewer_exactly(tmp_path, reference, name):
    ours = EXAMPLES[name](cachebrew, tmp_path, textbrewer_compat=True)
    assert max_abs_diff(ours, reference[name]) == 0


@pytest.mark.parametrize("name", EXAMPLES)
def test_without_switch_the_difference_is_logged_once(tmp_path, reference, name, caplog):
    compat.reset_notes()
    with caplog.at_level(logging.WARNING, logger="cachebrew.distill.compat"):
        ours = EXAMPLES[name](cachebrew, tmp_path)
    assert max_abs_diff(ours, reference[name]) > 0
    lines = [r.getMessage() for r in caplog.records if r.name == "cachebrew.distill.compat"]
    assert len(lines) == 1, lines
    assert compat.DIFFERENCES[NOTED[name]] in lines[0] and "textbrewer_compat=True" in lines[0]


def test_utils_is_an_attribute_of_the_package():
    import subprocess
    import sys

    code = (
        "import cachebrew as textbrewer, torch\n"
        "print(textbrewer.utils.display_parameters(torch.nn.Linear(2, 3), max_level=1)[0])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "9" in done.stdout  # 2*3 weights + 3 biases


def test_probability_shift_negative_label_under_the_switch():
    logits = torch.tensor([[0.0, 5.0, 1.0], [2.0, 0.0, 1.0]])
    labels = torch.tensor([-1, 0])
    shifted = compat.shift_labels(logits, labels, compat=True)
    assert shifted.tolist() == [2, 0]  # -1 indexes the last class, as TextBrewer's tensor[i, -1]
    assert compat.shift_labels(logits, labels, compat=False).tolist() == [-1, 0]
    ours = cachebrew.losses.probability_shift(logits, shifted)
    theirs = textbrewer.distiller_utils.probability_shift_(logits.clone(), labels)
    assert torch.equal(ours, theirs)


def test_the_switch_is_reachable_from_the_run_yaml(tmp_path):
    import yaml

    from cachebrew.runner.config import load_distill_config

    path = tmp_path / "run.yaml"
    run = {"cache": "c", "student": "s.json", "out": "o", "distill": {"textbrewer_compat": True}}
    path.write_text(yaml.safe_dump(run))
    cfg = load_distill_config(str(path), {})
    assert cfg.distill_config.textbrewer_compat is True
    unset = load_distill_config(str(path), {}, ["distill.textbrewer_compat=false"])
    assert unset.distill_config.textbrewer_compat is False
    with pytest.raises(cachebrew.ConfigError, match="textbrewer_compat"):
        cachebrew.DistillationConfig(textbrewer_compat="yes")


def test_leftover_micro_batches_are_drawn_under_the_switch(tmp_path, caplog):
    """GA=2 over 5 batches: TextBrewer runs the 5th and drops its gradients; with dropout
    that shifts every later draw, so the switch runs its forward too."""
    from distill_helpers import adaptor, batches, clone, teacher_adaptor, teacher_and_student

    teacher, student = teacher_and_student(dropout_S=0.1)
    data = batches(5)
    students = {}
    for name, lib, flag in (
        ("tb", textbrewer, {}),
        ("compat", cachebrew, {"textbrewer_compat": True}),
        ("default", cachebrew, {}),
    ):
        model = clone(student)
        train_config = lib.TrainingConfig(
            device="cpu", output_dir=str(tmp_path / name), gradient_accumulation_steps=2
        )
        distiller = lib.GeneralDistiller(
            train_config, lib.DistillationConfig(**flag), teacher, model, teacher_adaptor, adaptor
        )
        torch.manual_seed(5)
        with distiller:
            distiller.train(torch.optim.AdamW(model.parameters(), lr=1e-3), data, num_epochs=3)
        students[name] = model
    assert max_abs_diff(students["compat"], students["tb"]) == 0
    assert max_abs_diff(students["default"], students["tb"]) > 0
