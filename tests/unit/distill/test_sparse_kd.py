"""Sparse KD losses against dense references, the sampling estimator, and peak memory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from cachebrew.cache.logits.exact import ExactLogits, LMHead
from cachebrew.cache.logits.sparse import SparseLogits, sample_rows
from cachebrew.config import DistillationConfig
from cachebrew.distill.exact_kd import exact_kd_loss
from cachebrew.distill.loss import DistillationLoss, LossWeights
from cachebrew.distill.sparse_kd import scaled_logsumexp, sparse_kd_loss
from cachebrew.errors import ConfigError
from cachebrew.losses import kd_ce_loss

ROWS, V, K = 6, 40, 5


def _teacher_topk(seed: int = 0) -> tuple[torch.Tensor, SparseLogits]:
    g = torch.Generator().manual_seed(seed)
    logq = (torch.randn(ROWS, V, generator=g, dtype=torch.float64) * 2).log_softmax(-1)
    top = logq.topk(K, dim=-1)
    return logq, SparseLogits("topk", top.indices, top.values.float(), V)


def _student(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(ROWS, V, generator=g) * 2).requires_grad_()


def _grad(loss_fn, logits: torch.Tensor) -> tuple[float, torch.Tensor]:
    logits.grad = None
    loss = loss_fn(logits)
    loss.backward()
    return float(loss.detach()), logits.grad.clone()


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_topk_tail_equals_the_dense_bucketed_loss(temperature: float) -> None:
    logq, teacher = _teacher_topk()
    z = _student()
    in_top = torch.zeros(ROWS, V, dtype=torch.bool).scatter_(1, teacher.ids, True)

    def dense(logits: torch.Tensor) -> torch.Tensor:
        # the reconstructed teacher (top-k exact, tail spread evenly), bucketed densely
        q = torch.where(in_top, logq.exp(), (1 - (logq.exp() * in_top).sum(-1, True)) / (V - K))
        q_tail = (q * ~in_top).sum(-1)
        t = torch.cat(
            [torch.where(in_top, q, 0).log()[in_top].view(ROWS, K), q_tail[:, None].log()], 1
        )
        p = (t / temperature).softmax(-1)  # top-k in id order, then the tail
        s = (logits / temperature).softmax(-1)
        s_b = torch.cat([s[in_top].view(ROWS, K), (s * ~in_top).sum(-1, True)], 1)
        return -(p.float() * s_b.log()).sum(-1).mean()

    # dense ordering is by id; sort the sparse ids the same way (the loss is order-free)
    order = teacher.ids.argsort(-1)
    sorted_teacher = SparseLogits(
        "topk", teacher.ids.gather(1, order), teacher.logprobs.gather(1, order), V
    )
    ref_value, ref_grad = _grad(dense, z)
    value, grad = _grad(lambda x: sparse_kd_loss(x, sorted_teacher, temperature), z)
    assert value == pytest.approx(ref_value, abs=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_topk_renorm_equals_textbrewer_ce_on_the_masked_teacher(temperature: float) -> None:
    logq, teacher = _teacher_topk(2)
    z = _student(3)
    in_top = torch.zeros(ROWS, V, dtype=torch.bool).scatter_(1, teacher.ids, True)
    masked = torch.where(in_top, logq, -1e30).float()  # the tail gets no mass (DistillKit "zero")
    ref_value, ref_grad = _grad(lambda x: kd_ce_loss(x, masked, temperature), z)
    value, grad = _grad(lambda x: sparse_kd_loss(x, teacher, temperature, topk_target="renorm"), z)
    assert value == pytest.approx(ref_value, abs=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6)


def _teacher_sample(logq: torch.Tensor, n: int, seed: int = 0, t: float = 1.0) -> SparseLogits:
    ids, counts = sample_rows((logq.numpy() + seed * 1e-7).astype(np.float32), n, t)
    share = torch.from_numpy(counts / counts.sum(1, keepdims=True)).float().log()
    return SparseLogits("sample", torch.from_numpy(ids), share, V, t)


@pytest.mark.parametrize("loss_type", ["ce", "kl"])
def test_sample_loss_equals_the_dense_loss_on_the_sampled_target(loss_type: str) -> None:
    logq, _ = _teacher_topk(4)
    teacher = _teacher_sample(logq, 12, t=2.0)
    z = _student(5)
    p = torch.zeros(ROWS, V).scatter_add_(1, teacher.ids, teacher.logprobs.exp())

    def dense(logits: torch.Tensor) -> torch.Tensor:
        ce = -(p * (logits / 2.0).log_softmax(-1)).sum(-1).mean()
        entropy = -(p * torch.where(p > 0, p.log(), 0)).sum(-1).mean()
        return ce - entropy if loss_type == "kl" else ce

    ref_value, ref_grad = _grad(dense, z)
    value, grad = _grad(lambda x: sparse_kd_loss(x, teacher, 2.0, loss_type=loss_type), z)
    assert value == pytest.approx(ref_value, abs=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="drew its ids at temperature 2"):
        sparse_kd_loss(z, teacher, 1.0)


def test_sampling_estimator_is_unbiased_for_the_dense_kd_gradient() -> None:
    logq, _ = _teacher_topk(6)
    z = _student(7)
    _, dense_grad = _grad(lambda x: kd_ce_loss(x, logq.float(), 1.0), z)
    draws, n = 400, 12
    mean_grad = torch.zeros_like(dense_grad)
    for seed in range(draws):
        drawn = _teacher_sample(logq, n, seed)
        _, grad = _grad(lambda x, drawn=drawn: sparse_kd_loss(x, drawn, 1.0), z)
        mean_grad += grad / draws
    # d loss / d z = (s - counts/N) / ROWS; the mean's std per entry is at most
    # sqrt(q (1 - q) / (N * draws)) / ROWS <= 0.5 / sqrt(4800) / 6 = 1.2e-3: 5 sigma = 6e-3
    assert (mean_grad - dense_grad).abs().max() < 6e-3
    # and the bias of one draw is far larger than that (the test can fail)
    _, one = _grad(lambda x: sparse_kd_loss(x, _teacher_sample(logq, n, 0), 1.0), z)
    assert (one - dense_grad).abs().max() > 6e-3


def test_chunked_logsumexp_matches_torch() -> None:
    z = _student(8)
    _, ref = _grad(lambda x: (torch.logsumexp(x / 1.7, -1) * torch.arange(ROWS)).sum(), z)
    _, got = _grad(lambda x: (scaled_logsumexp(x, 1.7, chunk_rows=4) * torch.arange(ROWS)).sum(), z)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_distillation_loss_uses_the_sparse_path_with_t2_scale() -> None:
    _, teacher = _teacher_topk(9)
    z = _student(10)
    config = DistillationConfig(temperature=2.0, kd_t2_scale=True)
    out = DistillationLoss(config)(
        {"logits": [z]}, {"logits": [teacher]}, LossWeights(1.0, 1.0), {}
    )
    expected = sparse_kd_loss(z, teacher, 2.0) * 4.0
    assert float(out.total) == pytest.approx(float(expected), abs=1e-6)
    scheduled = DistillationConfig(temperature_scheduler=["flsw", 1.0, 1.0])
    with pytest.raises(ConfigError, match="need dense teacher logits"):
        DistillationLoss(scheduled)({"logits": [z]}, {"logits": [teacher]}, LossWeights(1, 1), {})


def _peak_bytes(step, tmp_path: Path) -> int:
    """Peak bytes of CPU tensors allocated by ``step()`` above what existed before it.

    torch's CPU allocations are invisible to tracemalloc; the profiler's memory events see
    every one of them, and its trace records the running total after each.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    memory = [e["args"] for e in events if e.get("name") == "[memory]"]
    # the running total carries what earlier profiles left counted: measure from the first event
    baseline = memory[0]["Total Allocated"] - memory[0]["Bytes"]
    return max(m["Total Allocated"] for m in memory) - baseline


