"""The fidelity report of ``cachebrew verify --teacher`` on sparse and dense caches of a tiny GPT-2.

The teacher's tied embeddings are scaled up so its rows are peaked like a trained LM's (top-1
~0.5) rather than the near-uniform rows of a fresh init. Every expected number is recomputed
here from the teacher (run directly through transformers) and the cache's decoded arrays.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cachebrew.cache import open_cache
from cachebrew.cache.logits.sparse import SparseLogits
from cachebrew.cli import app
from cachebrew.teacher import fidelity
from cachebrew.teacher.verify import verify_cache

runner = CliRunner()
MODES = {
    "dense": "dense",
    "topk": "topk:8",
    "topk_wide": "topk:192",
    "sample": "sample:6",
    "exact": "exact",
}


@pytest.fixture(scope="module")
def lm(tmp_path_factory, tiny_tokenizer_dir, tiny_vocab_size, tiny_sentences) -> pathlib.Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    assert tiny_vocab_size == 200  # topk:192 is "k close to V"
    root = tmp_path_factory.mktemp("fidelity")
    teacher = root / "teacher"
    teacher.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (teacher / name).write_bytes((tiny_tokenizer_dir / name).read_bytes())
    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=200)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(10)  # peaked rows (the LM head is tied)
    model.save_pretrained(teacher)
    with open(root / "corpus.jsonl", "w") as f:
        for i, sentence in enumerate(tiny_sentences[:24]):
            f.write(json.dumps({"text": sentence, "id": f"s{i}"}) + "\n")
    for name, mode in MODES.items():
        args = ["precompute", "--teacher", str(teacher), "--data", str(root / "corpus.jsonl")]
        args += ["--out", str(root / name), "--id-field", "id", "--logits", mode, "--quiet"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (result.output, result.exception)
    return root


def _verify(lm: pathlib.Path, cache: str, temperature: float = 1.0) -> dict[str, Any]:
    return verify_cache(
        str(lm / cache), teacher=str(lm / "teacher"), sample=6, temperature=temperature
    )


def _direct(lm: pathlib.Path, cache: str, sampled: list[str]) -> dict[str, np.ndarray]:
    """Per row, computed here: top-1 match, retained mass, KL, the teacher's entropy."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(lm / "teacher").eval()
    reader = open_cache(str(lm / cache))
    top1, mass, kl, entropy = [], [], [], []
    for example_id in sampled:
        example = reader.get(example_id)
        with torch.no_grad():
            ids = torch.as_tensor(example["input_ids"], dtype=torch.long)[None]
            segment = torch.zeros_like(ids)  # one sentence: segment 0, as verify rebuilds it
            logits = model(ids, token_type_ids=segment).logits[0].double().numpy()  # (L, V)
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        features = example["features"]
        if "logits.topk_ids" in features:
            stored = features["logits.topk_ids"]
            values = features["logits.topk_values"] - features["logits.logsumexp"]
            rest = 1 - np.exp(values.astype(np.float64)).sum(1, keepdims=True)
            logq = np.repeat(np.log(rest / (200 - stored.shape[1])), 200, axis=1)
            np.put_along_axis(logq, stored, values, axis=1)
        else:  # sample: counts / N on the drawn ids
            counts = features["logits.sample_counts"]
            kept = [
                ids[c > 0] for ids, c in zip(features["logits.sample_ids"], counts, strict=True)
            ]
            logq = np.full_like(logp, -np.inf)
            for row, ids in enumerate(kept):
                logq[row, ids] = np.log(counts[row][: len(ids)] / counts[row].sum())
        top1.append(logp.argmax(1) == logq.argmax(1))
        p = np.exp(logp)
        entropy.append(-(p * logp).sum(1))
        if "logits.sample_ids" in features:
            mass.append(np.array([p[r, ids].sum() for r, ids in enumerate(kept)]))
        else:
            mass.append(np.take_along_axis(p, stored, axis=1).sum(1))
        with np.errstate(divide="ignore", invalid="ignore"):
            kl.append((p * (logp - logq)).sum(1))
    return {
        name: np.concatenate(values)
        for name, values in (("top1", top1), ("mass", mass), ("kl", kl), ("entropy", entropy))
    }


