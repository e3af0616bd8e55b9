"""Corpus readers, example ids, label mapping, token-label alignment, bucketing and padding."""

from __future__ import annotations

import csv
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cachebrew.corpus import (
    Record,
    length_bucketed_batches,
    pad_batch,
    read_corpus,
    tokenize_records,
)
from cachebrew.errors import ConfigError
from cachebrew.models import load_tokenizer

ROWS = [
    {"id": "007", "text": "the cat sat on the mat", "label": "pos"},
    {"id": "008", "text": 'she said "NA", then left', "label": "neg"},
    {"id": "009", "text": "NA", "label": "neu"},
    {"id": "010", "text": "1234", "label": "pos"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_delimited(path, rows, delimiter):
    if delimiter == "\t":  # TSV as in GLUE: no quoting at all
        lines = ["\t".join(rows[0])] + ["\t".join(row.values()) for row in rows]
        path.write_text("\n".join(lines) + "\n")
        return
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_hf_dataset(directory, rows, num_files=1):
    """The layout ``datasets.Dataset.save_to_disk`` writes: IPC *stream* files + state.json."""
    directory.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    per_file = -(-len(rows) // num_files)
    names = [f"data-{i:05d}-of-{num_files:05d}.arrow" for i in range(num_files)]
    for i, name in enumerate(names):
        part = table.slice(i * per_file, per_file)
        with (
            pa.OSFile(str(directory / name), "wb") as sink,
            pa.ipc.new_stream(sink, part.schema) as writer,
        ):
            writer.write_table(part)
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": "x", "_split": None}
    (directory / "state.json").write_text(json.dumps(state))
    (directory / "dataset_info.json").write_text(json.dumps({"features": {}}))


@pytest.fixture
def corpus_files(tmp_path):
    """The same rows in every supported format, all with the stem ``corpus``."""
    paths = {}
    for name in ("jsonl", "csv", "tsv", "parquet"):
        paths[name] = tmp_path / name / f"corpus.{name}"
        paths[name].parent.mkdir()
    write_jsonl(paths["jsonl"], ROWS)
    write_delimited(paths["csv"], ROWS, ",")
    write_delimited(paths["tsv"], ROWS, "\t")
    pq.write_table(pa.Table.from_pylist(ROWS), paths["parquet"])
    paths["hf_disk"] = tmp_path / "hf" / "corpus"
    write_hf_dataset(paths["hf_disk"], ROWS, num_files=2)
    return paths


@pytest.mark.parametrize("id_field", [None, "id"])
def test_every_format_gives_the_same_records(corpus_files, id_field):
    corpora = {
        name: read_corpus(path, label_field="label", id_field=id_field)
        for name, path in corpus_files.items()
    }
    expected = corpora["jsonl"]
    assert [r.text for r in expected] == [row["text"] for row in ROWS]
    assert [r.label for r in expected] == [2, 0, 1, 2]
    assert expected.label_names == ["neg", "neu", "pos"]
    for name, corpus in corpora.items():
        assert corpus.records == expected.records, name
        assert corpus.label_names == expected.label_names, name
        assert sorted(corpus.columns) == ["id", "label", "text"], name
    if id_field:
        assert [r.example_id for r in expected] == ["007", "008", "009", "010"]


def test_saved_dataset_dict_needs_a_split(tmp_path):
    root = tmp_path / "ds"
    write_hf_dataset(root / "train", ROWS[:3])
    write_hf_dataset(root / "test", ROWS[3:])
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    with pytest.raises(ConfigError, match=r"pass split= one of \['train', 'test'\]"):
        read_corpus(root)
    test = read_corpus(root, split="test")
    assert [r.text for r in test] == ["1234"]
    assert test.records[0].example_id.startswith("ds.test:0:")


def test_real_datasets_save_to_disk_if_available(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    corpus = read_corpus(tmp_path / "saved", label_field="label")
    assert [r.text for r in corpus] == [row["text"] for row in ROWS]


def test_derived_ids_are_stable_and_distinct(tiny_corpus_jsonl, tmp_path):
    first, second = read_corpus(tiny_corpus_jsonl), read_corpus(tiny_corpus_jsonl)
    ids = [r.example_id for r in first]
    assert ids == [r.example_id for r in second]
    assert len(set(ids)) == len(ids) == 40
    assert ids[0].startswith("corpus:0:") and ids[39].startswith("corpus:39:")
    assert first.fingerprint == second.fingerprint
    # the same text on two lines still gets two ids; an edited line gets a new id
    rows = [{"text": "same"}, {"text": "same"}, {"text": "other"}]
    write_jsonl(tmp_path / "dup.jsonl", rows)
    dup = read_corpus(tmp_path / "dup.jsonl")
    assert dup.records[0].example_id != dup.records[1].example_id
    write_jsonl(tmp_path / "dup.jsonl", [rows[0], rows[1], {"text": "edited"}])
    edited = read_corpus(tmp_path / "dup.jsonl")
    assert edited.records[2].example_id != dup.records[2].example_id
    assert edited.records[0].example_id == dup.records[0].example_id
    assert edited.fingerprint != dup.fingerprint


def test_fingerprint_depends_on_field_choices(tiny_corpus_jsonl):
    plain = read_corpus(tiny_corpus_jsonl)
    labelled = read_corpus(tiny_corpus_jsonl, label_field="label")
    assert plain.fingerprint != labelled.fingerprint
    assert labelled.records[4].label == 1 and labelled.label_names is None


def test_unknown_fields_list_the_columns(tiny_corpus_jsonl):
    with pytest.raises(
        ConfigError,
        match=r"unknown text_field 'sentence', label_field 'y'; columns found: \['text', 'label'\]",
    ):
        read_corpus(tiny_corpus_jsonl, text_field="sentence", label_field="y")


def test_duplicate_ids(tmp_path):
    write_jsonl(
        tmp_path / "c.jsonl",
        [{"id": 1, "text": "a"}, {"id": 2, "text": "b"}, {"id": 1, "text": "c"}],
    )
    with pytest.raises(ConfigError, match="duplicate example id '1'"):
        read_corpus(tmp_path / "c.jsonl", id_field="id")


@pytest.mark.parametrize(
    ("filename", "message"),
    [
        (
            "data.xlsx",
            r"unsupported corpus format '.xlsx'.*\['.jsonl', '.csv', '.tsv', '.parquet'\]",
        ),
        ("missing.jsonl", "does not exist"),
    ],
)
def test_bad_paths(tmp_path, filename, message):
    if filename != "missing.jsonl":
        (tmp_path / filename).write_text("x")
    with pytest.raises(ConfigError, match=message):
        read_corpus(tmp_path / filename)


def test_bad_rows_are_reported_together(tmp_path):
    rows = [
        {"text": None, "label": "a"},
        {"text": "ok", "label": 3},
        {"text": ["w"], "label": ["x", "y"]},
    ]
    write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ConfigError) as caught:
        read_corpus(tmp_path / "bad.jsonl", label_field="label")
    problems = caught.value.problems
    assert any("row 0: text must be a string" in p for p in problems)
    assert any("labels mix strings and numbers" in p for p in problems)
    assert any("row 2: 1 words but 2 labels" in p for p in problems)


def test_word_labels_are_mapped_and_aligned(tmp_path, tiny_tokenizer_dir):
    rows = [{"tokens": ["The", "cats", "sat", "zzqx"], "tags": ["B-ANI", "I-ANI", "O", "O"]}]
    write_jsonl(tmp_path / "ner.jsonl", rows)
    corpus = read_corpus(tmp_path / "ner.jsonl", text_field="tokens", label_field="tags")
    assert corpus.label_names == ["B-ANI", "I-ANI", "O"]
    assert corpus.records[0].label == [0, 1, 2, 2]
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    [item] = tokenize_records(corpus.records, tokenizer, max_length=32, is_split_into_words=True)
    word_ids = tokenizer(rows[0]["tokens"], is_split_into_words=True).word_ids()
    assert word_ids.count(1) > 1  # "cats" is split, so alignment matters
    expected = []
    for position, word in enumerate(word_ids):
        first = word is not None and word != word_ids[position - 1]
        expected.append(corpus.records[0].label[word] if first else -100)
    assert item["labels"] == expected
    assert item["labels"][0] == item["labels"][-1] == -100
    [every] = tokenize_records(
        corpus.records, tokenizer, 32, is_split_into_words=True, label_all_tokens=True
    )
    assert every["labels"] == [-100 if w is None else corpus.records[0].label[w] for w in word_ids]


def test_tokenize_pairs_and_truncation(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    records = [Record("a", "the cat sat on the mat", "a dog ran", 1), Record("b", "hi", "there", 0)]
    items = tokenize_records(records, tokenizer, max_length=8)
    assert len(items[0]["input_ids"]) == 8
    assert items[0]["labels"] == 1
    assert set(items[0]["token_type_ids"]) == {0, 1}
    assert tokenizer.unk_token_id not in items[0]["input_ids"]
    with pytest.raises(ConfigError, match="word labels need pre-tokenized text"):
        tokenize_records([Record("c", "the cat", None, [0, 1])], tokenizer, 8)


def test_length_bucketing_covers_everything_and_cuts_padding():
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(203)]
    for seed in (None, 1):
        batches = length_bucketed_batches(lengths, batch_size=16, seed=seed)
        assert sorted(i for batch in batches for i in batch) == list(range(203))
        assert batches == length_bucketed_batches(lengths, batch_size=16, seed=seed)

    def padding(batches):
        return sum(
            max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches
        )

    shuffled = list(range(203))
    rng.shuffle(shuffled)
    random_batches = [shuffled[i : i + 16] for i in range(0, 203, 16)]
    assert padding(length_bucketed_batches(lengths, 16, seed=1)) < padding(random_batches) / 5
    assert length_bucketed_batches(lengths, 16, seed=1) != length_bucketed_batches(
        lengths, 16, seed=2
    )
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        length_bucketed_batches(lengths, 0)


def test_pad_batch(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    records = [Record("a", ["the", "cat", "sat"], None, [0, 1, 2]), Record("b", ["hi"], None, [1])]
    items = tokenize_records(records, tokenizer, 16, is_split_into_words=True)
    batch = pad_batch(items, tokenizer.pad_token_id)
    length = len(items[0]["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, length)
    assert batch["input_ids"][1, -1] == tokenizer.pad_token_id
    assert batch["attention_mask"][1].sum() == len(items[1]["input_ids"])
    assert batch["labels"][1, -1] == -100
    scalar = pad_batch(
        [{"input_ids": [1, 2], "labels": 3}, {"input_ids": [4], "labels": 0}], pad_id=0
    )
    assert torch.equal(scalar["labels"], torch.tensor([3, 0]))
    assert torch.equal(scalar["input_ids"], torch.tensor([[1, 2], [4, 0]]))
    with pytest.raises(ConfigError, match="no pad value for 'offsets'"):
        pad_batch([{"input_ids": [1], "offsets": [0]}], pad_id=0)
