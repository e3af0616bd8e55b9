"""Bad input is one line on stderr naming the file, the row or field and the fix; exit 1."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from reliability_helpers import Outcome, precompute_args, snapshot

CORPORA: dict[str, tuple[str, bytes, list[str], str]] = {
    # name: (file name, bytes, extra flags, expected message)
    "header-only csv": ("c.csv", b"text,label\n", [], "no examples"),
    "empty jsonl": ("c.jsonl", b"", [], "no examples"),
    "blank-lines jsonl": ("c.jsonl", b"\n\n  \n", [], "no examples"),
    "jsonl row without its label": (
        "c.jsonl",
        b'{"text": "a b", "label": 1}\n{"text": "the cat"}\n',
        ["--label-field", "label"],
        "row 1: no value in label_field 'label'",
    ),
    "jsonl null label": (
        "c.jsonl",
        b'{"text": "a", "label": null}\n',
        ["--label-field", "label"],
        "row 0: no value in label_field",
    ),
    "csv empty label": (
        "c.csv",
        b"text,label\nthe cat,pos\nthe dog,\n",
        ["--label-field", "label"],
        "row 1: no value in label_field",
    ),
    "non-utf8 jsonl": (
        "c.jsonl",
        b'{"text": "ok"}\n{"text": "caf\xe9"}\n',
        [],
        ":2: not valid UTF-8",
    ),
    "non-utf8 csv": ("c.csv", b"text\nfine\nna\xefve\xff\n", [], ":3: not valid UTF-8"),
    "non-utf8 tsv": ("c.tsv", b"text\n\xff\xfe\n", [], ":2: not valid UTF-8"),
    "invalid json line": ("c.jsonl", b'{"text": "a"}\n{"text": \n', [], ":2: invalid JSON"),
    "json line not an object": ("c.jsonl", b"[1, 2]\n", [], ":1: expected a JSON object"),
    "unknown text field": ("c.jsonl", b'{"body": "a"}\n', [], "unknown text_field 'text'"),
    "unsupported format": ("c.xml", b"<a/>", [], "unsupported corpus format"),
    "text not a string": ("c.jsonl", b'{"text": 5}\n', [], "row 0: text must be a string"),
    "mixed label types": (
        "c.jsonl",
        b'{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n',
        ["--label-field", "label"],
        "labels mix strings and numbers",
    ),
}


@pytest.mark.parametrize("case", sorted(CORPORA))
def test_a_bad_corpus_is_refused_before_anything_is_written(
    cli: Callable[..., Outcome], tiny_teacher_dir: Path, tmp_path: Path, case: str
) -> None:
    name, data, extra, message = CORPORA[case]
    corpus = tmp_path / name
    corpus.write_bytes(data)
    out = tmp_path / "cache"
    result = cli(*precompute_args(tiny_teacher_dir, corpus, out, *extra))
    assert result.code == 1
    assert message in result.error_line and str(corpus) in result.error_line
    assert "Traceback" not in result.err and len(result.error_line.splitlines()) == 1
    assert not out.exists()  # nothing started, nothing half-published
    assert corpus.read_bytes() == data


def test_a_missing_corpus_is_one_line(
    cli: Callable[..., Outcome], tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    result = cli(*precompute_args(tiny_teacher_dir, tmp_path / "nope.jsonl", tmp_path / "c"))
    assert result.code == 1 and "does not exist" in result.error_line


# ----------------------------------------------------------------- teacher limits


def test_max_length_beyond_the_teachers_positions_is_refused_before_the_run(
    cli: Callable[..., Outcome], tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    result = cli(*precompute_args(tiny_teacher_dir, tiny_corpus_jsonl, out, "--max-length", "100"))
    assert result.code == 1
    assert "max_length: 100 exceeds the 64 positions" in result.error_line
    assert "--max-length 64" in result.error_line and not out.exists()


def test_the_default_max_length_is_clipped_to_the_teachers_positions(
    cli: Callable[..., Outcome], tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "long.jsonl"
    corpus.write_text(json.dumps({"text": " ".join(["the cat sat on the mat"] * 30)}) + "\n")
    out = tmp_path / "cache"
    result = cli(*precompute_args(tiny_teacher_dir, corpus, out))
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["max_length"] == 64


@pytest.fixture(scope="module")
def other_teachers(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_bert_config: Callable[..., object],
    tiny_teacher_dir: Path,
) -> dict[str, Path]:
    import torch
    from transformers import BertForSequenceClassification

    root = tmp_path_factory.mktemp("other_teachers")
    dirs = {}
    for name, overrides, seed in (("other-weights", {}, 1), ("small-vocab", {"vocab_size": 20}, 0)):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(tiny_bert_config(num_labels=3, **overrides))
        model.save_pretrained(root / name)
        for file in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tiny_teacher_dir / file, root / name / file)
        dirs[name] = root / name
    return dirs


def _online(cache: Path, student: Path, out: Path, teacher: Path, *extra: str) -> list[str]:
    return [
        "distill", "--cache", str(cache), "--student", str(student), "--out", str(out),
        "--teacher", str(teacher), "--quiet", "--set", "num_steps=1", "--set", "batch_size=8",
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("allow", [False, True])
def test_an_online_teacher_with_other_weights_is_an_error_unless_allowed(
    cli: Callable[..., Outcome],
    built_cache: Path,
    student_json: Path,
    other_teachers: dict[str, Path],
    tmp_path: Path,
    allow: bool,
) -> None:
    out = tmp_path / "run"
    extra = ["--allow-teacher-mismatch"] if allow else []
    result = cli(*_online(built_cache, student_json, out, other_teachers["other-weights"], *extra))
    if allow:
        assert result.code == 0, result.err
        assert (out / "metrics.json").exists()
        return
    assert result.code == 1 and "is not the teacher the cache" in result.error_line
    assert "weights_sha256" in result.error_line and "--allow-teacher-mismatch" in result.error_line
    assert not (out / "checkpoints").exists()


def test_an_online_teacher_with_a_smaller_vocabulary_is_always_refused(
    cli: Callable[..., Outcome],
    built_cache: Path,
    student_json: Path,
    other_teachers: dict[str, Path],
    tmp_path: Path,
) -> None:
    teacher = other_teachers["small-vocab"]
    result = cli(
        *_online(built_cache, student_json, tmp_path / "r", teacher, "--allow-teacher-mismatch")
    )
    assert result.code == 1 and "has vocab_size 20 but the cache" in result.error_line


def test_the_caches_own_teacher_online_trains(
    cli: Callable[..., Outcome],
    built_cache: Path,
    student_json: Path,
    tiny_teacher_dir: Path,
    tmp_path: Path,
) -> None:
    result = cli(*_online(built_cache, student_json, tmp_path / "run", tiny_teacher_dir))
    assert result.code == 0, result.err


# ----------------------------------------------------------------- crafted pickles


class _Crafted:
    """A pickle that would call a function when loaded (a harmless one)."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getcwd, ())


