"""Issue 21: every model is asked only for what its run reads, with the best attention kernel.

Three families (BERT, GPT-2, a Llama-style config with grouped KV heads), 2 layers each:
``sdpa`` gives the stored features of ``eager`` within fp32 tolerance, and a cache written with
the new defaults equals one written with ``attn_implementation: eager`` within the fp16
tolerance; attention features still get eager; ``--teacher-dtype`` is recorded and verify
recomputes in it; a teacher split by accelerate (a layer offloaded to disk) writes the same cache.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from cachebrew.cache import open_cache, parse_feature_spec
from cachebrew.cache.tools.compare import compare_caches
from cachebrew.errors import ConfigError
from cachebrew.models import load_model
from cachebrew.models.request import ModelRequest
from cachebrew.teacher.forward import teacher_features
from cachebrew.teacher.precompute import PrecomputeConfig, load_teacher, run_precompute
from cachebrew.teacher.verify import verify_cache

#: sdpa vs eager on fp32 features: different summation orders, a few fp32 ulps of O(1) values
FP32_ATOL = 1e-5
#: caches stored in fp16: one fp16 ulp of values below 8 is 2**-8; allow a bit more than that
FP16_ATOL = 1e-2
FAMILIES = ("bert", "gpt2", "llama")


def _config(family: str, vocab: int) -> Any:
    from transformers import BertConfig, GPT2Config, LlamaConfig

    if family == "bert":
        return BertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64, num_labels=3,
        )  # fmt: skip
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    return LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tiny_tokenizer_dir, tiny_vocab_size, tiny_sentences) -> Path:
    """``root/<family>`` teacher directories and ``root/corpus.jsonl`` (24 sentences)."""
    from transformers import AutoModelForCausalLM, BertForSequenceClassification

    root = tmp_path_factory.mktemp("sizes")
    for family in FAMILIES:
        torch.manual_seed(0)
        config = _config(family, tiny_vocab_size)
        build = BertForSequenceClassification if family == "bert" else AutoModelForCausalLM
        model = build(config) if family == "bert" else build.from_config(config)
        model.save_pretrained(root / family)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tiny_tokenizer_dir / name, root / family / name)
    with open(root / "corpus.jsonl", "w") as f:
        for i, sentence in enumerate(tiny_sentences[:24]):
            f.write(json.dumps({"text": sentence, "id": f"s{i}", "label": i % 3}) + "\n")
    return root


def _precompute(root: Path, family: str, name: str, **options: Any) -> str:
    out = str(root / f"cache-{family}-{name}")
    labels = {"label_field": "label"} if family == "bert" else {}
    cfg = PrecomputeConfig(
        teacher=str(root / family), data=str(root / "corpus.jsonl"), out=out, id_field="id",
        batch_size=5, shard_size=16, **labels, **options,
    )  # fmt: skip
    run_precompute(cfg, progress=False)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_gives_the_stored_features_of_eager(teachers: Path, family: str) -> None:
    spec = parse_feature_spec("logits,hidden:0,1,2", dtype="fp32")
    outputs = {}
    for kernel in ("eager", "sdpa"):
        request = ModelRequest(hidden_states=True, attn_implementation=kernel)
        loaded = load_model(str(teachers / family), role="teacher", request=request)
        assert loaded.model.config._attn_implementation == kernel
        tokenizer = loaded.tokenizer
        items = [
            {"input_ids": ids, "attention_mask": [1] * len(ids)}
            for ids in (tokenizer(s)["input_ids"] for s in ("a short one", "a longer one " * 4))
        ]  # two lengths: the short example is padded
        features = teacher_features(loaded, spec, items, torch.device("cpu"))
        outputs[kernel] = features
    for eager, sdpa in zip(outputs["eager"], outputs["sdpa"], strict=True):
        for name in spec.input_names:
            torch.testing.assert_close(sdpa[name], eager[name], rtol=0, atol=FP32_ATOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_default_cache_equals_the_eager_cache(teachers: Path, family: str) -> None:
    features = "logits,hidden:1,2"
    default = _precompute(teachers, family, "default", features=features)
    eager = _precompute(teachers, family, "eager", features=features, attn_implementation="eager")
    report = compare_caches(default, eager, atol=FP16_ATOL)
    assert report["ok"], report["features"]
    manifest = open_cache(default).manifest
    assert manifest["extra"]["teacher_dtype"] == "fp32"  # auto on CPU


def test_attention_features_get_eager_and_the_rest_the_best_kernel(teachers: Path) -> None:
    def kernel(features: str, **options: Any) -> str:
        cfg = PrecomputeConfig(
            teacher=str(teachers / "gpt2"), data="-", out="-", features=features, **options
        )
        teacher, _, _ = load_teacher(cfg, torch.device("cpu"))
        config = teacher.model.config
        return f"{config._attn_implementation} {config.output_hidden_states:d}{config.output_attentions:d}"  # noqa: E501

    assert kernel("logits") == "sdpa 00"
    assert kernel("logits,hidden:2") == "sdpa 10"
    assert kernel("logits,attention:1") == "eager 01"
    assert kernel("logits", logits="exact") == "sdpa 00"  # the head's input, from a hook
    with pytest.raises(ConfigError, match="sdpa returns no attention maps"):
        kernel("logits,attention:1", attn_implementation="sdpa")
    with pytest.raises(ConfigError, match=r"unknown attention kernel 'flash'; choose one of"):
        kernel("logits", attn_implementation="flash")
    with pytest.raises(ConfigError, match="flash_attention_2 needs the flash_attn package"):
        kernel("logits", attn_implementation="flash_attention_2")


def test_teacher_dtype_is_recorded_and_verify_recomputes_in_it(teachers: Path) -> None:
    out = _precompute(teachers, "gpt2", "bf16", features="logits,hidden:2", teacher_dtype="bf16")
    assert open_cache(out).manifest["extra"]["teacher_dtype"] == "bf16"
    report = verify_cache(out, teacher=str(teachers / "gpt2"), sample=3)
    assert report["teacher_dtype"] == "bf16"
    assert report["ok"], report["values"]
    # bf16 weights: the bf16 tolerance applies even to fp16-stored arrays
    assert set(report["tolerance"].values()) == {1.6e-2}


def test_a_teacher_split_over_cpu_and_disk_writes_the_same_cache(teachers: Path) -> None:
    placement = {
        "transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.drop": "cpu",
        "transformer.h.0": "cpu", "transformer.h.1": "disk", "transformer.ln_f": "cpu",
        "lm_head": "cpu",
    }  # fmt: skip
    features = "logits,hidden:1"
    whole = _precompute(teachers, "gpt2", "whole", features=features, logits="topk:8")
    split = _precompute(
        teachers, "gpt2", "split", features=features, logits="topk:8", device_map=placement
    )
    report = compare_caches(whole, split)
    assert report["identical"], report["features"]


# ------------------------------------------------------------------------------ students


@pytest.fixture(scope="module")
def bert_run(teachers: Path, tiny_vocab_size: int) -> dict[str, Any]:
    """A BERT cache (logits + hidden 2 + attention 1) and a 1-layer student config JSON."""
    cache = _precompute(teachers, "bert", "students", features="logits,hidden:2,attention:1")
    student = teachers / "student.json"
    config = _config("bert", tiny_vocab_size).to_dict()
    config.update(num_hidden_layers=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    student.write_text(json.dumps(config))
    return {"cache": cache, "student": str(student), "out": str(teachers / "run")}


def _match(feature: str, loss: str) -> dict[str, Any]:
    return {"layer_T": 1, "layer_S": 1, "feature": feature, "loss": loss, "weight": 1}


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        ([], "sdpa 00"),
        ([_match("hidden", "hidden_mse")], "sdpa 10"),
        ([_match("attention", "attention_mse"), _match("hidden", "hidden_mse")], "eager 11"),
    ],
)
def test_a_student_is_asked_for_what_its_matches_read(
    bert_run: dict[str, Any], matches: list[dict[str, Any]], expected: str
) -> None:
    from cachebrew.runner.config import DistillRunConfig
    from cachebrew.runner.setup import load_student

    cfg = DistillRunConfig.from_dict({**bert_run, "distill": {"intermediate_matches": matches}})
    reader = open_cache(cfg.cache)
    for evaluate, wanted in ((False, expected), (True, "sdpa 00")):  # eval asks for nothing
        config = load_student(cfg, reader, seed=0, evaluate=evaluate).model.config
        got = f"{config._attn_implementation} {config.output_hidden_states:d}"
        assert f"{got}{config.output_attentions:d}" == wanted


def test_student_attn_implementation_is_checked(bert_run: dict[str, Any]) -> None:
    from cachebrew.runner.config import DistillRunConfig
    from cachebrew.runner.setup import load_student

    with pytest.raises(ConfigError, match="attn_implementation: unknown attention kernel 'fast'"):
        DistillRunConfig.from_dict({**bert_run, "attn_implementation": "fast"})
    matches = [_match("attention", "attention_mse")]
    cfg = DistillRunConfig.from_dict(
        {**bert_run, "attn_implementation": "sdpa", "distill": {"intermediate_matches": matches}}
    )
    with pytest.raises(ConfigError, match="sdpa returns no attention maps"):
        load_student(cfg, open_cache(cfg.cache), seed=0)


def test_eval_and_finetune_ask_for_neither(teachers: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cachebrew.runner.score import load_for_eval
    from cachebrew.teacher import finetune

    config = load_for_eval(teachers / "bert").loaded.model.config
    assert (config._attn_implementation, config.output_hidden_states) == ("sdpa", False)
    assert config.output_attentions is False
    asked: list[ModelRequest] = []

    def spy(*args: Any, request: ModelRequest | None = None, **kwargs: Any) -> Any:
        asked.append(request)
        raise KeyboardInterrupt  # stop before training

    monkeypatch.setattr(finetune, "load_model", spy)
    cfg = finetune.FinetuneConfig(
        model=str(teachers / "bert"), train=str(teachers / "corpus.jsonl"),
        dev=str(teachers / "corpus.jsonl"), out=str(teachers / "finetuned"),
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        finetune.run_finetune(cfg)
    assert asked == [ModelRequest()]  # no hidden states, no attentions, the best kernel


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(bert_run: dict[str, Any]) -> None:
    from cachebrew.runner.config import DistillRunConfig
    from cachebrew.runner.setup import load_student

    results = []
    for checkpointing in (False, True):
        cfg = DistillRunConfig.from_dict(
            {**bert_run, "training": {"gradient_checkpointing": checkpointing},
             "distill": {"intermediate_matches": [_match("hidden", "hidden_mse")]}}
        )  # fmt: skip
        model = load_student(cfg, open_cache(cfg.cache), seed=0).model
        assert model.is_activation_checkpointing is checkpointing
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(5, 100, (4, 12), generator=generator)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids[:, 0] % 3)
        loss = out.loss + out.hidden_states[-1].pow(2).mean()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((loss.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-6)


def test_cli_device_map_auto_with_a_memory_limit_writes_the_same_cache(teachers: Path) -> None:
    """``--device-map auto --max-memory cpu=40KB``: accelerate offloads what does not fit."""
    from typer.testing import CliRunner

    from cachebrew.cli import app

    whole = _precompute(teachers, "gpt2", "cli-whole", features="logits", logits="topk:8")
    out = str(teachers / "cache-gpt2-cli-auto")
    args = [
        "precompute", "--teacher", str(teachers / "gpt2"), "--data",
        str(teachers / "corpus.jsonl"), "--out", out, "--id-field", "id", "--batch-size", "5",
        "--shard-size", "16", "--logits", "topk:8", "--device-map", "auto",
        "--max-memory", "cpu=40KB", "--attn-implementation", "sdpa", "--teacher-dtype", "fp32",
        "--quiet",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert compare_caches(whole, out)["identical"]
    bad = CliRunner().invoke(app, [*args[:-1], "--max-memory", "cpu"])
    assert bad.exit_code == 1 and "expected DEVICE=LIMIT pairs" in bad.output  # one line
