"""The exceptions cachebrew raises. Only ``cli.py`` turns them into exit codes."""

from __future__ import annotations

from collections.abc import Iterable


class CachebrewError(Exception):
    """Base class of every error cachebrew raises on purpose."""


class ConfigError(CachebrewError):
    """One or more problems in a configuration, reported together.

    Args:
        problems: one message per problem; each names the field, the value and the fix.
    """

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{len(self.problems)} problems in the configuration:\n{lines}"
        super().__init__(message)


class CacheError(CachebrewError):
    """A teacher cache cannot be used as asked."""


class CacheUpToDateError(CacheError):
    """The output already holds a complete cache of the same teacher, corpus and features:
    nothing to do (``cachebrew precompute`` reports it and exits 0)."""


class CacheCorruptError(CacheError):
    """Stored bytes do not match their checksum (names shard, array and example ids)."""


class CacheMismatchError(CacheError):
    """The cache does not hold what was asked (a feature, layer, corpus or teacher differs)."""


class CheckpointError(CachebrewError):
    """A training checkpoint cannot be found or read (names the path and what is missing)."""


class DataIntegrityError(CachebrewError):
    """A file's sha256 differs from the pinned one, or a package's content is not as expected."""


class MissingDependencyError(CachebrewError):
    """An optional package a feature needs is not installed (names the extra to install)."""
