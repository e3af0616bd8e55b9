"""One world record and one rank -> device rule for precompute and distill (issue 20)."""

from __future__ import annotations

import pytest
import torch

from cachebrew.errors import ConfigError
from cachebrew.runner import distributed
from cachebrew.teacher import parallel
from cachebrew.world import World, launched, rank_device


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_both_stages_use_the_one_world_record() -> None:
    assert distributed.World is World and parallel.World is World
    assert parallel.make_partition("1/3").world == World(1, 3, launcher="part")


def test_each_torchrun_rank_gets_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 2)
    for device in ("auto", "cuda"):
        got = rank_device(device, World(1, 2, local_rank=1, launcher="torchrun"))
        assert got == torch.device("cuda", 1)
    assert rank_device("cpu", World(1, 2, local_rank=1, launcher="torchrun")).type == "cpu"


def test_a_rank_without_its_own_gpu_is_refused_not_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 1)
    with pytest.raises(ConfigError, match="local rank 1 has no GPU .1 visible.; start at most one"):
        rank_device("auto", World(1, 2, local_rank=1, launcher="torchrun"))


def test_without_cuda_auto_is_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 0)
    assert rank_device("auto", World(1, 2, local_rank=1, launcher="torchrun")).type == "cpu"
    assert rank_device("auto", World(1, 4, launcher="part")).type == "cpu"


def test_launched_reads_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launched() == World(2, 4, 0, "torchrun")
    assert launched().label == "rank 2 of 4" and launched().owns(6)
    with pytest.raises(ConfigError, match="expected 0 <= rank < N"):
        World(4, 4)
