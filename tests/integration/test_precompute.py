"""`cachebrew precompute`, `inspect` and `verify` end to end through the CLI on a tiny teacher."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import Result
from typer.testing import CliRunner

from cachebrew.cache import open_cache
from cachebrew.cli import app
from cachebrew.errors import CacheMismatchError, ConfigError
from cachebrew.models import load_model
from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute
from cachebrew.teacher.verify import verify_cache

runner = CliRunner()


def _invoke(teacher: Path, data: Path, out: Path, *extra: str) -> Result:
    args = ["precompute", "--teacher", str(teacher), "--data", str(data), "--out", str(out)]
    return runner.invoke(app, [*args, "--quiet", *extra])


def _precompute(teacher: Path, data: Path, out: Path, *extra: str) -> str:
    result = _invoke(teacher, data, out, "--label-field", "label", *extra)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_precompute_inspect_verify(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    spec = "logits,hidden:0,2,hidden_cls:2,attention:1,attention_sum:1"
    text = _precompute(
        tiny_teacher_dir,
        tiny_corpus_jsonl,
        out,
        "--features",
        spec,
        "--dtype",
        "fp32",
        "--shard-size",
        "16",
        "--batch-size",
        "5",
    )
    assert "40 examples" in text

    info = json.loads(runner.invoke(app, ["inspect", str(out), "--json"]).stdout)
    assert info["num_examples"] == 40 and info["num_shards"] == 3
    assert {f["name"] for f in info["features"]} == {
        "logits",
        "hidden",
        "hidden_cls",
        "attention",
        "attention_sum",
    }
    assert info["bytes_on_disk"] > 0 and info["teacher"]["class"] == "BertForSequenceClassification"

    report = runner.invoke(
        app, ["verify", str(out), "--teacher", str(tiny_teacher_dir), "--sample", "4", "--json"]
    )
    assert report.exit_code == 0, report.output
    values = json.loads(report.stdout)["values"]
    assert set(values) >= {"logits", "hidden.0", "hidden.2", "attention.1", "attention_sum.1"}
    for name, stats in values.items():  # fp32 cache, same teacher: equal up to batching noise
        assert stats["max_abs_error"] < 1e-4, (name, stats)


def test_cached_values_equal_a_direct_teacher_pass(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    _precompute(
        tiny_teacher_dir, tiny_corpus_jsonl, out, "--features", "logits,hidden:1", "--dtype", "fp32"
    )
    reader = open_cache(out)
    teacher = load_model(tiny_teacher_dir)
    first = json.loads(tiny_corpus_jsonl.read_text().splitlines()[0])
    example = next(reader.iter_examples())
    assert example["label"] == first["label"]
    encoded = teacher.tokenizer(first["text"], return_tensors="pt")
    assert example["input_ids"].tolist() == encoded["input_ids"][0].tolist()
    with torch.no_grad():
        outputs = teacher.model(**encoded)
    np.testing.assert_allclose(
        example["features"]["logits"][0], outputs.logits[0].numpy(), atol=1e-5
    )
    np.testing.assert_allclose(
        example["features"]["hidden.1"], outputs.hidden_states[1][0].numpy(), atol=1e-5
    )


def test_features_derived_from_a_distill_config(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    distill = tmp_path / "distill.yaml"
    distill.write_text(
        yaml.safe_dump(
            {
                "temperature": 8,
                "intermediate_matches": [
                    {
                        "layer_T": 2,
                        "layer_S": 1,
                        "feature": "hidden",
                        "loss": "hidden_mse",
                        "weight": 1,
                    },
                    {
                        "layer_T": [0, 2],
                        "layer_S": [0, 1],
                        "feature": "hidden",
                        "loss": "nst",
                        "weight": 1,
                    },
                    {
                        "layer_T": 1,
                        "layer_S": 1,
                        "feature": "attention",
                        "loss": "attention_mse_sum",
                        "weight": 1,
                    },
                ],
            }
        )
    )
    out = tmp_path / "cache"
    _precompute(tiny_teacher_dir, tiny_corpus_jsonl, out, "--distill-config", str(distill))
    info = json.loads(runner.invoke(app, ["inspect", str(out), "--json"]).stdout)
    by_name = {f["name"]: f for f in info["features"]}
    assert by_name["hidden"]["layers"] == [0, 2]
    assert by_name["attention_sum"]["layers"] == [1]
    assert by_name["logits"]["reduction"] == "logprobs"
    assert all(f["dtype"] == "fp16" for f in info["features"])


def test_rerun_resumes_refuses_a_different_spec_and_needs_overwrite(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    cfg = PrecomputeConfig(
        teacher=str(tiny_teacher_dir),
        data=str(tiny_corpus_jsonl),
        out=str(out),
        label_field="label",
        shard_size=16,
    )
    first = run_precompute(cfg, progress=False)
    assert first.examples_computed == 40
    # Kill-like state: drop the manifest and one shard; the rerun recomputes only that shard.
    (out / "manifest.json").unlink()
    import shutil

    shutil.rmtree(out / "shards" / "00001")
    again = run_precompute(cfg, progress=False)
    assert again.shards_skipped == 2 and again.examples_computed == 16
    assert open_cache(out).num_examples == 40

    result = _invoke(
        tiny_teacher_dir, tiny_corpus_jsonl, out, "--label-field", "label", "--shard-size", "16"
    )
    assert result.exit_code == 0 and "is up to date" in result.stdout  # identical: nothing to do
    result = _invoke(
        tiny_teacher_dir, tiny_corpus_jsonl, out, "--label-field", "label", "--shard-size", "8"
    )
    assert result.exit_code == 1 and "--overwrite" in result.stderr

    (out / "manifest.json").unlink()
    different = PrecomputeConfig(
        teacher=str(tiny_teacher_dir),
        data=str(tiny_corpus_jsonl),
        out=str(out),
        label_field="label",
        shard_size=16,
        features="logits,hidden:1",
    )
    with pytest.raises(CacheMismatchError, match="different configuration"):
        run_precompute(different, progress=False)


def test_bad_inputs_give_one_clear_error(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        PrecomputeConfig.from_dict(
            {
                "teacher": "t",
                "data": "d",
                "out": "o",
                "dtype": "fp8",
                "batch_size": 0,
                "batchsize": 3,
            }
        )
    text = str(info.value)
    assert "fp8" in text and "batch_size" in text and "did you mean 'batch_size'" in text

    cfg = PrecomputeConfig(
        teacher=str(tiny_teacher_dir),
        data=str(tiny_corpus_jsonl),
        out=str(tmp_path / "c"),
        features="hidden:9",
    )
    with pytest.raises(ConfigError, match=r"layers \[9\] do not exist; the teacher gives 3 hidden"):
        run_precompute(cfg, progress=False)
    assert not (tmp_path / "c" / "manifest.json").exists()

    result = _invoke(
        tiny_teacher_dir, tiny_corpus_jsonl, tmp_path / "d", "--text-field", "sentence"
    )
    assert result.exit_code == 1 and "sentence" in result.stderr


def test_fp32_cache_is_bit_identical_to_the_teachers_adapted_outputs(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    _precompute(
        tiny_teacher_dir,
        tiny_corpus_jsonl,
        out,
        "--features",
        "logits,hidden:0,2,attention:1",
        "--dtype",
        "fp32",
        "--batch-size",
        "1",
    )
    reader, teacher = open_cache(out), load_model(tiny_teacher_dir)
    checked = 0
    for example in reader.iter_examples():
        encoded = {"input_ids": torch.tensor([example["input_ids"].tolist()])}
        encoded["attention_mask"] = torch.ones_like(encoded["input_ids"])
        encoded["token_type_ids"] = torch.zeros_like(encoded["input_ids"])
        with torch.inference_mode():
            adapted = teacher.adaptor(encoded, teacher.model(**encoded))
        n = example["length"]
        features = example["features"]
        assert np.array_equal(features["logits"][0], adapted["logits"][0].numpy())
        assert np.array_equal(features["hidden.2"], adapted["hidden"][2][0].numpy())
        attention = features["attention.1"].reshape(-1, n, n)
        assert np.array_equal(attention, adapted["attention"][1][0].numpy())
        checked += 1
        if checked == 5:
            break
    assert checked == 5


def test_fp16_cache_is_within_the_measured_error(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    """DESIGN §4 measured fp16: hidden relative error ~2e-4, logits KL ~4e-7."""
    from cachebrew.teacher.verify import verify_cache

    out = tmp_path / "cache"
    _precompute(tiny_teacher_dir, tiny_corpus_jsonl, out, "--features", "logits,hidden:1,2")
    values = verify_cache(str(out), teacher=str(tiny_teacher_dir), sample=16)["values"]
    assert values["hidden.1"]["max_rel_error"] < 1e-3
    assert values["hidden.2"]["max_rel_error"] < 1e-3
    assert values["logits"]["kl"] < 1e-5


def _cache_content(path: Path) -> dict[str, dict[str, np.ndarray]]:
    return {e["example_id"]: e["features"] for e in open_cache(path).iter_examples()}


def _start_until_writing(command: list[str], out: Path) -> subprocess.Popen[bytes]:
    """Start a precompute and return once it has created the cache directory (teacher loaded)."""
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    while not out.exists() and process.poll() is None:
        time.sleep(0.01)
    return process


def test_sigkill_at_random_points_resumes_to_the_same_content(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    """Five runs killed with SIGKILL at random moments while writing: a cache with a manifest is
    always whole, and resuming a partial one gives exactly the content of an uninterrupted run."""
    records = [json.loads(line) for line in tiny_corpus_jsonl.read_text().splitlines()] * 4
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({**r, "id": i}) + "\n" for i, r in enumerate(records)))
    settings = dict(
        teacher=str(tiny_teacher_dir),
        data=str(corpus),
        label_field="label",
        id_field="id",
        features="logits,hidden:2",
        shard_size=4,
        batch_size=2,
    )
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    command = [sys.executable, "-m", "cachebrew", "precompute", "--quiet", *flags]
    reference = tmp_path / "reference"
    process = _start_until_writing([*command, "--out", str(reference)], reference)
    start = time.perf_counter()
    assert process.wait() == 0
    writing = time.perf_counter() - start
    expected = _cache_content(reference)
    rng = random.Random(7)
    partial = 0
    for trial in range(10):  # until 5 kills have landed before the manifest
        if partial == 5:
            break
        out = tmp_path / f"killed{trial}"
        process = _start_until_writing([*command, "--out", str(out)], out)
        time.sleep(rng.uniform(0.05, 0.9) * writing)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if not (out / "manifest.json").exists():  # killed before the end: resume it
            partial += 1
            run_precompute(PrecomputeConfig(**settings, out=str(out)), progress=False)
        content = _cache_content(out)
        assert content.keys() == expected.keys()
        for example_id, features in expected.items():
            for name, array in features.items():
                assert np.array_equal(content[example_id][name], array), (trial, example_id, name)
    assert partial == 5, "the kills should land while the cache is being written"


def test_a_flipped_byte_and_a_truncated_index_are_detected(
    tiny_teacher_dir: Path,
    tiny_corpus_jsonl: Path,
    tmp_path: Path,
    flip_chunk_byte: Callable[[Path, int, str], None],
) -> None:
    out = tmp_path / "cache"
    _precompute(
        tiny_teacher_dir,
        tiny_corpus_jsonl,
        out,
        "--features",
        "logits,hidden:2",
        "--shard-size",
        "16",
    )
    flip_chunk_byte(out, 1, "hidden.2")
    result = runner.invoke(app, ["verify", str(out)])
    assert result.exit_code == 1
    assert "shard 1" in result.stdout and "hidden.2" in result.stdout

    index = out / "shards" / "00002" / "index.arrow"
    index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    result = runner.invoke(app, ["verify", str(out)])
    assert result.exit_code == 1 and "shard 2" in result.stdout and "index.arrow" in result.stdout


def test_feature_dtypes_set_the_dtype_of_one_kind(
    tiny_teacher_dir: Path, tiny_corpus_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    spec = "logits,hidden:1,2,attention:1"
    _precompute(
        tiny_teacher_dir,
        tiny_corpus_jsonl,
        out,
        "--features",
        spec,
        "--feature-dtype",
        "hidden=int8",
        "--feature-dtype",
        "logits=fp32",
    )
    info = json.loads(runner.invoke(app, ["inspect", str(out), "--json"]).stdout)
    dtypes = {f["name"]: f["dtype"] for f in info["features"]}
    assert dtypes == {"logits": "fp32", "hidden": "int8", "attention": "fp16"}
    values = verify_cache(str(out), teacher=str(tiny_teacher_dir), sample=8)["values"]
    assert values["logits"]["max_abs_error"] < 1e-6
    assert 0 < values["hidden.2"]["max_rel_error"] < 2e-2

    for item, message in [
        ("attention=int8", "int8 is not supported for attention"),
        ("hidden_cls=fp32", "which this cache does not store"),
        ("hidden=fp8", "feature_dtypes.hidden"),
        ("hidden", "expected KIND=DTYPE"),
    ]:
        other = tmp_path / "other"
        result = _invoke(
            tiny_teacher_dir, tiny_corpus_jsonl, other, "--features", spec, "--feature-dtype", item
        )
        assert result.exit_code == 1 and message in result.stderr, item


@pytest.mark.parametrize(
    ("value", "message"),
    [(["hidden"], "expected a mapping"), ({"hidden": "fp8"}, "feature_dtypes.hidden")],
)
def test_feature_dtypes_must_map_kinds_to_dtypes(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PrecomputeConfig(teacher="t", data="d.jsonl", out="o", feature_dtypes=value)  # type: ignore[arg-type]
