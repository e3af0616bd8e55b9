"""Shared fixtures: a tiny WordPiece tokenizer, tiny BERT configs and teachers, a tiny corpus.

Everything is built locally in seconds (no hub download). Session-scoped fixtures are shared
across tests: treat what they return as read-only (copy a directory before changing it).

- ``tiny_sentences``: the 50 built-in sentences (list[str]).
- ``tiny_tokenizer_dir``: directory with ``tokenizer.json`` (WordPiece, ~200 tokens, BERT
  specials, pair template with token type ids) and ``tokenizer_config.json``. Load it with
  ``cachebrew.models.load_tokenizer(dir)``.
- ``tiny_bert_config``: ``tiny_bert_config(**overrides) -> BertConfig`` (hidden 32, 2 layers,
  2 heads, intermediate 64, max positions 64, vocab of the tiny tokenizer).
- ``tiny_teacher_dir``: a saved ``BertForSequenceClassification`` (3 labels, seed 0) with the
  tokenizer files in the same directory.
- ``tiny_corpus_jsonl``: 40 records ``{"text": ..., "label": i % 3}``.
- ``flip_chunk_byte``: ``flip_chunk_byte(cache, shard, array)`` flips the middle byte of the
  first stored chunk of ``array`` in ``shard`` (a corrupted chunk).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TINY_SENTENCES: list[str] = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "this movie was really good and funny",
    "i did not like the ending of the book",
    "the weather is cold and rainy today",
    "we walked to the market in the morning",
    "he plays the guitar every evening",
    "the children laughed at the clown",
    "my phone battery died again",
    "the train was late by ten minutes",
    "they built a small house near the river",
    "the soup tasted terrible and cold",
    "what a wonderful surprise party",
    "the meeting was long and boring",
    "our team won the final match",
    "the garden is full of red flowers",
    "please close the window before you leave",
    "the coffee here is strong and fresh",
    "i lost my keys in the park",
    "the old man told a funny story",
    "birds sing in the trees at dawn",
    "the price of bread went up again",
    "she found a good book at the library",
    "the film had great music and bad acting",
    "it is a quiet town by the sea",
    "the students passed the hard exam",
    "the car would not start this morning",
    "he cooked pasta for the whole family",
    "the new phone is fast and light",
    "rain fell all night on the roof",
    "the museum was closed on monday",
    "they danced until the music stopped",
    "the service at the hotel was awful",
    "a small boat crossed the lake",
    "the teacher wrote on the board",
    "i really enjoyed the concert last night",
    "the road was blocked by snow",
    "my sister likes green tea",
    "the shop opens at nine",
    "the story was sad but beautiful",
    "we waited for the bus in the rain",
    "the dog barked at the mail carrier",
    "this is the best pizza in town",
    "the lights went out during the storm",
    "he forgot his umbrella at home",
    "the kids played football in the street",
    "the cake was sweet and soft",
    "the plane landed safely at noon",
]

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tiny_tokenizer(directory: Path, sentences: list[str], vocab_size: int = 200) -> Path:
    """Train a lowercase BERT-style WordPiece tokenizer and save tokenizer.json + config."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(
        sentences, WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    )
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "BertTokenizer",  # built from tokenizer.json, so token_type_ids too
        "do_lower_case": True,
        "model_max_length": 64,
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory


@pytest.fixture(scope="session")
def tiny_sentences() -> list[str]:
    return list(TINY_SENTENCES)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"), TINY_SENTENCES)


@pytest.fixture(scope="session")
def tiny_vocab_size(tiny_tokenizer_dir: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json")).get_vocab_size()


@pytest.fixture(scope="session")
def tiny_bert_config(tiny_vocab_size: int) -> Callable[..., Any]:
    """``tiny_bert_config(**overrides) -> BertConfig``."""
    from transformers import BertConfig

    def make(**overrides: Any) -> BertConfig:
        values = {
            "vocab_size": tiny_vocab_size,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
            **overrides,
        }
        return BertConfig(**values)

    return make


@pytest.fixture(scope="session")
def tiny_teacher_dir(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_bert_config: Callable[..., Any],
    tiny_tokenizer_dir: Path,
) -> Path:
    import torch
    from transformers import BertForSequenceClassification

    directory = tmp_path_factory.mktemp("tiny_teacher")
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert_config(num_labels=3)).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_tokenizer_dir / name, directory / name)
    return directory


@pytest.fixture(scope="session")
def tiny_corpus_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny_corpus") / "corpus.jsonl"
    lines = [json.dumps({"text": s, "label": i % 3}) for i, s in enumerate(TINY_SENTENCES[:40])]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def flip_chunk_byte() -> Callable[[Path, int, str], None]:
    def flip(cache: Path, shard: int, array: str) -> None:
        chunk = next(
            p
            for p in sorted((cache / "shards" / f"{shard:05d}" / array).rglob("*"))
            if p.is_file() and p.name != "zarr.json"
        )
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))

    return flip


@pytest.fixture(scope="session")
def s3_server() -> Any:
    """A real S3-compatible server (moto in server mode) on 127.0.0.1 and a free port.

    Yields its endpoint URL. Nothing else is contacted; the server stops with the session.
    """
    import socket

    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the loopback server; returns ``s3://<bucket>``.

    The endpoint and the (fake) credentials reach s3fs the way a user's would: through the AWS
    environment variables (subprocesses inherit them), never through cachebrew's config.
    """
    import uuid

    import fsspec

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    fsspec.filesystem("s3").clear_instance_cache()
    bucket = f"cachebrew-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}"
