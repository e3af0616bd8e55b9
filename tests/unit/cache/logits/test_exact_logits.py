"""``--logits exact``: precompute -> read round trip on a tiny GPT-2, the head file's checks,
parts publishing, and the refusal of a teacher whose head does not give its logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cachebrew.cache import open_cache
from cachebrew.cache.feed.dataset import CacheDataset
from cachebrew.cache.format.lm_head import HEAD_FILE
from cachebrew.cache.logits.exact import ExactLogits, LMHead
from cachebrew.cache.tools.describe import describe_cache, describe_text
from cachebrew.errors import CacheCorruptError, CacheError, ConfigError
from cachebrew.models import load_model
from cachebrew.teacher.exact_head import check_head
from cachebrew.teacher.parallel import Partition
from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute
from cachebrew.world import World


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tiny_tokenizer_dir, tiny_vocab_size, tiny_sentences) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("exact")
    teacher = root / "teacher"
    teacher.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (teacher / name).write_bytes((tiny_tokenizer_dir / name).read_bytes())
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tiny_vocab_size, n_positions=64, n_head=2, n_embd=32, n_layer=2)
    GPT2LMHeadModel(config).save_pretrained(teacher)
    with open(root / "corpus.jsonl", "w") as f:
        for i, sentence in enumerate(tiny_sentences[:24]):
            f.write(json.dumps({"text": sentence, "id": f"s{i}"}) + "\n")
    return root


def _precompute(root: Path, out: str, dtype: str = "fp16", **kwargs) -> None:
    cfg = PrecomputeConfig(
        teacher=str(root / "teacher"), data=str(root / "corpus.jsonl"), out=out,
        id_field="id", logits="exact", dtype=dtype, shard_size=8, batch_size=5,
    )  # fmt: skip
    run_precompute(cfg, progress=False, **kwargs)


@pytest.fixture(scope="module")
def exact_cache(lm_dir: Path) -> Path:
    _precompute(lm_dir, str(lm_dir / "cache"))
    return lm_dir / "cache"


def _teacher_rows(root: Path, batch: dict) -> torch.Tensor:
    """The teacher's own logits at every real token of a collated batch: (rows, V)."""
    teacher = load_model(str(root / "teacher"), role="teacher")
    inputs = dict(batch["teacher"])
    # the tiny WordPiece tokenizer gives token_type_ids (zeros), which precompute passes on and
    # GPT-2 embeds: give them here too
    inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    with torch.no_grad():
        logits = teacher.model(**inputs).logits  # (B, L, V)
    return logits[inputs["attention_mask"].bool()]


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_round_trip_gives_the_teachers_logits(lm_dir: Path, exact_cache: Path, dtype: str) -> None:
    cache = exact_cache if dtype == "fp16" else lm_dir / "cache32"
    if dtype == "fp32":
        _precompute(lm_dir, str(cache), dtype="fp32")
    batch = next(iter(CacheDataset(str(cache), batch_size=6, shuffle=False)))
    teacher = batch["teacher_cache"]["logits"]
    assert isinstance(teacher, ExactLogits)
    reference = _teacher_rows(lm_dir, batch)
    assert teacher.shape == tuple(reference.shape)
    error = float((teacher.dense() - reference).abs().max() / reference.abs().max())
    # fp16 hidden states: the verify tolerance of fp16 (2e-3); fp32: float rounding only
    assert error < (2e-3 if dtype == "fp16" else 1e-5), error


def test_manifest_and_inspect_describe_the_head(exact_cache: Path) -> None:
    reader = open_cache(str(exact_cache))
    entry = reader.manifest["lm_head"]
    head = reader.lm_head()
    assert entry["path"] == HEAD_FILE and entry["bias"] is False
    assert entry["shape"] == [head.num_classes, head.hidden_size] == [head.num_classes, 32]
    assert entry["bytes"] == (exact_cache / HEAD_FILE).stat().st_size
    info = describe_cache(reader)
    logits = next(f for f in info["features"] if f["name"] == "logits")
    assert logits["logits_mode"] == "exact" and logits["width"] == {"logits.hidden": 32}
    assert "lm head" in describe_text(info) and "once per cache" in describe_text(info)
    assert reader.verify_all()["ok"]


