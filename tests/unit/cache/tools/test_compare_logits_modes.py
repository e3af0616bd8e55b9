"""`cachebrew compare` in every logits mode (issue 24): sample (same draws or not, per
example), exact (the recomputed logits' KL), top-k against its q-code (KL, the same ids, no
"shape mismatch"), sample against a distribution (a plain note, no traceback); text and JSON."""

from __future__ import annotations

import json
import pathlib
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cachebrew.cache import CacheWriter, parse_feature_spec
from cachebrew.cache.format.lm_head import write_head
from cachebrew.cache.format.spec import FeatureSpec
from cachebrew.cache.format.storage import CacheLocation
from cachebrew.cache.logits.exact import LMHead
from cachebrew.cache.tools.compare import compare_caches, describe_comparison
from cachebrew.cli import app

VOCAB, HIDDEN, NUM = 40, 8, 10
runner = CliRunner()


def _corpus(seed: int = 0) -> tuple[LMHead, list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    weight = torch.tensor(rng.normal(size=(VOCAB, HIDDEN)), dtype=torch.float32)
    head = LMHead(weight)
    examples = []
    for i in range(NUM):
        length = int(rng.integers(3, 7))
        hidden = rng.normal(scale=1.5, size=(length, HIDDEN)).astype(np.float32)
        logits = head.logits(torch.from_numpy(hidden)).numpy()
        examples.append({"id": f"ex{i}", "hidden": hidden, "logits": logits, "length": length})
    return head, examples


HEAD, EXAMPLES = _corpus()


def _write(path: pathlib.Path, mode: str, examples: list[dict[str, Any]] = EXAMPLES) -> str:
    logits = parse_feature_spec("logits", dtype="fp32").get("logits")
    assert logits is not None
    spec = FeatureSpec((replace(logits, logits_mode=mode, vocab_size=VOCAB),))
    with CacheWriter(path, spec, teacher_info={"class": "Tiny"}, corpus_fingerprint="c") as w:
        if mode == "exact":
            write_head(CacheLocation(str(path)), HEAD)
        for e in examples:
            value = e["hidden"] if mode == "exact" else e["logits"]
            w.add(e["id"], {"logits": value}, input_ids=np.arange(e["length"]))
    return str(path)


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("modes")
    changed = [dict(e) for e in EXAMPLES]
    changed[3] = {**changed[3], "logits": changed[3]["logits"] + 0.5 * np.arange(VOCAB)}
    modes = ("dense", "topk:8", "topk:8:q4", "sample:12", "sample:32", "exact")
    out = {mode: _write(root / mode.replace(":", "-"), mode) for mode in modes}
    out["sample:12 other"] = _write(root / "sample-other", "sample:12", changed)
    out["exact again"] = _write(root / "exact-again", "exact")
    return out


def _compare(caches: dict[str, str], a: str, b: str) -> tuple[dict[str, Any], str]:
    """The report and the CLI's text; the CLI's --json gives the same report."""
    report = compare_caches(caches[a], caches[b])
    text = runner.invoke(app, ["compare", caches[a], caches[b]])
    as_json = runner.invoke(app, ["compare", caches[a], caches[b], "--json"])
    assert "Traceback" not in text.output + as_json.output
    assert text.exit_code == as_json.exit_code == (0 if report["ok"] else 1), text.output
    assert json.loads(as_json.stdout)["logits"] == report["logits"]
    return report, text.output


def test_sample_against_itself_has_the_same_draws(caches: dict[str, str]) -> None:
    report, text = _compare(caches, "sample:12", "sample:12")
    assert report["identical"] and report["logits"]["examples_with_other_draws"] == 0
    assert f"the same draws in all {NUM} examples" in text


def test_sample_draws_that_differ_are_counted_per_example(caches: dict[str, str]) -> None:
    report, text = _compare(caches, "sample:12", "sample:12 other")
    logits = report["logits"]
    assert logits["compared_as"] == "draws" and logits["examples_with_other_draws"] == 1
    assert report["first_difference"] == {"example_id": "ex3", "feature": "logits"}
    assert f"other draws in 1 of {NUM} examples (first 'ex3')" in text
    other_n, _ = _compare(caches, "sample:12", "sample:32")
    assert "A draws 12 ids per row at T=1, B 32" in other_n["logits"]["note"]
    assert "shape" not in describe_comparison(other_n)


def test_sample_against_a_distribution_is_a_plain_note(caches: dict[str, str]) -> None:
    for other in ("dense", "topk:8", "exact"):
        report, text = _compare(caches, "sample:12", other)
        assert not report["ok"] and report["logits"]["compared_as"] == "not compared"
        assert "A stores 12 sampled ids per row (sample:12)" in report["logits"]["note"]
        assert text.strip().endswith("every other array is equal")
    report, _ = _compare(caches, "topk:8", "sample:32")
    assert "B stores 32 sampled ids per row" in report["logits"]["note"]


def test_exact_recomputes_the_logits_for_the_kl(caches: dict[str, str]) -> None:
    same, text = _compare(caches, "exact", "exact again")
    assert same["identical"] and same["logits"]["kl"]["max"] == 0.0
    assert same["logits"]["kl"]["rows"] == sum(e["length"] for e in EXAMPLES)
    against_dense, _ = _compare(caches, "exact", "dense")
    logits = against_dense["logits"]
    assert logits["compared_as"] == "distributions" and logits["kl"]["max"] < 1e-9
    assert "exact logits recomputed" in logits["note"]
    against_topk, _ = _compare(caches, "dense", "topk:8")
    assert against_topk["logits"]["kl"]["mean"] > 1e-3  # the tail is spread evenly


def test_topk_against_its_q_code_reports_the_kl_and_the_same_ids(caches: dict[str, str]) -> None:
    report, text = _compare(caches, "topk:8", "topk:8:q4")
    logits = report["logits"]
    assert logits["compared_as"] == "distributions"
    assert logits["examples_with_other_topk_ids"] == 0
    assert 0 < logits["kl"]["mean"] < 0.05
    assert report["features"]["logits"]["shape_mismatches"] == 0
    assert "logits.topk_values" not in report["features"]
    assert f"the same top-k ids in all {NUM} examples" in text
    assert "A stores the logits as topk:8 raw, B as topk:8:q4 raw" in text
    assert "shape" not in text


def test_a_legacy_topk_cache_against_the_topk_mode_compares_distributions(
    caches: dict[str, str], tmp_path: pathlib.Path
) -> None:
    legacy_spec = parse_feature_spec("logits", dtype="fp32", topk=8, vocab_size=VOCAB)
    with CacheWriter(
        tmp_path / "legacy", legacy_spec, teacher_info={"class": "Tiny"}, corpus_fingerprint="c"
    ) as w:
        for e in EXAMPLES:
            w.add(e["id"], {"logits": e["logits"]}, input_ids=np.arange(e["length"]))
    report = compare_caches(tmp_path / "legacy", caches["topk:8"], atol=1e-6)
    logits = report["logits"]
    assert logits["compared_as"] == "distributions" and logits["kl"]["max"] < 1e-9
    assert logits["examples_with_other_topk_ids"] == 0 and report["ok"]
