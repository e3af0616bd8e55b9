"""`cachebrew distill` end to end through the CLI: cache vs online, fp16, outputs, resume, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from cachebrew.cli import app
from cachebrew.runner.config import load_distill_config
from cachebrew.runner.run import METRICS_KEYS, train_student
from cachebrew.runner.setup import setup_run
from cachebrew.schedules import lr_factor
from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

runner = CliRunner()
KILL_SCRIPT = Path(__file__).with_name("kill_after_batches.py")
ROOT = Path(__file__).resolve().parents[2]
FEATURES = "logits,hidden:0,2"
HIDDEN_MATCH = {
    "layer_T": 2,
    "layer_S": 1,
    "feature": "hidden",
    "loss": "hidden_mse",
    "weight": 1,
    "proj": ["linear", 16, 32],
}


def _cache(tmp: Path, teacher: Path, corpus: Path, dtype: str) -> Path:
    out = tmp / f"cache-{dtype}"
    cfg = PrecomputeConfig(
        teacher=str(teacher),
        data=str(corpus),
        out=str(out),
        label_field="label",
        features=FEATURES,
        dtype=dtype,
        shard_size=16,
    )
    run_precompute(cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def caches(
    tmp_path_factory: pytest.TempPathFactory, tiny_teacher_dir: Path, tiny_corpus_jsonl: Path
) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("distill_caches")
    return {d: _cache(tmp, tiny_teacher_dir, tiny_corpus_jsonl, d) for d in ("fp32", "fp16")}


@pytest.fixture(scope="module")
def student_json(tmp_path_factory: pytest.TempPathFactory, tiny_vocab_size: int) -> Path:
    path = tmp_path_factory.mktemp("students") / "bert-1l.json"
    config = {
        "model_type": "bert",
        "vocab_size": tiny_vocab_size,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 64,
    }
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def make_config(tmp_path: Path, student_json: Path) -> Callable[..., Path]:
    def make(cache: Path, **extra: Any) -> Path:
        data = {
            "cache": str(cache),
            "student": str(student_json),
            "distill": {"temperature": 4, "hard_label_weight": 0.5},
            "num_epochs": 2,
            "batch_size": 8,
            "eval": {"fraction": 0.2},
            "training": {"seed": 3},
            "optimizer": {"lr": 1e-3},
            **extra,
        }
        data["distill"].setdefault("intermediate_matches", [HIDDEN_MATCH])
        path = tmp_path / f"distill-{len(list(tmp_path.glob('distill-*')))}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return make


def _distill(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["distill", "--quiet", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return dict(json.loads(result.stdout))


def test_cache_and_online_train_identically_and_write_the_run_dir(
    caches: dict[str, Path],
    make_config: Callable[..., Path],
    tiny_teacher_dir: Path,
    tmp_path: Path,
) -> None:
    config = make_config(caches["fp32"])
    _distill("--config", str(config), "--out", str(tmp_path / "cached"))
    online_args = ["--config", str(config), "--out", str(tmp_path / "online")]
    _distill(*online_args, "--teacher", str(tiny_teacher_dir))
    cached = json.loads((tmp_path / "cached" / "metrics.json").read_text())
    online = json.loads((tmp_path / "online" / "metrics.json").read_text())

    assert set(METRICS_KEYS) <= set(cached)
    # 35 examples to train on (5 held out by id hash), batch 8: 5 steps per epoch, 2 epochs
    assert cached["steps"] == 10 and len(cached["loss_curve"]) == 10
    np.testing.assert_allclose(cached["loss_curve"], online["loss_curve"], rtol=1e-5)
    assert cached["teacher_forwards"] == 0 and cached["mode"] == "cache"
    assert online["teacher_forwards"] == 10 and online["mode"] == "online"
    assert cached["metric"] == "accuracy" and 0 <= cached["value"] <= 1
    assert cached["eval_examples"] == 5 and cached["params"] > 0
    assert cached["examples_per_s"] > 0 and 0 <= cached["data_wait_share"] <= 1
    assert cached["final_loss"] == cached["loss_curve"][-1]
    assert "unweighted_hidden_hidden_mse_1_2" in cached["loss_terms"]

    run_dir = tmp_path / "cached"
    assert (run_dir / "checkpoints" / "checkpoint-gs10" / "student.safetensors").is_file()
    assert any((run_dir / "tb").iterdir())
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["out"] == str(run_dir) and resolved["training"]["seed"] == 3
    assert "output_dir" not in resolved["training"]


def test_fp16_cache_final_loss_within_half_a_percent_of_fp32(
    caches: dict[str, Path], make_config: Callable[..., Path], tmp_path: Path
) -> None:
    losses = {}
    for dtype in ("fp32", "fp16"):
        out = tmp_path / dtype
        losses[dtype] = _distill("--config", str(make_config(caches[dtype])), "--out", str(out))
    fp32, fp16 = losses["fp32"]["final_loss"], losses["fp16"]["final_loss"]
    assert abs(fp16 - fp32) / fp32 < 0.005, (fp32, fp16)


def test_killed_mid_epoch_then_resumed_gives_the_same_weights(
    caches: dict[str, Path], make_config: Callable[..., Path], tmp_path: Path
) -> None:
    # 5 steps per epoch; ckpt_frequency 2 saves at steps 2, 5, 7, 10. Killed when the 9th
    # batch is asked for: the latest checkpoint is gs7, in the middle of epoch 2.
    config = make_config(caches["fp32"], training={"seed": 3, "ckpt_frequency": 2})
    killed = tmp_path / "killed"
    command = [sys.executable, str(KILL_SCRIPT), "8", "distill", "--quiet"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [*command, "--config", str(config), "--out", str(killed)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == -9, result.stderr[-2000:]
    assert (killed / "checkpoints" / "latest").read_text().strip() == "checkpoint-gs7"
    assert not (killed / "metrics.json").exists()
    # --quiet: no bar and no info lines on stderr, only what is a warning or worse
    assert "%|" not in result.stderr and "INFO" not in result.stderr, result.stderr

    refused = runner.invoke(app, ["distill", "--config", str(config), "--out", str(killed)])
    assert refused.exit_code == 1 and "--resume" in refused.output

    resumed = _distill("--config", str(config), "--out", str(killed), "--resume")
    assert resumed["resumed_from_step"] == 7 and resumed["steps"] == 10
    assert resumed["steps_this_run"] == 3
    _distill("--config", str(config), "--out", str(tmp_path / "straight"))

    final = "checkpoints/checkpoint-gs10/student.safetensors"
    weights = load_file(killed / final)
    reference = load_file(tmp_path / "straight" / final)
    assert weights.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(weights[name], tensor), name


def test_a_bad_config_exits_1_with_one_message_naming_the_field(
    caches: dict[str, Path], make_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = make_config(caches["fp32"])
    args = ["distill", "--config", str(config), "--out", str(tmp_path / "bad")]
    result = runner.invoke(app, [*args, "--set", "distill.temperature=-1", "--set", "batchsize=4"])
    assert result.exit_code == 1
    assert result.output.startswith("error: 2 problems")
    assert "distill.temperature: expected a number > 0, got -1" in result.output
    assert "unknown key 'batchsize' (did you mean 'batch_size'?)" in result.output
    assert not (tmp_path / "bad").exists()


def test_a_layer_not_in_the_cache_fails_before_training_naming_the_stored_layers(
    caches: dict[str, Path], make_config: Callable[..., Path], tmp_path: Path
) -> None:
    match = {**HIDDEN_MATCH, "layer_T": 1}
    config = make_config(caches["fp32"], distill={"intermediate_matches": [match]})
    result = runner.invoke(
        app, ["distill", "--config", str(config), "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 1, result.output
    assert "hidden.1 is not stored" in result.output
    assert "it stores: logits, hidden.0, hidden.2" in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_student_widths_vocab_and_labels_are_checked_together(
    caches: dict[str, Path], make_config: Callable[..., Path], tmp_path: Path
) -> None:
    student = tmp_path / "small-vocab.json"
    student.write_text(
        json.dumps(
            {
                "model_type": "bert",
                "vocab_size": 20,
                "hidden_size": 8,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 16,
                "num_labels": 5,
            }
        )
    )
    match = {**HIDDEN_MATCH, "layer_S": 3, "proj": ["linear", 16, 48]}
    config = make_config(caches["fp32"], distill={"intermediate_matches": [match]})
    result = runner.invoke(
        app,
        [
            "distill",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "r"),
            "--student",
            str(student),
        ]
        + ["--set", "num_labels=5"],
    )
    assert result.exit_code == 1, result.output
    text = result.output
    assert "layer_S [3] out of range; the student gives 2 hidden layers" in text
    assert "proj: dim_T=48 but the teacher's hidden states have width 32" in text
    assert "proj: dim_S=16 but the student's hidden size is 8" in text
    assert "vocab_size 20 does not cover the cache's input ids" in text
    assert "student: 5 labels but the cached teacher logits have 3 classes" in text


def test_hard_labels_only_reads_no_teacher_feature(
    caches: dict[str, Path], make_config: Callable[..., Path], tmp_path: Path
) -> None:
    metrics = _distill(
        "--config", str(make_config(caches["fp32"], kd=False)), "--out", str(tmp_path / "labels")
    )
    assert metrics["kd"] is False and metrics["mode"] == "labels"
    assert metrics["teacher_forwards"] == 0 and metrics["steps"] == 10


def _other_tokenizer(directory: Path, sentences: list[str]) -> Path:
    """A WordPiece tokenizer unlike the teacher's (smaller vocabulary)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(
        sentences, WordPieceTrainer(vocab_size=90, special_tokens=specials)
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def test_a_student_with_another_tokenizer_reads_the_corpus_joined_by_example_id(
    caches: dict[str, Path],
    make_config: Callable[..., Path],
    tmp_path: Path,
    tiny_corpus_jsonl: Path,
    tiny_sentences: list[str],
) -> None:
    tokenizer = _other_tokenizer(tmp_path / "tok", tiny_sentences)
    data = {"path": str(tiny_corpus_jsonl), "label_field": "label"}
    config = make_config(
        caches["fp32"],
        distill={"temperature": 4, "intermediate_matches": []},
        tokenizer=str(tokenizer),
        data=data,
        eval={"data": str(tiny_corpus_jsonl), "label_field": "label", "metric": "macro_f1"},
    )
    metrics = _distill("--config", str(config), "--out", str(tmp_path / "other"))
    assert metrics["mode"] == "cache" and metrics["steps"] == 10  # 40 examples, batch 8, x2
    assert metrics["metric"] == "macro_f1" and metrics["eval_examples"] == 40

    no_data = make_config(caches["fp32"], tokenizer=str(tokenizer))
    result = runner.invoke(app, ["distill", "--config", str(no_data), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "give data:" in result.output

    with_match = make_config(caches["fp32"], tokenizer=str(tokenizer), data=data)
    result = runner.invoke(
        app, ["distill", "--config", str(with_match), "--out", str(tmp_path / "y")]
    )
    assert result.exit_code == 1 and "token-aligned" in result.output


def test_the_runner_trains_each_step_at_lr_factor_of_its_schedule(
    caches: dict[str, Path], make_config: Callable[..., Path], tmp_path: Path
) -> None:
    schedule = {"name": "cosine", "warmup_steps": 3}
    config = make_config(caches["fp32"], schedule=schedule)
    cfg = load_distill_config(str(config), {"out": str(tmp_path / "lr")})
    setup = setup_run(cfg, resume=False)
    assert setup.plan.total_steps == 10 and setup.start_step == 0
    trained = train_student(setup, progress=False)
    expected = [1e-3 * lr_factor(s, warmup=3, total=10, name="cosine") for s in range(10)]
    assert [row["lr"] for row in trained.history] == pytest.approx(expected, rel=1e-12)
    assert expected[0] == 0 and expected[3] == pytest.approx(1e-3)  # ramp, then the peak
    assert trained.throughput.examples == 70 and trained.throughput.micro_batches == 10
