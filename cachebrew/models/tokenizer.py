"""Load a fast tokenizer from ``tokenizer.json``, checked to reproduce that file's ids; a model's
max length, which travels with it as ``model_max_length`` in its ``tokenizer_config.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from cachebrew.errors import ConfigError

logger = logging.getLogger(__name__)

# conventional special-token spellings, used when a tokenizer.json comes without tokenizer_config.json
_SPECIAL_TOKEN_SPELLINGS: dict[str, tuple[str, ...]] = {
    "unk_token": ("[UNK]", "<unk>"),
    "pad_token": ("[PAD]", "<pad>"),
    "cls_token": ("[CLS]", "<s>"),
    "sep_token": ("[SEP]", "</s>"),
    "mask_token": ("[MASK]", "<mask>"),
}


def load_tokenizer(path_or_dir: str | Path) -> Any:
    """Load a fast tokenizer from ``tokenizer.json`` (a directory holding it, or the file).

    With ``tokenizer_config.json`` beside it, ``AutoTokenizer`` reads the special tokens;
    otherwise they are taken from the conventional spellings found in the vocabulary.

    Raises:
        ConfigError: no ``tokenizer.json`` (``vocab.txt`` alone is not supported: transformers 5
            maps every token to [UNK] when a BERT tokenizer is built from it), or the loaded
            tokenizer does not reproduce ``tokenizer.json``'s ids.
    """
    path = Path(path_or_dir)
    json_path = path / "tokenizer.json" if path.is_dir() else path
    if not json_path.is_file():
        hint = " (vocab.txt found)" if (json_path.parent / "vocab.txt").is_file() else ""
        raise ConfigError(
            f"no tokenizer.json at {json_path}{hint}; vocab.txt alone is not supported because "
            "transformers 5 maps every token to [UNK] when built from it. Save a tokenizer.json "
            "(tokenizers.Tokenizer.save) next to it"
        )
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    raw = Tokenizer.from_file(str(json_path))
    if (json_path.parent / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(json_path.parent)
    else:
        vocab = raw.get_vocab()
        specials = {
            name: next((s for s in spellings if s in vocab), None)
            for name, spellings in _SPECIAL_TOKEN_SPELLINGS.items()
        }
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(json_path), **{k: v for k, v in specials.items() if v}
        )
    _check_tokenizer_matches(tokenizer, raw, json_path)
    return tokenizer


def _check_tokenizer_matches(tokenizer: Any, raw: Any, json_path: Path) -> None:
    words = [w for w in raw.get_vocab() if w.isalpha() and not w.startswith("##")][:8]
    probe = " ".join(sorted(words))
    if tokenizer(probe)["input_ids"] != raw.encode(probe).ids:
        raise ConfigError(
            f"the tokenizer loaded from {json_path.parent} does not reproduce {json_path}'s ids "
            "(tokenizer_config.json may name a class that ignores tokenizer.json)"
        )


def tokenizer_next_to(directory: Path) -> Any:
    """The tokenizer saved in ``directory``, or None (logged) when it has no tokenizer.json."""
    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory)
    logger.warning("%s has no tokenizer.json; LoadedModel.tokenizer is None", directory)
    return None


# model_max_length at or above this is transformers' "unset" sentinel (int(1e30)), not a length
_UNSET_MAX_LENGTH = 1_000_000


def recorded_max_length(tokenizer: Any) -> int | None:
    """The max length a model travels with (``model_max_length`` of its tokenizer), or None.

    ``finetune`` records the length it trained with, ``final/`` the length of the student's
    cache (:func:`record_max_length`); ``eval`` and ``precompute`` use it unless given one.
    """
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and int(limit) < _UNSET_MAX_LENGTH else None


def record_max_length(directory: Path, tokenizer: Any, max_length: int) -> None:
    """Record ``max_length`` with the model in ``directory`` (HF's place: ``model_max_length`` of
    ``tokenizer_config.json``); without that file, ``tokenizer`` is saved there with it."""
    tokenizer.model_max_length = max_length
    config_path = directory / "tokenizer_config.json"
    if not config_path.is_file():
        tokenizer.save_pretrained(directory)
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["model_max_length"] = max_length
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
