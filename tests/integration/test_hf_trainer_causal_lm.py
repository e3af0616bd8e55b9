"""A causal LM student through DistillationTrainer with TRL's SFTConfig: KD from a
``sample:N``, ``topk:K:qN`` or ``exact`` cache + the hard-label LM loss, equal to `cachebrew distill`.

fp32 CPU, no dropout, same student init, optimizer, schedule, seed and batches => the final
weights agree within 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from cachebrew import models
from cachebrew.cli import app
from cachebrew.hf import DistillationTrainer
from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

trl = pytest.importorskip("trl")

SEED, LR, BATCH, STEPS = 5, 2e-3, 8, 6
DISTILL = {"temperature": 1, "kd_loss_weight": 1, "hard_label_weight": 0.5}
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


@pytest.fixture(scope="module")
def lm(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path, tiny_vocab_size: int,
    tiny_sentences: list[str],
) -> Path:  # fmt: skip
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("hf_lm")
    teacher = root / "teacher"
    teacher.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (teacher / name).write_bytes((tiny_tokenizer_dir / name).read_bytes())
    small = {"vocab_size": tiny_vocab_size, "n_positions": 64, "n_head": 2, **NO_DROPOUT}
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, **small)).save_pretrained(teacher)
    student = GPT2Config(n_embd=16, n_layer=1, **small).to_dict()
    (root / "student.json").write_text(json.dumps(student))
    with open(root / "corpus.jsonl", "w") as f:
        for i, sentence in enumerate(tiny_sentences[:48]):
            f.write(json.dumps({"text": sentence, "id": f"s{i}"}) + "\n")
    return root


def _precompute(lm: Path, mode: str) -> Path:
    out = lm / f"cache_{mode.replace(':', '_')}"
    if not out.exists():
        run_precompute(
            PrecomputeConfig(
                teacher=str(lm / "teacher"), data=str(lm / "corpus.jsonl"), out=str(out),
                id_field="id", logits=mode, dtype="fp32", shard_size=16,
            ),
            progress=False,
        )  # fmt: skip
    return out


def _cachebrew_distill(lm: Path, cache: Path) -> dict[str, torch.Tensor]:
    run = {
        "cache": str(cache), "student": str(lm / "student.json"), "distill": DISTILL,
        "num_steps": STEPS, "batch_size": BATCH, "shuffle_buffer": 16, "max_grad_norm": 1.0,
        "training": {"seed": SEED}, "optimizer": {"lr": LR, "weight_decay": 0.0},
        "schedule": {"name": "cosine", "warmup_steps": 1},
    }  # fmt: skip
    config = cache.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(run))
    out = cache.with_name(cache.name + "_run")
    result = CliRunner().invoke(
        app, ["distill", "--quiet", "--config", str(config), "--out", str(out)]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    return load_file(out / "checkpoints" / f"checkpoint-gs{STEPS}" / "student.safetensors")


def _trainer(lm: Path, cache: Path, out: Path) -> DistillationTrainer:
    student = models.load_model(
        str(lm / "student.json"), task="causal_lm", role="student", seed=SEED
    ).model  # the runner's student init
    args = trl.SFTConfig(
        output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=STEPS,
        learning_rate=LR, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="cosine",
        warmup_steps=1, optim="adamw_torch", seed=SEED, report_to=[], use_cpu=True,
        save_strategy="no", logging_steps=1, bf16=False, gradient_checkpointing=False,
    )  # fmt: skip
    return DistillationTrainer(
        model=student, args=args, cache=str(cache), distill_config=DISTILL,
        processing_class=models.load_tokenizer(lm / "teacher"),
        dataset_options={"buffer_size": 16},
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["sample:6", "topk:8:q4", "exact"])
def test_large_vocabulary_kd_causal_lm_equals_cachebrew_distill(
    lm: Path, mode: str, tmp_path: Path
) -> None:
    cache = _precompute(lm, mode)
    reference = _cachebrew_distill(lm, cache)
    trainer = _trainer(lm, cache, tmp_path / "sft")
    trainer.train()
    trained = {k: v.detach() for k, v in trainer.model.state_dict().items()}
    assert reference.keys() <= trained.keys()  # safetensors keeps one of the tied wte / lm_head
    assert max(float((trained[k] - reference[k]).abs().max()) for k in reference) < 1e-5
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert all("unweighted_kd_loss" in r and "unweighted_hard_label_loss" in r for r in logged)
