"""Precompute against the bare ``sdpa`` forward of the same teacher and batches (issue 21).

For each case, two fresh processes per round, alternating: ``forward`` loads the teacher with
``attn_implementation="sdpa"`` and no hidden states / attentions and only calls it on the
batches precompute runs (:func:`common.forward_only_seconds`); ``precompute`` runs
``run_precompute`` (its ``pass_seconds``: teacher pass + writing, no model load). Each child
reports its seconds and its peak RSS (``getrusage``), and the RSS after loading the model, so the
memory the pass itself needs (peak - loaded) is compared too. Ratios come from the same run.

Cases (fresh seeded weights, a word-level tokenizer over random words: no download):

- ``lm2048``: GPT-2, 4 layers x 256, 8 heads, V = 32,000, L = 2,048, ``--logits topk:128``;
- ``lm1024``: the same model at L = 1,024, ``--logits topk:128``;
- ``bert``: BERT-base's shape (12 x 768, V = 30,522), 16 x 128, 3-class head, logits only.

Run ``python benchmarks/model_sizes.py [--cases lm2048,lm1024,bert] [--texts 8] [--rounds 2]``;
results in ``runs/bench-sizes/results.json``. Set ``PYTHONPATH`` to measure another checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

CASES: dict[str, dict[str, Any]] = {
    "lm2048": {"family": "gpt2", "max_length": 2048, "batch_size": 4, "logits": "topk:128"},
    "lm1024": {"family": "gpt2", "max_length": 1024, "batch_size": 4, "logits": "topk:128"},
    "bert": {"family": "bert", "max_length": 128, "batch_size": 16, "logits": None},
}
VOCAB = {"gpt2": 32000, "bert": 30522}


def build_teacher(family: str, out: Path) -> Path:
    """A seeded teacher directory with a word-level ``tokenizer.json`` of its vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    path = out / family
    if (path / "config.json").exists():
        return path
    words = ["[PAD]", "[UNK]", *(f"w{i}" for i in range(VOCAB[family] - 2))]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    torch.manual_seed(0)
    if family == "gpt2":
        config = GPT2Config(
            n_layer=4, n_embd=256, n_head=8, vocab_size=VOCAB[family], n_positions=2048,
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        model: Any = GPT2LMHeadModel(config)
    else:
        model = BertForSequenceClassification(BertConfig(num_labels=3))
    model.save_pretrained(path)
    tokenizer.save(str(path / "tokenizer.json"))
    return path


def build_corpus(out: Path, name: str, texts: int, length: int, labels: bool) -> Path:
    """``texts`` lines of ``length`` random words each (every text fills ``max_length``)."""
    import random

    rng = random.Random(0)
    path = out / f"{name}.jsonl"
    with path.open("w") as f:
        for i in range(texts):
            text = " ".join(f"w{rng.randrange(2, 30000)}" for _ in range(length))
            row = {"id": f"t{i}", "text": text, **({"label": i % 3} if labels else {})}
            f.write(json.dumps(row) + "\n")
    return path


def child(args: argparse.Namespace) -> None:
    """One measurement in this process: print ``{seconds, peak_rss_mb, loaded_rss_mb}``."""
    import torch

    torch.set_num_threads(2)
    case = CASES[args.case]
    labels = case["family"] == "bert"
    if args.mode == "forward":
        from common import forward_only_seconds
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        from cachebrew.corpus import read_corpus
        from cachebrew.models.tokenizer import load_tokenizer

        auto = AutoModelForSequenceClassification if labels else AutoModelForCausalLM
        model = auto.from_pretrained(args.teacher, attn_implementation="sdpa").eval()
        model.config.output_hidden_states = model.config.output_attentions = False
        loaded = argparse.Namespace(model=model, tokenizer=load_tokenizer(args.teacher))
        records = list(read_corpus(args.data, label_field="label" if labels else None))
        loaded_rss = _rss_mb()
        seconds = forward_only_seconds(
            loaded, records, max_length=case["max_length"], batch_size=case["batch_size"],
            shard_size=256,
        )  # fmt: skip
    else:
        from cachebrew.teacher.precompute import PrecomputeConfig, run_precompute

        cfg = PrecomputeConfig(
            teacher=args.teacher, data=args.data, out=args.out, logits=case["logits"],
            max_length=case["max_length"], batch_size=case["batch_size"], overwrite=True,
            label_field="label" if labels else None,
        )  # fmt: skip
        loaded_rss = _rss_mb()  # before the load (precompute loads inside); not used in ratios
        summary = run_precompute(cfg, progress=False)
        seconds = summary.pass_seconds
    print(json.dumps({"seconds": seconds, "peak_rss_mb": _rss_mb(), "loaded_rss_mb": loaded_rss}))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(mode: str, case: str, teacher: Path, data: Path, out: Path) -> dict[str, float]:
    command = [
        sys.executable, __file__, "--child", mode, "--case", case, "--teacher", str(teacher),
        "--data", str(data), "--out", str(out / f"cache-{case}"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, env=os.environ)
    if done.returncode != 0:
        sys.exit(f"{mode} {case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(case: str, out: Path, texts: int, rounds: int) -> dict[str, Any]:
    spec = CASES[case]
    teacher = build_teacher(spec["family"], out)
    data = build_corpus(out, case, texts, spec["max_length"] + 8, spec["family"] == "bert")
    runs: dict[str, list[dict[str, float]]] = {"forward": [], "precompute": []}
    for _ in range(rounds):
        for mode in ("forward", "precompute"):
            runs[mode].append(run_child(mode, case, teacher, data, out))
            print(f"  {case} {mode}: {runs[mode][-1]}", flush=True)
    median = {
        mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in runs.items()
    }
    forward, pre = median["forward"], median["precompute"]
    return {
        "case": case, **spec, "texts": texts, "rounds": rounds, "runs": runs,
        "speed_ratio": forward["seconds"] / pre["seconds"],
        "peak_rss_ratio": pre["peak_rss_mb"] / forward["peak_rss_mb"],
        "pass_memory_ratio": (pre["peak_rss_mb"] - forward["loaded_rss_mb"])
        / max(forward["peak_rss_mb"] - forward["loaded_rss_mb"], 1.0),
    }  # fmt: skip


def block_timings(rows: int = 1024, vocab: int = 32000, k: int = 128) -> None:
    """Seconds of ``logsumexp`` and ``topk(k)`` over (rows, vocab) fp32 logits taken in blocks
    of 8..512 rows, and of the 256 -> vocab matmul that makes those rows (``--blocks``)."""
    import torch

    torch.set_num_threads(2)
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0)) * 3

    def seconds(step: Any) -> float:
        step()  # warm-up
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    for block in (8, 32, 128, 512):
        blocks = [logits[i : i + block] for i in range(0, rows, block)]
        lse = seconds(lambda: [torch.logsumexp(b, 1, True) for b in blocks])  # noqa: B023
        top = seconds(lambda: [b.topk(k, 1) for b in blocks])  # noqa: B023
        print(f"blocks of {block} rows: logsumexp {lse:.2f} s, topk({k}) {top:.2f} s")
    hidden, weight = torch.randn(rows, 256), torch.randn(vocab, 256)
    print(f"matmul 256 -> {vocab}: {seconds(lambda: hidden @ weight.T):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="lm2048,lm1024,bert")
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-sizes"))
    parser.add_argument("--label", default="current", help="key of this checkout's results")
    parser.add_argument("--blocks", action="store_true", help="only time topk/logsumexp blocks")
    parser.add_argument("--child", choices=("forward", "precompute"), help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        child(args)
        return
    if args.blocks:
        block_timings()
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = [measure(c, out, args.texts, args.rounds) for c in args.cases.split(",")]
    for r in results:
        print(
            f"{args.label} {r['case']}: precompute/forward speed {r['speed_ratio']:.2f}, "
            f"peak RSS {r['peak_rss_ratio']:.2f}x, pass memory {r['pass_memory_ratio']:.2f}x"
        )
    path = out / "results.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored[args.label] = {"seconds": time.time() - started, "results": results}
    path.write_text(json.dumps(stored, indent=2))


if __name__ == "__main__":
    main()
