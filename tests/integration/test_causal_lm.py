"""Causal-LM teacher and student end to end: precompute per-token logits, distill from them."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import torch

from cachebrew.cache import open_cache
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.cache.logits.exact import ExactLogits
from cachebrew.cache.logits.sparse import SparseLogits
from cachebrew.metrics import perplexity, token_nll

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lm_setup(tmp_path_factory, tiny_tokenizer_dir, tiny_vocab_size, tiny_sentences):
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("lm")
    teacher = root / "teacher"
    teacher.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (teacher / name).write_bytes((tiny_tokenizer_dir / name).read_bytes())
    small = {"vocab_size": tiny_vocab_size, "n_positions": 64, "n_head": 2}
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, **small)).save_pretrained(teacher)
    (root / "student.json").write_text(
        json.dumps(GPT2Config(n_embd=16, n_layer=1, **small).to_dict())
    )
    with open(root / "corpus.jsonl", "w") as f:
        for i, sentence in enumerate(tiny_sentences):
            f.write(json.dumps({"text": sentence, "id": f"s{i}"}) + "\n")
    return root


def _cli(*args: str, cwd: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cachebrew", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("mode", ["dense", "topk:8", "sample:6", "exact"])
def test_causal_lm_precompute_and_distill(lm_setup: pathlib.Path, mode: str) -> None:
    name = mode.split(":")[0]
    cache = f"cache_{name}"
    _cli("precompute", "--teacher", "teacher", "--data", "corpus.jsonl", "--out", cache,
         "--id-field", "id", "--logits", mode, "--quiet", cwd=lm_setup)  # fmt: skip
    reader = open_cache(str(lm_setup / cache))
    assert reader.manifest["teacher"]["kind"] == "causal_lm"
    batch = next(iter(CacheDataset(reader, batch_size=4, shuffle=False)))
    student, teacher = batch["student"], batch["teacher_cache"]
    # labels are the tokens themselves (the model shifts them), -100 on padding
    mask = student["attention_mask"].bool()
    assert torch.equal(student["labels"][mask], student["input_ids"][mask])
    assert torch.all(student["labels"][~mask] == -100)
    rows = int(mask.sum())  # one teacher row per real token: attention mask = logits_mask
    logits = teacher["logits"]
    sparse = isinstance(logits, SparseLogits | ExactLogits)
    assert (sparse if name != "dense" else True) and (logits.shape[0] == rows)
    run = {
        "cache": cache,
        "student": "student.json",
        "out": f"run_{name}",
        "distill": {"temperature": 1, "hard_label_weight": 1, "kd_loss_weight": 1},
        "num_steps": 3,
        "batch_size": 8,
        "eval": {"fraction": 0.25},  # a causal student is scored by its perplexity
    }
    (lm_setup / f"run_{name}.yaml").write_text(json.dumps(run))
    _cli("distill", "--config", f"run_{name}.yaml", "--quiet", cwd=lm_setup)
    metrics = json.loads((lm_setup / f"run_{name}" / "metrics.json").read_text())
    terms = metrics["loss_terms"]
    assert terms["unweighted_kd_loss"] > 0 and terms["unweighted_hard_label_loss"] > 0
    assert metrics["metric"] == "perplexity" and metrics["value"] > 1
    assert metrics["eval_metrics"] == {"perplexity": metrics["value"]}


def test_a_causal_student_is_scored_on_an_unlabelled_eval_corpus(lm_setup: pathlib.Path) -> None:
    _cli("precompute", "--teacher", "teacher", "--data", "corpus.jsonl", "--out", "cache_eval",
         "--id-field", "id", "--logits", "sample:6", "--quiet", cwd=lm_setup)  # fmt: skip
    run = {
        "cache": "cache_eval",
        "student": "student.json",
        "tokenizer": "teacher",
        "out": "run_eval_data",
        "distill": {"temperature": 1, "hard_label_weight": 1, "kd_loss_weight": 1},
        "num_steps": 2,
        "batch_size": 8,
        "eval": {"data": "corpus.jsonl"},  # texts and ids, no label column
    }
    (lm_setup / "run_eval_data.yaml").write_text(json.dumps(run))
    _cli("distill", "--config", "run_eval_data.yaml", "--quiet", cwd=lm_setup)
    metrics = json.loads((lm_setup / "run_eval_data" / "metrics.json").read_text())
    assert metrics["metric"] == "perplexity" and metrics["value"] > 1


def test_perplexity_is_exp_of_the_shifted_token_nll() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[1, 3:] = -100
    nll, kept = token_nll(logits, labels)
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert perplexity(nll, kept) == pytest.approx(float(ref.exp()), rel=1e-6)
    assert perplexity(torch.zeros(0), torch.zeros(0)) == 0.0
