"""`cachebrew finetune` on the tiny teacher: sequence and token classification, early stopping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cachebrew.cli import app
from cachebrew.corpus import read_corpus, tokenize_records
from cachebrew.data import UNIVERSAL_TAGS, parse_brown_sentence, universal_tag
from cachebrew.errors import ConfigError
from cachebrew.models import load_model
from cachebrew.teacher.finetune import (
    METRICS_FILE,
    FinetuneConfig,
    evaluate,
    run_finetune,
)

BROWN_SAMPLE = Path(__file__).parent.parent / "data" / "brown"
runner = CliRunner()


@pytest.fixture(scope="module")
def brown_tagging_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/dev jsonl of real Brown sentences (tokens + universal tag ids), label_names.json."""
    directory = tmp_path_factory.mktemp("brown_tagging")
    index = {tag: i for i, tag in enumerate(UNIVERSAL_TAGS)}
    for split, doc in (("train", "ca01"), ("dev", "cp01")):
        lines = [line for line in (BROWN_SAMPLE / doc).read_text().splitlines() if line.strip()]
        with open(directory / f"{split}.jsonl", "w") as handle:
            for line in lines[:24]:
                words, raw = parse_brown_sentence(line)
                tags = [index[universal_tag(t)] for t in raw]
                handle.write(json.dumps({"tokens": words, "tags": tags}) + "\n")
    (directory / "label_names.json").write_text(json.dumps(list(UNIVERSAL_TAGS)))
    return directory


