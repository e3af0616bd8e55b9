"""``RUN_DIR/final/``: the trained student as a Hugging Face directory.

What ``AutoModelFor<Task>.from_pretrained(RUN_DIR / "final")`` loads and ``cachebrew eval``
scores: ``config.json`` (``id2label``/``label2id`` when the label names are known: the
corpus's ``label_names.json`` recorded in the cache manifest, else the cache teacher's own
``id2label``), the weights as ``model.safetensors``, and the student's tokenizer
(``tokenizer.json`` + ``tokenizer_config.json``, its ``model_max_length`` set to the cache's
truncation length so scoring tokenizes as the run's evaluation did). The directory holds the
weights the run evaluated (the last step's), and is written under a temporary name and
published with :func:`cachebrew.files.publish_dir` (fsynced, renamed into place; an older
``final/`` is swapped out atomically), so a ``final/`` that exists is complete, even after a
power cut, and a rerun never leaves a moment without one.

A student that is not a ``transformers`` model (a ``module:function`` factory) gets its state
dict as ``model.safetensors`` and no ``config.json`` (logged).
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from safetensors.torch import save_model

from cachebrew.cache.read.reader import CacheReader
from cachebrew.files import publish_dir
from cachebrew.models import LoadedModel, record_max_length
from cachebrew.runner.tokens import max_length

logger = logging.getLogger(__name__)

FINAL_DIR = "final"


def label_names(reader: CacheReader, num_labels: int | None) -> list[str] | None:
    """The class names of the cache's labels, or None when unknown or of another count."""
    names = (reader.manifest.get("extra") or {}).get("label_names")
    if not names:
        names = _teacher_label_names(reader.manifest["teacher"].get("source"))
    if not names or (num_labels is not None and len(names) != num_labels):
        return None
    return [str(name) for name in names]


def _teacher_label_names(source: str | None) -> list[str] | None:
    config = Path(source) / "config.json" if source else None
    if config is None or not config.is_file():
        return None
    try:
        id2label = json.loads(config.read_text(encoding="utf-8")).get("id2label") or {}
        names = [id2label[str(i)] for i in range(len(id2label))]
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    generic = all(name == f"LABEL_{i}" for i, name in enumerate(names))
    return None if generic else names


def save_final(run_dir: Path, student: LoadedModel, tokenizer: Any, reader: CacheReader) -> Path:
    """Write ``run_dir/final/`` (module docstring) and return it; an older one is replaced."""
    final = run_dir / FINAL_DIR
    tmp = run_dir / f".tmp-{FINAL_DIR}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        _save_model(student.model, tmp, reader)
        if tokenizer is not None:  # with the length its cache was built at (eval uses it)
            record_max_length(tmp, tokenizer, max_length(reader))
        else:
            logger.warning("%s: no tokenizer to save (the student read the cache's ids)", final)
        publish_dir(tmp, final, replace=True)  # an older final/ is swapped out in one step
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("saved the final student to %s", final)
    return final


def _save_model(model: Any, out: Path, reader: CacheReader) -> None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "save_pretrained"):
        logger.warning("%s: not a transformers model; saving its weights only", type(model))
        save_model(model, str(out / "model.safetensors"))
        return
    names = label_names(reader, getattr(config, "num_labels", None))
    flags = (config.output_hidden_states, config.output_attentions)
    # The run needs every layer's outputs for its matches; a user loading the model does not.
    config.output_hidden_states = config.output_attentions = False
    if names is not None:
        config.id2label = dict(enumerate(names))
        config.label2id = {name: i for i, name in enumerate(names)}
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its "Writing model shards" bar would tear ours and logs
    try:
        model.save_pretrained(out)
    finally:
        config.output_hidden_states, config.output_attentions = flags
        if bar_was_on:
            hf_logging.enable_progress_bar()
