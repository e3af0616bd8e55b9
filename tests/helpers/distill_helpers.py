"""Helpers shared by the distill tests: tiny BERTs, adaptors, batches, teacher caches.

Imported by the other ``test_distill_*`` modules; it holds no tests itself.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification

VOCAB = 100
SEQ_LEN = 8
NUM_LABELS = 3


def bert_config(hidden: int, dropout: float = 0.0, **overrides: Any) -> BertConfig:
    """A tiny BERT config (2 layers, 2 heads), eager attention so attentions are returned."""
    config = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        vocab_size=VOCAB,
        max_position_embeddings=32,
        num_labels=NUM_LABELS,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        output_hidden_states=True,
        output_attentions=True,
        attn_implementation="eager",
        **overrides,
    )
    return config


def tiny_bert(hidden: int, seed: int, dropout: float = 0.0) -> BertForSequenceClassification:
    """A freshly initialised tiny BERT classifier, deterministic in ``seed``."""
    torch.manual_seed(seed)
    return BertForSequenceClassification(bert_config(hidden, dropout))


def teacher_and_student(
    dropout_S: float = 0.0,
) -> tuple[BertForSequenceClassification, BertForSequenceClassification]:
    """Teacher (hidden 32, eval) and student (hidden 16)."""
    teacher = tiny_bert(32, seed=0).eval()
    student = tiny_bert(16, seed=1, dropout=dropout_S)
    return teacher, student


def adaptor(batch: Any, outputs: Any) -> dict[str, Any]:
    """Adaptor for both sides: logits, hidden, attention, inputs_mask and the hard-label loss."""
    return {
        "logits": outputs.logits,
        "hidden": outputs.hidden_states,
        "attention": outputs.attentions,
        "inputs_mask": batch["attention_mask"],
        "losses": outputs.loss,
    }


def teacher_adaptor(batch: Any, outputs: Any) -> dict[str, Any]:
    """Teacher side: no hard-label loss (only the student's is used)."""
    results = adaptor(batch, outputs)
    del results["losses"]
    return results


def examples(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Random examples with padding: input_ids, attention_mask, labels."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(count):
        length = int(torch.randint(3, SEQ_LEN + 1, (), generator=generator))
        ids = torch.randint(1, VOCAB, (SEQ_LEN,), generator=generator)
        mask = (torch.arange(SEQ_LEN) < length).long()
        items.append(
            {
                "input_ids": ids * mask,
                "attention_mask": mask,
                "labels": torch.randint(0, NUM_LABELS, (), generator=generator),
            }
        )
    return items


def batches(num_batches: int, batch_size: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """A fixed list of collated dict batches."""
    loader = DataLoader(examples(num_batches * batch_size, seed), batch_size=batch_size)
    return list(loader)


@torch.no_grad()
def cached_batches(teacher: torch.nn.Module, plain: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{'teacher', 'student', 'teacher_cache'}`` batches from the teacher's adapted fp32 outputs."""
    teacher.eval()
    out = []
    for batch in plain:
        cache = teacher_adaptor(batch, teacher(**batch))
        cache = {k: tuple(v) if isinstance(v, tuple) else v for k, v in cache.items()}
        out.append({"teacher": batch, "student": batch, "teacher_cache": cache})
    return out


def clone(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy (same initial weights)."""
    return copy.deepcopy(model)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Bit-identical state dicts."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def general_matches(proj: bool = True) -> list[dict[str, Any]]:
    """hidden_mse (16 -> 32 linear projection), attention_mse and nst matches.

    ``proj=False`` drops hidden_mse (which needs the projection): attention_mse and nst only.
    """
    hidden = {
        "layer_T": 2,
        "layer_S": 1,
        "feature": "hidden",
        "loss": "hidden_mse",
        "weight": 1,
        "proj": ["linear", 16, 32],
    }
    return [hidden] * proj + [
        {"layer_T": 1, "layer_S": 0, "feature": "attention", "loss": "attention_mse", "weight": 1},
        {"layer_T": [0, 2], "layer_S": [0, 2], "feature": "hidden", "loss": "nst", "weight": 1},
    ]