def test_topk_numbers_are_in_range_and_cover_the_masked_rows(lm: pathlib.Path) -> None:
    report = _verify(lm, "topk")
    fid = report["fidelity"]
    assert report["ok"] and fid["mode"] == "topk:8" and fid["examples"] == 6
    reader = open_cache(str(lm / "topk"))
    assert fid["rows"] == sum(int(reader.get(i)["length"]) for i in report["sampled"])
    assert 0 <= fid["top1_agreement"] <= 1
    assert 0 < fid["retained_mass_min"] <= fid["retained_mass"] < 1  # top-8 of 200 misses some
    assert fid["kl_mean"] >= 0 and fid["kl_p95"] >= 0
    assert fid["kl_mean"] > 1e-4  # the spread tail is not the teacher's tail
    assert set(fid["kd"]) == {"tail", "renorm"}
    for gap in fid["kd"].values():
        assert gap["grad_gap"] >= 0 and gap["kl_dense"] >= 0 and gap["ce_dense"] >= gap["kl_dense"]
        assert gap["kl_gap"] == pytest.approx(gap["kl"] - gap["kl_dense"])
    # at T = 1 the tail's bucket masses are exact, the renormalised target drops the tail
    assert fid["kd"]["tail"]["grad_gap"] < fid["kd"]["renorm"]["grad_gap"]
    assert fid["notes"] == []


def test_topk_numbers_match_a_direct_computation(lm: pathlib.Path) -> None:
    fid_report = _verify(lm, "topk")
    fid, direct = fid_report["fidelity"], _direct(lm, "topk", fid_report["sampled"])
    assert fid["rows"] == len(direct["kl"])
    assert fid["kl_mean"] == pytest.approx(direct["kl"].mean(), rel=1e-3)
    assert fid["kl_p95"] == pytest.approx(np.percentile(direct["kl"], 95), rel=1e-3)
    assert fid["top1_agreement"] == pytest.approx(direct["top1"].mean())
    assert fid["retained_mass"] == pytest.approx(direct["mass"].mean(), rel=1e-4)
    assert fid["retained_mass_min"] == pytest.approx(direct["mass"].min(), rel=1e-4)


def test_topk_close_to_the_vocabulary_is_faithful(lm: pathlib.Path) -> None:
    wide, narrow = _verify(lm, "topk_wide")["fidelity"], _verify(lm, "topk")["fidelity"]
    assert wide["top1_agreement"] == 1.0
    assert wide["retained_mass_min"] > 0.99
    assert wide["kl_mean"] < narrow["kl_mean"] / 10
    assert wide["kd"]["tail"]["grad_gap"] < narrow["kd"]["tail"]["grad_gap"]
    assert wide["kd"]["tail"]["grad_gap"] < 0.05


def test_dense_cache_has_no_fidelity_loss(lm: pathlib.Path) -> None:
    fid = _verify(lm, "dense")["fidelity"]
    assert fid["mode"] == "dense" and set(fid["kd"]) == {"dense"}
    assert fid["top1_agreement"] == 1.0 and fid["retained_mass"] == pytest.approx(1.0)
    assert 0 <= fid["kl_mean"] < 1e-5  # fp16 rounding only
    gap = fid["kd"]["dense"]
    assert abs(gap["kl_gap"]) < 1e-3 * gap["kl_dense"] and gap["grad_gap"] < 1e-2
    assert abs(gap["ce_gap"]) < 1e-3 * gap["ce_dense"]


def test_exact_cache_is_as_faithful_as_its_fp16_hidden_states(lm: pathlib.Path) -> None:
    report = _verify(lm, "exact")
    fid = report["fidelity"]
    assert report["ok"] and fid["mode"] == "exact" and set(fid["kd"]) == {"exact"}
    assert fid["notes"] == [] and fid["examples"] == 6
    assert fid["top1_agreement"] > 0.99 and fid["retained_mass"] == pytest.approx(1.0)
    assert 0 <= fid["kl_mean"] < 1e-4  # head x fp16 hidden against the fp32 forward
    gap = fid["kd"]["exact"]
    assert abs(gap["kl_gap"]) < 1e-2 * gap["kl_dense"] and gap["grad_gap"] < 1e-2


def test_sample_cache_reports_its_estimator(lm: pathlib.Path) -> None:
    report = _verify(lm, "sample")
    fid = report["fidelity"]
    assert report["ok"]  # a recompute redraws: ids and counts carry no value tolerance
    assert fid["kl_mean"] is None and fid["kl_p95"] is None  # zero mass off the drawn ids
    direct = _direct(lm, "sample", report["sampled"])
    assert np.all(np.isinf(direct["kl"]))
    assert fid["retained_mass"] == pytest.approx(direct["mass"].mean(), rel=1e-4)
    assert fid["top1_agreement"] == pytest.approx(direct["top1"].mean())
    assert 0 < fid["retained_mass"] < 1 and 0 <= fid["top1_agreement"] <= 1
    gap = fid["kd"]["sample"]
    assert gap["grad_gap"] > 0 and math.isfinite(gap["kl_gap"])
    # ce is linear in the target (unbiased): one draw is off by much less than kl, which
    # subtracts the draw's own entropy (far below the teacher's)
    assert abs(gap["ce_gap"]) < gap["kl_gap"]
    assert any("unbiased only in expectation" in note for note in fid["notes"])
    # another temperature: the estimator is refused, the rest is still reported
    hot = _verify(lm, "sample", temperature=2)["fidelity"]
    assert "temperature 1" in hot["kd"]["sample"]["skipped"]
    assert hot["retained_mass"] == pytest.approx(fid["retained_mass"])


