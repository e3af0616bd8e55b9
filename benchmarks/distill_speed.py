"""Distillation speed: a student trained from the cache against the same student trained with a
live teacher, in cachebrew and in TextBrewer 0.2.1.post1, one run each, same shapes.

Usage: ``make bench-distill`` (or ``python benchmarks/distill_speed.py [--examples N]
[--cached-steps N] [--online-steps N]``). Needs ``data/`` (``cachebrew data prepare``). Prints a
Markdown table and writes ``runs/bench-distill/results.json``.

Teacher: BERT-base-shaped, fresh weights (``common.bert_base_teacher``); student: 4 layers, 312
hidden, 12 heads, 1,200 FFN (TinyBERT-4's shape), fresh; batches of 16 x 128 tokens. The
distillation: soft-label CE at T = 4 and five ``hidden_mse`` matches (student layers 0-4 to
teacher layers 0, 3, 6, 9, 12 through linear 312 -> 768 projections), no hard labels.

Runs, each timed over its steps after 2 warm-up steps (wall time between consecutive batch
requests, so the checkpoint saved at the end is not counted):

1. **oracle**: cachebrew, the teacher's outputs already collated in RAM (a list of batches):
   the student's own cost, no data wait.
2. **cache**: cachebrew from the fp16 cache written with the default codec (``lz4-bitshuffle``)
   through ``CacheDataset``; its data-wait share is the time spent inside the dataset's
   ``next()`` over the step time. Oracle, the cache with ``prefetch=0`` (read in the training
   thread) and as ``distill`` reads it, ``prefetch=1`` (the next batches made in a background
   thread that runs on into the next epoch), run twice each, alternating (means reported);
   then a cache written with ``codec: none`` (fresh-weight hidden states barely compress),
   prefetch 0.
3. **cachebrew online**: the same loop with the live teacher (``model_T``), inputs from the cache.
4. **textbrewer online**: ``textbrewer.GeneralDistiller`` with the same teacher, student, config
   and inputs (a ``DataLoader`` of ``(input_ids, attention_mask, token_type_ids)``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from common import ROOT, bert_base_teacher, long_corpus

from cachebrew.cache.format.codecs import DEFAULT_CODEC

OUT = ROOT / "runs" / "bench-distill"
BATCH = 16
WARMUP = 2
LAYERS_T = (0, 3, 6, 9, 12)
TEMPERATURE = 4
MATCHES = [
    {
        "layer_T": t,
        "layer_S": s,
        "feature": "hidden",
        "loss": "hidden_mse",
        "weight": 1,
        "proj": ["linear", 312, 768],
    }
    for s, t in enumerate(LAYERS_T)
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256, help="cached examples (cycled)")
    parser.add_argument("--cached-steps", type=int, default=40)
    parser.add_argument("--online-steps", type=int, default=12)
    args = parser.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    teacher = bert_base_teacher(OUT)
    corpus = long_corpus(OUT, args.examples)
    cache = _precompute(teacher, corpus)
    raw = _precompute(teacher, corpus, codec="none")
    cached, online = args.cached_steps, args.online_steps
    oracle, prefetch0, prefetch1 = [], [], []
    for mode in ("oracle", "p0", "p1", "p1", "p0", "oracle"):  # alternating, against drift
        if mode == "oracle":
            oracle.append(_cachebrew(None, _in_ram(cache), cached))
        else:
            runs_of = prefetch0 if mode == "p0" else prefetch1
            runs_of.append(_cachebrew(None, _dataset(cache, True, int(mode[1])), cached))
    runs = {
        "oracle (teacher outputs in RAM)": _mean(oracle),
        f"cachebrew from the {DEFAULT_CODEC} cache, prefetch 0": _mean(prefetch0),
        "cachebrew from the same cache, prefetch 1 (the distill default)": _mean(prefetch1),
        "cachebrew from a codec-none cache": _cachebrew(None, _dataset(raw, True), cached),
        "cachebrew online (live teacher)": _cachebrew(teacher, _dataset(cache, False), online),
        "textbrewer 0.2.1.post1 online": _textbrewer(teacher, cache, online),
    }
    results = {"threads": torch.get_num_threads(), "batch": BATCH, "runs": runs}
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(render(results))


def _precompute(teacher: Path, corpus: Path, codec: str = DEFAULT_CODEC) -> Path:
    from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

    out = OUT / f"cache-{codec}"
    features = "logits:logprobs,hidden:" + ",".join(map(str, LAYERS_T))
    cfg = PrecomputeConfig(
        teacher=str(teacher),
        data=str(corpus),
        out=str(out),
        features=features,
        label_field="label",
        id_field="id",
        max_length=128,
        batch_size=BATCH,
        device="cpu",
        codec=codec,
    )
    summary = run_precompute(cfg, progress=False)
    print(
        f"cache ({codec}): {summary.num_examples} examples, {summary.bytes_on_disk / 1e6:.0f} MB "
        f"in {summary.pass_seconds:.0f} s",
        flush=True,
    )
    return out


def _mean(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means of the figures; the per-step waits of every run, in order."""
    out = {key: sum(r[key] for r in runs) / len(runs) for key in runs[0] if key != "waits_ms"}
    return {**out, "waits_ms": [r["waits_ms"] for r in runs]}