def test_sparse_kd_step_peak_memory_is_well_below_the_dense_rebuild(tmp_path: Path) -> None:
    from cachebrew.cache.feed.collate import rebuild_topk

    rows, vocab, k, hidden_size = 64, 151_936, 128, 64
    g = torch.Generator().manual_seed(0)
    z = torch.randn(rows, vocab, generator=g).requires_grad_()
    ids = torch.randint(0, vocab, (rows, k), generator=g)
    logprobs = torch.linspace(-1.0, -12.0, k).expand(rows, k).contiguous()
    teacher = SparseLogits("topk", ids, logprobs, vocab)
    sampled = SparseLogits("sample", ids[:, :12], torch.full((rows, 12), -math.log(12)), vocab)
    head = LMHead(torch.randn(vocab, hidden_size, generator=g) / 8)
    exact = ExactLogits(torch.randn(rows, hidden_size, generator=g), head)
    lse = torch.zeros(rows, 1)
    steps = {
        # today's collate rebuilds (rows, V) log-probs, then TextBrewer's dense ce
        "dense": lambda: kd_ce_loss(z, rebuild_topk(logprobs, ids, lse, vocab, "logprobs"), 2.0),
        "topk_tail": lambda: sparse_kd_loss(z, teacher, 2.0, chunk_rows=8),
        "sample": lambda: sparse_kd_loss(z, sampled, 1.0, chunk_rows=8),
        "exact": lambda: exact_kd_loss(z, exact, 2.0),
        "exact_dense": lambda: kd_ce_loss(z, exact.dense(), 2.0),  # the dense rebuild of exact
    }
    peaks = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same allocations; many small ops stall on a loaded 2-core box
    try:
        for name, loss_fn in steps.items():
            z.grad = None  # freed before the measurement: only what the step allocates counts
            peaks[name] = _peak_bytes(lambda loss_fn=loss_fn: loss_fn().backward(), tmp_path)
    finally:
        torch.set_num_threads(threads)
    one_tensor = rows * vocab * 4  # 38.9 MB: z.grad alone is one of these
    # the profiler sees the allocations (a dense step holds several (rows, V) tensors at once)
    assert peaks["dense"] > 3 * one_tensor and peaks["exact_dense"] > 3 * one_tensor, peaks
    # measured: dense 4.0, topk_tail and sample 1.25 (z.grad and (8, V) row chunks), exact 1.11
    # (z.grad and (rows, 4096) vocabulary chunks) tensors of (rows, V) float32
    for name in ("topk_tail", "sample"):
        assert peaks[name] < 1.5 * one_tensor and peaks[name] < peaks["dense"] / 3, peaks
    assert peaks["exact"] < 1.3 * one_tensor and peaks["exact"] < peaks["exact_dense"] / 3, peaks