def test_renorm_gaps_match_a_direct_computation_at_t2(lm: pathlib.Path) -> None:
    report = _verify(lm, "topk", temperature=2)
    fid, t = report["fidelity"], 2.0
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(lm / "teacher").eval()
    reader = open_cache(str(lm / "topk"))
    generator = torch.Generator().manual_seed(0)  # verify's seed: the student proxy's noise
    loss = dense = ce = ce_dense = diff_sq = dense_sq = 0.0
    for example_id in report["sampled"]:
        example = reader.get(example_id)
        with torch.no_grad():
            ids = torch.as_tensor(example["input_ids"], dtype=torch.long)[None]
            teacher = model(ids, token_type_ids=torch.zeros_like(ids)).logits[0].float()
        student = (teacher + torch.randn(teacher.shape, generator=generator)).requires_grad_()
        stored = torch.as_tensor(example["features"]["logits.topk_ids"])
        values = torch.as_tensor(example["features"]["logits.topk_values"])
        target = (values / t).softmax(-1)  # renorm: the top-k only, the raw logsumexp cancels
        log_s = torch.log_softmax(student / t, -1).gather(1, stored)
        renorm = (target * (target.log() - log_s)).sum()
        p_dense = torch.softmax(teacher / t, -1)
        full = (p_dense * (p_dense.log() - torch.log_softmax(student / t, -1))).sum()
        (g_sparse,) = torch.autograd.grad(renorm, student)
        (g_dense,) = torch.autograd.grad(full, student)
        loss, dense = loss + float(renorm.detach()), dense + float(full.detach())
        ce -= float((target * log_s).sum().detach())
        ce_dense -= float((p_dense * torch.log_softmax(student / t, -1)).sum().detach())
        diff_sq += float(((g_sparse - g_dense) ** 2).sum())
        dense_sq += float((g_dense**2).sum())
    gap = fid["kd"]["renorm"]
    assert gap["kl"] == pytest.approx(loss / fid["rows"], rel=1e-3)
    assert gap["kl_dense"] == pytest.approx(dense / fid["rows"], rel=1e-3)
    assert gap["ce_gap"] == pytest.approx((ce - ce_dense) / fid["rows"], rel=1e-3)
    assert gap["grad_gap"] == pytest.approx(math.sqrt(diff_sq / dense_sq), rel=1e-3)
    assert any("T != 1" in note for note in fid["notes"])


def test_a_registered_reconstruction_is_used(
    lm: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def uniform(rows: Any, num_classes: int) -> torch.Tensor:
        return torch.full((rows.ids.shape[0], num_classes), -math.log(num_classes))

    monkeypatch.setitem(fidelity.RECONSTRUCTIONS, "topk", uniform)
    report = _verify(lm, "topk")
    entropy = _direct(lm, "topk", report["sampled"])["entropy"]
    expected = np.mean(math.log(200) - entropy)  # KL(p || uniform) = log V - H(p)
    assert report["fidelity"]["kl_mean"] == pytest.approx(expected, rel=1e-3)
    assert report["fidelity"]["top1_agreement"] < 0.5  # argmax of a flat row: id 0
    monkeypatch.delitem(fidelity.RECONSTRUCTIONS, "topk")
    skipped = _verify(lm, "topk")["fidelity"]
    assert "add one to cachebrew.teacher.fidelity.RECONSTRUCTIONS" in skipped["skipped"]
    # no function registered: rows that rebuild their own full logits (``dense()``) are used
    flat = lambda rows: torch.zeros(rows.ids.shape[0], 200)  # noqa: E731
    monkeypatch.setattr(SparseLogits, "dense", flat, raising=False)
    fallback = _verify(lm, "topk")["fidelity"]
    assert fallback["kl_mean"] == pytest.approx(report["fidelity"]["kl_mean"], rel=1e-6)


def test_cli_prints_the_table_and_the_json(lm: pathlib.Path) -> None:
    args = ["verify", str(lm / "topk"), "--teacher", str(lm / "teacher"), "--sample", "3"]
    result = runner.invoke(app, [*args, "--temperature", "2"])
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.output
    assert "fidelity of logits (topk:8)" in out and "KD at T = 2, sparse - dense" in out
    for label in ("top-1 agreement", "retained mass", "KL(teacher || reconstructed)", "renorm"):
        assert label in out
    assert out.strip().splitlines()[-1].startswith("PASS")  # the verdict stays last
    data = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert data["fidelity"]["temperature"] == 1.0 and "tail" in data["fidelity"]["kd"]
    assert "fidelity" not in runner.invoke(app, ["verify", str(lm / "topk")]).output