def test_finetune_sequence_classification_cli(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "teacher"
    args = ["finetune", "--model", str(tiny_teacher_dir), "--train", str(tiny_corpus_jsonl)]
    args += ["--dev", str(tiny_corpus_jsonl), "--out", str(out), "--epochs", "2"]
    args += ["--batch-size", "8", "--lr", "1e-3", "--set", "warmup_ratio=0.2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "sequence_classification model saved to" in result.output

    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["finished"] and not metrics["stopped_early"]
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert [e["step"] for e in metrics["epochs"]] == [5, 10]  # 40 examples / 8
    assert set(metrics["epochs"][0]["dev"]) == {"accuracy", "macro_f1"}
    assert metrics["best_epoch"] in (1, 2) and metrics["train_seconds"] > 0
    assert metrics["config"]["warmup_ratio"] == 0.2 and metrics["num_train"] == 40
    assert not (out / ".finetune-checkpoints").exists()

    loaded = load_model(out)  # the head comes from architectures: usable by precompute
    assert loaded.kind == "sequence_classification" and loaded.tokenizer is not None
    assert (out / "tokenizer_config.json").is_file()
    assert loaded.model.config.id2label == {0: "0", 1: "1", 2: "2"}
    items = tokenize_records(
        read_corpus(tiny_corpus_jsonl, label_field="label"), loaded.tokenizer, 128
    )
    # the saved weights are the best epoch's: re-evaluating them gives its dev metrics
    assert evaluate(loaded.model, items, loaded.kind, 16, 0) == pytest.approx(metrics["best"])


def test_finetune_token_classification(
    tiny_teacher_dir: Path, brown_tagging_dir: Path, tmp_path: Path
) -> None:
    cfg = FinetuneConfig(
        model=str(tiny_teacher_dir),
        train=str(brown_tagging_dir / "train.jsonl"),
        dev=str(brown_tagging_dir / "dev.jsonl"),
        out=str(tmp_path / "tagger"),
        task="token_classification",
        epochs=2,
        batch_size=8,
        lr=1e-3,
        max_length=64,
    )
    summary = run_finetune(cfg)
    assert summary.label_names == list(UNIVERSAL_TAGS)  # from label_names.json beside train
    assert len(summary.epochs) == 2 and set(summary.best) == {"token_f1", "accuracy", "macro_f1"}
    assert 0 < summary.best["token_f1"] <= 1

    loaded = load_model(tmp_path / "tagger")
    assert loaded.kind == "token_classification"
    assert loaded.model.config.num_labels == 12
    assert loaded.model.config.id2label[6] == "NOUN"
    saved = json.loads((tmp_path / "tagger" / METRICS_FILE).read_text())
    assert saved["best"] == summary.best and saved["task"] == "token_classification"


def test_early_stopping_keeps_the_best_epoch(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    cfg = FinetuneConfig(
        model=str(tiny_teacher_dir),
        train=str(tiny_corpus_jsonl),
        dev=str(tiny_corpus_jsonl),
        out=str(tmp_path / "out"),
        epochs=5,
        lr=0.0,  # dev accuracy cannot improve after the first epoch
        patience=1,
        batch_size=16,
    )
    summary = run_finetune(cfg)
    assert summary.stopped_early
    assert [e["epoch"] for e in summary.epochs] == [1, 2]
    assert summary.best_epoch == 1
    assert summary.epochs[0]["dev"] == summary.epochs[1]["dev"]


def test_out_with_a_model_needs_overwrite(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text("{}")
    cfg = dict(
        model=str(tiny_teacher_dir), train=str(tiny_corpus_jsonl), dev=str(tiny_corpus_jsonl)
    )
    with pytest.raises(ConfigError, match=r"already holds \['config.json'\]; pass --overwrite"):
        run_finetune(FinetuneConfig(**cfg, out=str(tmp_path)))
    with pytest.raises(ConfigError, match="is the model directory"):
        run_finetune(FinetuneConfig(**cfg, out=str(tiny_teacher_dir), overwrite=True))


def test_labels_are_checked(
    tiny_teacher_dir: Path, brown_tagging_dir: Path, tmp_path: Path
) -> None:
    paths = dict(
        model=str(tiny_teacher_dir),
        train=str(brown_tagging_dir / "train.jsonl"),
        dev=str(brown_tagging_dir / "dev.jsonl"),
        out=str(tmp_path / "out"),
    )
    with pytest.raises(ConfigError, match="records whose 'tags' is not an int class id"):
        run_finetune(FinetuneConfig(**paths, label_field="tags", text_field="tokens"))
    names = tmp_path / "names.json"
    names.write_text('["a", "b"]')
    with pytest.raises(ConfigError, match=r"labels \[2, 3, .*\] out of range for 2 labels"):
        run_finetune(FinetuneConfig(**paths, task="token_classification", label_names=str(names)))


def test_config_reports_every_problem() -> None:
    with pytest.raises(ConfigError) as error:
        FinetuneConfig(
            model="m", train="t", dev="d", out="o", task="ner", epochs=0, lr=-1.0, warmup_ratio=2.0
        )
    text = str(error.value)
    for fragment in (
        "unknown task 'ner'",
        "epochs: expected an integer >= 1",
        "lr: expected a number >= 0",
        "warmup_ratio",
    ):
        assert fragment in text
    with pytest.raises(ConfigError, match="unknown metric 'token_accuracy'"):  # one table
        FinetuneConfig(
            model="m", train="t", dev="d", out="o", task="token_classification",
            metric="token_accuracy",
        )  # fmt: skip
    cfg = FinetuneConfig(model="m", train="t", dev="d", out="o", task="token_classification")
    assert (cfg.text_field, cfg.label_field, cfg.metric) == ("tokens", "tags", "token_f1")


@pytest.fixture(scope="module")
def lm_text(tmp_path_factory: pytest.TempPathFactory, tiny_sentences: list[str]) -> Path:
    """train.jsonl (every tiny sentence) and dev.jsonl (every fourth) of plain text, no label."""
    directory = tmp_path_factory.mktemp("lm_text")
    for name, rows in (("train", tiny_sentences), ("dev", tiny_sentences[::4])):
        with open(directory / f"{name}.jsonl", "w") as handle:
            for i, text in enumerate(rows):
                handle.write(json.dumps({"id": f"{name}{i}", "text": text}) + "\n")
    return directory


def _gpt2_config(directory: Path, vocab_size: int) -> Path:
    from transformers import GPT2Config

    path = directory / "gpt2.json"
    config = GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    path.write_text(json.dumps(config.to_dict() | {"architectures": ["GPT2LMHeadModel"]}))
    return path


def test_finetune_causal_lm_from_a_config_and_a_tokenizer(
    tiny_tokenizer_dir: Path, tiny_vocab_size: int, lm_text: Path, tmp_path: Path
) -> None:
    import torch

    from cachebrew.runner.score import score_model

    out = tmp_path / "lm"
    args = ["finetune", "--model", str(_gpt2_config(tmp_path, tiny_vocab_size))]
    args += ["--tokenizer", str(tiny_tokenizer_dir / "tokenizer.json"), "--task", "causal_lm"]
    args += ["--train", str(lm_text / "train.jsonl"), "--dev", str(lm_text / "dev.jsonl")]
    args += ["--out", str(out), "--epochs", "3", "--batch-size", "8", "--lr", "3e-3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)

    metrics = json.loads((out / METRICS_FILE).read_text())
    ppl = [e["dev"]["perplexity"] for e in metrics["epochs"]]
    assert metrics["metric"] == "perplexity" and len(ppl) == 3
    assert ppl[-1] < ppl[0] < tiny_vocab_size  # it learns; lower is better
    assert metrics["best"]["perplexity"] == min(ppl)
    assert metrics["config"]["label_field"] is None and metrics["label_names"] == []

    loaded = load_model(out)  # a causal LM directory with the tokenizer beside it
    assert loaded.kind == "causal_lm" and loaded.tokenizer is not None
    report = score_model(out, str(lm_text / "dev.jsonl"), batch_size=4)
    assert report["task"] == "causal_lm" and report["tokens"] > 0
    # the saved weights are the best epoch's; eval scores them exactly as finetune's dev pass
    assert report["metrics"]["perplexity"] == pytest.approx(min(ppl), rel=1e-5)
    # and equals exp of the model's own next-token loss, on one unpadded text
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "the cat sat on the mat"}) + "\n")
    inputs = loaded.tokenizer("the cat sat on the mat", return_tensors="pt")
    with torch.no_grad():
        loss = loaded.model(**inputs, labels=inputs["input_ids"]).loss
    one_ppl = score_model(out, str(one))["metrics"]["perplexity"]
    assert one_ppl == pytest.approx(float(loss.exp()), rel=1e-5)


def test_finetune_causal_lm_refuses_a_tokenizer_larger_than_the_model(
    tiny_tokenizer_dir: Path, tiny_vocab_size: int, lm_text: Path, tmp_path: Path
) -> None:
    cfg = FinetuneConfig(
        model=str(_gpt2_config(tmp_path, tiny_vocab_size - 1)),
        tokenizer=str(tiny_tokenizer_dir),
        train=str(lm_text / "train.jsonl"),
        dev=str(lm_text / "dev.jsonl"),
        out=str(tmp_path / "lm"),
        task="causal_lm",
    )
    with pytest.raises(ConfigError, match=f"vocab_size >= {tiny_vocab_size}"):
        run_finetune(cfg)