def test_a_changed_head_is_refused_by_reading_and_verify(lm_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _precompute(lm_dir, str(cache))
    data = bytearray((cache / HEAD_FILE).read_bytes())
    data[-3] ^= 0xFF  # a weight byte: the file still parses, its sha256 differs
    (cache / HEAD_FILE).write_bytes(bytes(data))
    report = open_cache(str(cache)).verify_all()
    assert not report["ok"] and any(HEAD_FILE in p for p in report["problems"])
    with pytest.raises(CacheCorruptError, match="sha256.*differs from the manifest"):
        CacheDataset(str(cache), batch_size=2)
    (cache / HEAD_FILE).unlink()
    with pytest.raises(CacheError, match=f"{HEAD_FILE} \\(the teacher's LM head\\) is missing"):
        open_cache(str(cache))


def test_parts_publish_with_the_head_part_zero_wrote(lm_dir: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "parts")
    _precompute(
        lm_dir, out, partition=Partition(World(1, 2, launcher="part"))
    )  # not the head's writer
    assert not (tmp_path / "parts" / HEAD_FILE).exists()
    _precompute(
        lm_dir, out, partition=Partition(World(0, 2, launcher="part"))
    )  # writes it, then publishes
    reader = open_cache(out)
    assert reader.manifest["lm_head"]["sha256"] == open_cache(
        str(lm_dir / "cache")
    ).manifest["lm_head"]["sha256"]  # fmt: skip
    assert reader.verify_all()["ok"]


def test_head_on_an_object_store(lm_dir: Path) -> None:
    url = "memory://exact-head-test/cache"
    _precompute(lm_dir, url)
    batch = next(iter(CacheDataset(url, batch_size=4, shuffle=False)))
    assert isinstance(batch["teacher_cache"]["logits"], ExactLogits)
    assert open_cache(url).verify_all()["ok"]


def test_a_head_that_does_not_give_the_logits_is_refused() -> None:
    g = torch.Generator().manual_seed(0)
    head = LMHead(torch.randn(50, 8, generator=g))
    hidden = torch.randn(2, 3, 8, generator=g) * 3
    logits = hidden @ head.weight.T  # (2, 3, 50)
    assert check_head(head, hidden, logits, "gpt") < 1e-4
    capped = 10 * torch.tanh(logits / 10)  # Gemma-2's final soft-capping
    with pytest.raises(ConfigError, match="topk:K or --logits dense"):
        check_head(head, hidden, capped, "gemma")
    with pytest.raises(ConfigError, match="does not reproduce"):
        check_head(head, hidden, logits * 0.9, "scaled")


def test_verify_with_the_teacher_compares_the_hidden_rows(lm_dir: Path, exact_cache: Path) -> None:
    from cachebrew.teacher.verify import verify_cache

    report = verify_cache(str(exact_cache), teacher=str(lm_dir / "teacher"), sample=3)
    assert report["ok"], report
    assert report["values"]["logits.hidden"]["max_rel_error"] < 2e-3


def test_precompute_refuses_a_teacher_that_caps_its_logits(
    lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import GPT2LMHeadModel

    forward = GPT2LMHeadModel.forward

    def soft_capped(self, *args, **kwargs):  # Gemma-2 style, after the head
        out = forward(self, *args, **kwargs)
        out.logits = 0.1 * torch.tanh(out.logits / 0.1)
        return out

    monkeypatch.setattr(GPT2LMHeadModel, "forward", soft_capped)
    with pytest.raises(ConfigError, match="does not reproduce its logits.*--logits topk:K"):
        _precompute(lm_dir, str(tmp_path / "capped"))
    assert not (tmp_path / "capped" / "manifest.json").exists()
