"""The corpus keys of a config: which columns hold the text, the label and the id, which split.

Mixed into every config that reads a corpus (precompute, distill ``data:`` and ``eval:``,
finetune); the names are :func:`~cachebrew.corpus.read_corpus`'s keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from cachebrew.errors import ConfigError

CORPUS_FIELD_NAMES = ("text_field", "text_pair_field", "label_field", "id_field", "split")


class CorpusKwargs(TypedDict):
    """:func:`~cachebrew.corpus.read_corpus`'s keyword arguments, as :class:`CorpusFields` gives them."""

    text_field: str
    text_pair_field: str | None
    label_field: str | None
    id_field: str | None
    split: str | None


@dataclass(frozen=True, kw_only=True)
class CorpusFields:
    """The corpus keys of every config that reads a corpus (precompute, distill ``data:`` and
    ``eval:``, finetune): which columns hold the text, the second text, the label and the id,
    and which split of a saved dataset to read. They are :func:`cachebrew.corpus.read_corpus`'s
    keyword arguments, under the same names in YAML and on the command line.

    Keyword-only, so a config mixing them in may declare required fields of its own; a config
    may redeclare one to change its default (``label_field: str = "label"``).
    """

    text_field: str | None = "text"
    text_pair_field: str | None = None
    label_field: str | None = None
    id_field: str | None = None
    split: str | None = None

    def check_corpus_fields(self, problems: list[str]) -> None:
        """Append a problem for each field that is not a non-empty string (``text_field``
        must be given; the others may be None)."""
        for name in CORPUS_FIELD_NAMES:
            value = getattr(self, name)
            if value is None and name != "text_field":
                continue
            if not isinstance(value, str) or not value:
                problems.append(f"{name}: expected a non-empty string, got {value!r}")

    def corpus_fields(self) -> CorpusKwargs:
        """The five fields by name, as :func:`~cachebrew.corpus.read_corpus` takes them.

        Raises:
            ConfigError: ``text_field`` is None (only a config whose ``__post_init__`` fills
                a default, as finetune's per-task one, may hold None, and never after it).
        """
        if self.text_field is None:
            raise ConfigError("text_field: no text column given")
        return CorpusKwargs(
            text_field=self.text_field,
            text_pair_field=self.text_pair_field,
            label_field=self.label_field,
            id_field=self.id_field,
            split=self.split,
        )
