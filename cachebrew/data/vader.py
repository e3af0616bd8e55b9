"""VADER human-rated sentences (Hutto & Gilbert, ICWSM 2014, MIT) -> 3-class sentiment jsonl."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

from cachebrew.data.common import stratified_split, write_jsonl
from cachebrew.errors import DataIntegrityError
from cachebrew.files import write_json_atomic

SENTIMENT_LABELS = ("negative", "neutral", "positive")


NEGATIVE_MAX = -0.5


POSITIVE_MIN = 0.5


# file prefix inside hutto_ICWSM_2014/ -> domain name written to the jsonl
VADER_DOMAINS = {
    "tweets": "tweet",
    "movieReviewSnippets": "movie",
    "amazonReviewSnippets": "amazon",
    "nytEditorialSnippets": "nyt",
}


VADER_INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"


def sentiment_label(rating: float) -> int:
    """3-class label of a mean rating: 0 if <= -0.5, 2 if >= 0.5, else 1 (neutral)."""
    if rating <= NEGATIVE_MAX:
        return 0
    return 2 if rating >= POSITIVE_MIN else 1


def parse_vader_ground_truth(text: str, domain: str) -> list[dict[str, Any]]:
    """Rows of a ``*_GroundTruth.txt`` (``id<TAB>mean<TAB>text``) as jsonl records."""
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataIntegrityError(
                f"{domain} ground truth line {line_number}: expected 3 tab-separated fields, "
                f"got {len(parts)}"
            )
        rating = float(parts[1])
        rows.append(
            {
                "id": f"{domain}-{parts[0]}",
                "text": parts[2].strip(),
                "label": sentiment_label(rating),
                "domain": domain,
                "rating": rating,
            }
        )
    return rows


def parse_vader_ratings(text: str) -> dict[str, list[int]]:
    """``id -> raw rater scores`` from a ``*_anonDataRatings.txt`` (``id mean sd [scores]``)."""
    ratings = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 4:
            ratings[parts[0]] = [int(v) for v in json.loads(parts[3])]
    return ratings


def read_vader(archive: Path) -> list[dict[str, Any]]:
    """All 23,703 rated sentences of the sdist, with their raw rater scores (``ratings``)."""
    with tarfile.open(archive) as outer:
        member = outer.extractfile(VADER_INNER_ARCHIVE)
        if member is None:
            raise DataIntegrityError(f"{archive} has no {VADER_INNER_ARCHIVE}")
        inner_bytes = member.read()
    rows: list[dict[str, Any]] = []
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for prefix, domain in VADER_DOMAINS.items():
            truth = _read_member(inner, f"hutto_ICWSM_2014/{prefix}_GroundTruth.txt")
            raw = _read_member(inner, f"hutto_ICWSM_2014/{prefix}_anonDataRatings.txt")
            ratings = parse_vader_ratings(raw)
            for row in parse_vader_ground_truth(truth, domain):
                row["ratings"] = ratings.get(row["id"].split("-", 1)[1], [])
                rows.append(row)
    return rows


def _read_member(archive: tarfile.TarFile, name: str) -> str:
    member = archive.extractfile(name)
    if member is None:
        raise DataIntegrityError(f"the VADER data archive has no {name}")
    return member.read().decode("utf-8-sig")  # one file starts with a byte-order mark


def build_sentiment(archive: Path, out: Path, seed: int) -> dict[str, Any]:
    """Write ``{train,dev,test}.jsonl`` and ``label_names.json``; return counts for the marker."""
    rows = read_vader(archive)
    # 147 texts occur more than once (case aside): keep each text's copies in one split
    same_text: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        same_text.setdefault(row["text"].lower(), []).append(row)
    groups = stratified_split(
        list(same_text.values()), lambda g: (g[0]["domain"], g[0]["label"]), seed
    )
    splits = {name: [row for group in chosen for row in group] for name, chosen in groups.items()}
    for name, split_rows in splits.items():
        write_jsonl(out / f"{name}.jsonl", split_rows)
    write_json_atomic(out / "label_names.json", list(SENTIMENT_LABELS), indent=1)
    by_domain = Counter((r["domain"], SENTIMENT_LABELS[r["label"]]) for r in rows)
    return {
        "num_examples": len(rows),
        "splits": {name: len(split_rows) for name, split_rows in splits.items()},
        "labels": dict(Counter(SENTIMENT_LABELS[r["label"]] for r in rows)),
        "domain_labels": {f"{d}/{label}": n for (d, label), n in sorted(by_domain.items())},
        "split": "random 80/10/10 of distinct texts within each (domain, label) group",
    }
