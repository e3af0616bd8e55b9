"""What ``cachebrew finetune`` trains on: labelled corpora read and checked, label names, batches.

:func:`read_labelled` reads a corpus (a seeded subset if asked) and checks its labels fit the
task; :func:`label_names_of` settles the label names (given, ``label_names.json`` beside the
train file, the corpus' own string labels, or numbered); :class:`BucketBatchSampler` draws
length-bucketed batches in a new seeded order each epoch.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cachebrew.corpus import Corpus, length_bucketed_batches, read_corpus
from cachebrew.errors import ConfigError
from cachebrew.models import LoadedModel
from cachebrew.teacher.finetune_config import FinetuneConfig


class BucketBatchSampler:
    """Length-bucketed batches in a new seeded order each epoch (``set_epoch``).

    Args:
        lengths: token count of each example.
        batch_size: examples per batch (the last batch of a bucket order may be short).
        seed: the order of epoch ``e`` is ``length_bucketed_batches(..., seed + e)``.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        return iter(length_bucketed_batches(self.lengths, self.batch_size, self.seed + self.epoch))

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def check_vocabulary(cfg: FinetuneConfig, loaded: LoadedModel) -> None:
    """Refuse a tokenizer with more ids than the model's embedding (they would index out of range)."""
    size = getattr(getattr(loaded.model, "config", None), "vocab_size", None)
    if size is not None and len(loaded.tokenizer) > size:
        raise ConfigError(
            f"the tokenizer has {len(loaded.tokenizer)} ids but model {cfg.model} has "
            f"vocab_size {size}; set vocab_size >= {len(loaded.tokenizer)} in its config"
        )


def read_labelled(cfg: FinetuneConfig, path: str, limit: int | None) -> Corpus:
    """The corpus at ``path`` (a seeded subset of ``limit`` records), labels checked."""
    corpus = read_corpus(path, **cfg.corpus_fields())
    words = cfg.task == "token_classification"
    wanted = "a list of int tags per word" if words else "an int class id"
    bad = (
        []
        if cfg.task == "causal_lm"
        else [
            r.example_id
            for r in corpus
            if not (isinstance(r.label, list) if words else isinstance(r.label, int))
        ]
    )
    if bad:
        raise ConfigError(
            f"{path}: {len(bad)} records whose {cfg.label_field!r} is not {wanted} "
            f"(for task {cfg.task}), e.g. {bad[0]!r}"
        )
    if limit is not None and limit < len(corpus):
        chosen = sorted(random.Random(cfg.seed).sample(range(len(corpus)), limit))
        corpus.records = [corpus.records[i] for i in chosen]
    return corpus


def label_names_of(cfg: FinetuneConfig, train: Corpus, dev: Corpus) -> list[str]:
    """Label names from ``cfg.label_names``, ``label_names.json`` beside the train file, the
    corpus' string labels, or ``num_labels`` / the largest label (names "0", "1", ...)."""
    if train.label_names != dev.label_names:
        raise ConfigError(
            f"train labels {train.label_names} and dev labels {dev.label_names} differ; write "
            "integer labels and a label_names.json"
        )
    path = Path(cfg.label_names) if cfg.label_names else Path(cfg.train).parent / "label_names.json"
    if cfg.label_names or path.is_file():
        try:
            names = [str(n) for n in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError) as error:
            raise ConfigError(
                f"label_names {path}: expected a JSON list of names ({error})"
            ) from error
    elif train.label_names:
        names = list(train.label_names)
    else:
        largest = max(max(flat_labels(c), default=0) for c in (train, dev))
        names = [str(i) for i in range(cfg.num_labels or largest + 1)]
    if cfg.num_labels is not None and cfg.num_labels != len(names):
        raise ConfigError(f"num_labels={cfg.num_labels} but {len(names)} label names: {names}")
    out_of_range = sorted(
        {v for c in (train, dev) for v in flat_labels(c) if not 0 <= v < len(names)}
    )
    if out_of_range:
        raise ConfigError(
            f"labels {out_of_range[:10]} out of range for {len(names)} labels {names}"
        )
    return names


def flat_labels(corpus: Corpus) -> list[Any]:
    return [v for r in corpus for v in (r.label if isinstance(r.label, list) else [r.label])]