def _dataset(cache: Path, teacher_cache: bool, prefetch: int = 0) -> Any:
    from cachebrew.cache.feed.dataset import CacheDataset

    return CacheDataset(
        str(cache),
        batch_size=BATCH,
        seed=0,
        drop_last=True,
        teacher_cache=teacher_cache,
        prefetch=prefetch,
    )


def _in_ram(cache: Path) -> list[Any]:
    return list(_dataset(cache, True))


class Timed:
    """Re-iterable view of batches that records when each is requested and how long it took."""

    def __init__(self, batches: Iterable[Any]):
        self.batches = batches
        self.requested: list[float] = []
        self.waits: list[float] = []

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.requested.append(start)
            self.waits.append(time.perf_counter() - start)
            yield batch

    def summary(self) -> dict[str, Any]:
        """Examples/s and data-wait share from the first step after the warm-up to the start of
        the last step (so the checkpoint the run saves at its end is not counted), and the
        wait of every step (warm-up included) in ms."""
        times = self.requested[WARMUP:]
        seconds = times[-1] - times[0]
        steps = len(times) - 1
        return {
            "steps": steps,
            "seconds": seconds,
            "examples_per_s": steps * BATCH / seconds,
            "data_wait_share": sum(self.waits[WARMUP : WARMUP + steps]) / seconds,
            "waits_ms": [round(1000 * w, 1) for w in self.waits],  # per step: epoch starts show
        }


def _student() -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        num_hidden_layers=4,
        hidden_size=312,
        num_attention_heads=12,
        intermediate_size=1200,
        num_labels=3,
        output_hidden_states=True,
    )
    torch.manual_seed(1)
    return BertForSequenceClassification(config)


def _cachebrew(teacher: Path | None, batches: Any, steps: int) -> dict[str, Any]:
    from cachebrew import DistillationConfig, GeneralDistiller, TrainingConfig
    from cachebrew.models import default_adaptor, load_model

    model_T = adaptor_T = None
    if teacher is not None:
        loaded = load_model(teacher)
        model_T, adaptor_T = loaded.model, loaded.adaptor
    student = _student()
    distiller = GeneralDistiller(
        TrainingConfig(device="cpu", output_dir=str(OUT / "ckpt-cachebrew"), seed=0),
        DistillationConfig(
            temperature=TEMPERATURE, hard_label_weight=0, intermediate_matches=MATCHES
        ),
        model_T,
        student,
        adaptor_T,
        lambda batch, outputs: default_adaptor(batch, outputs, kind="sequence_classification"),
    )
    timed = Timed(batches)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    with distiller:
        distiller.train(optimizer, timed, num_steps=WARMUP + steps + 1)
    return timed.summary()


def _textbrewer(teacher: Path, cache: Path, steps: int) -> dict[str, Any]:
    import textbrewer
    from torch.utils.data import DataLoader, TensorDataset

    from cachebrew.cache import open_cache
    from cachebrew.corpus import pad_batch
    from cachebrew.models import load_model

    items = [
        {"input_ids": e["input_ids"].tolist(), "attention_mask": [1] * e["length"]}
        for e in open_cache(cache).iter_examples()
    ]
    padded = pad_batch(items, pad_id=0)  # a few texts are shorter than 128 tokens
    ids, mask = padded["input_ids"], padded["attention_mask"]
    inputs = TensorDataset(ids, mask, torch.zeros_like(ids))
    loader = DataLoader(inputs, batch_size=BATCH, shuffle=True, drop_last=True)
    model_T = load_model(teacher).model

    def adaptor(batch: Any, outputs: Any) -> dict[str, Any]:
        return {"logits": outputs.logits, "hidden": outputs.hidden_states, "inputs_mask": batch[1]}

    student = _student()
    distiller = textbrewer.GeneralDistiller(
        train_config=textbrewer.TrainingConfig(
            device="cpu", output_dir=str(OUT / "ckpt-textbrewer"), ckpt_steps=10_000
        ),
        distill_config=textbrewer.DistillationConfig(
            temperature=TEMPERATURE, hard_label_weight=0, intermediate_matches=MATCHES
        ),
        model_T=model_T,
        model_S=student,
        adaptor_T=adaptor,
        adaptor_S=adaptor,
    )
    timed = Timed(loader)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    with distiller:
        distiller.train(optimizer, timed, num_steps=WARMUP + steps + 1)
    return timed.summary()


def render(results: dict[str, Any]) -> str:
    runs = results["runs"]
    textbrewer = runs["textbrewer 0.2.1.post1 online"]["examples_per_s"]
    oracle = runs["oracle (teacher outputs in RAM)"]["examples_per_s"]
    lines = [
        "| run | steps timed | examples/s | vs textbrewer online | vs oracle | data wait |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        lines.append(
            f"| {name} | {r['steps']} | {r['examples_per_s']:.2f} | "
            f"{r['examples_per_s'] / textbrewer:.2f}x | {r['examples_per_s'] / oracle:.3f} | "
            f"{100 * r['data_wait_share']:.1f} % |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