@pytest.fixture(scope="module")
def trained_run(
    tmp_path_factory: pytest.TempPathFactory, built_cache: Path, student_json: Path
) -> Path:
    from cachebrew.runner.config import load_distill_config
    from cachebrew.runner.run import run_distill

    out = tmp_path_factory.mktemp("trained") / "run"
    flags = {"cache": str(built_cache), "student": str(student_json), "out": str(out)}
    cfg = load_distill_config(None, flags, ["num_steps=2", "batch_size=8"])
    run_distill(cfg, progress=False)
    return out


@pytest.mark.parametrize("victim", ["training_state.pt", "student.safetensors"])
def test_a_crafted_pickle_in_a_checkpoint_is_a_checkpoint_error(
    cli: Callable[..., Outcome],
    trained_run: Path,
    built_cache: Path,
    student_json: Path,
    tmp_path: Path,
    victim: str,
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    latest = run / "checkpoints" / (run / "checkpoints/latest").read_text().strip()
    (latest / victim).write_bytes(pickle.dumps(_Crafted()))
    args = ["distill", "--cache", built_cache, "--student", student_json, "--out", run]
    result = cli(*args, "--resume", "--quiet", "--set", "num_steps=4", "--set", "batch_size=8")
    # Found unreadable before anything is loaded (no older checkpoint to fall back to).
    assert result.code == 1 and "is unreadable" in result.error_line
    assert victim in result.error_line and "start over without --resume" in result.error_line
    assert "Traceback" not in result.err and "Unpickling" not in result.err.replace(
        result.error_line, ""
    )


@pytest.mark.parametrize("layout", ["pickle as model.safetensors", "pytorch_model.bin only"])
def test_a_crafted_init_from_teacher_file_is_a_config_error(
    cli: Callable[..., Outcome],
    built_cache: Path,
    student_json: Path,
    tiny_teacher_dir: Path,
    tmp_path: Path,
    layout: str,
) -> None:
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    shutil.copy(tiny_teacher_dir / "config.json", teacher)
    name = "model.safetensors" if layout.startswith("pickle") else "pytorch_model.bin"
    (teacher / name).write_bytes(pickle.dumps(_Crafted()))
    args = ["distill", "--cache", built_cache, "--student", student_json, "--out", tmp_path / "r"]
    init = f"init_from_teacher={{path: {teacher}, layers: [1]}}"
    result = cli(*args, "--quiet", "--set", "num_steps=1", "--set", init)
    assert result.code == 1
    expected = "cannot be read as safetensors" if name.endswith("safetensors") else "pickle not"
    assert expected in result.error_line and "Traceback" not in result.err


def test_a_teacher_whose_weights_are_a_pickle_is_refused_at_precompute(
    cli: Callable[..., Outcome], tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher_dir, teacher)
    (teacher / "model.safetensors").write_bytes(pickle.dumps(_Crafted()))
    out = tmp_path / "cache"
    result = cli(*precompute_args(teacher, tiny_corpus_jsonl, out))
    assert result.code == 1 and "cannot be read as safetensors" in result.error_line
    assert not out.exists()


# ----------------------------------------------------------------- finetune, codecs, flags


def test_finetune_on_an_empty_corpus_says_so(
    cli: Callable[..., Outcome], tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    out = tmp_path / "ft"
    args = ["finetune", "--model", tiny_teacher_dir, "--train", empty, "--dev", tiny_corpus_jsonl]
    result = cli(*args, "--out", out)
    assert result.code == 1 and f"{empty}: no examples" in result.error_line
    assert "num_labels" not in result.error_line


def test_codec_none_does_not_pad_chunks_to_the_full_chunk_shape(
    cli: Callable[..., Outcome], tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    args = precompute_args(tiny_teacher_dir, tiny_corpus_jsonl, out, "--codec", "none")
    assert cli(*args, "--dtype", "fp32").code == 0
    logits = [p for p in (out / "shards/00000/logits").rglob("*") if p.name != "zarr.json"]
    chunk_bytes = sum(p.stat().st_size for p in logits if p.is_file())
    assert chunk_bytes == 16 * 3 * 4  # 16 examples x 3 classes x fp32, no padding
    assert cli("verify", out).code == 0


def test_debug_shows_the_traceback_instead_of_one_line(
    cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    from cachebrew.errors import CacheError

    plain = cli("inspect", tmp_path / "missing")
    assert (
        plain.code == 1 and "does not exist" in plain.error_line and "--debug" in plain.error_line
    )
    with pytest.raises(CacheError, match="does not exist"):
        cli("--debug", "inspect", tmp_path / "missing")


def test_verify_of_a_directory_that_is_not_a_cache(
    cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    result = cli("verify", tmp_path)
    assert result.code == 1 and "not a complete cache" in result.error_line
    assert snapshot(tmp_path) == before
