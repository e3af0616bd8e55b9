"""Build the tiny pipeline's teacher, offline, in seconds.

1. Train a lowercase WordPiece tokenizer (BERT specials, pair template) on the corpus texts.
2. Build a fresh BERT classifier from ``teacher.json`` (seeded).
3. Fine-tune it on the corpus labels with cachebrew's ``BasicTrainer``.
4. Save weights (safetensors), ``tokenizer.json`` and ``tokenizer_config.json`` to ``--out``.

    python pipelines/tiny/make_teacher.py --config tiny/teacher.json --data tiny/train.jsonl \
        --out out/tiny/teacher
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from cachebrew.config import TrainingConfig
from cachebrew.corpus import pad_batch, read_corpus, tokenize_records
from cachebrew.distill import BasicTrainer
from cachebrew.models import load_tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(texts: list[str], out: Path, vocab_size: int) -> None:
    """A WordPiece vocabulary of the corpus's words plus single characters (so unseen words
    split into pieces); writes tokenizer.json and tokenizer_config.json into ``out``.

    Built directly instead of with ``WordPieceTrainer``, whose merges among tied pairs change
    from run to run: the same corpus must always give the same ids, hence the same teacher.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = {
        word
        for text in texts
        for word, _span in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    }
    chars = sorted({c for word in words for c in word})
    pieces = SPECIALS + chars + [f"##{c}" for c in chars] + sorted(words - set(chars))
    if len(pieces) > vocab_size:
        raise SystemExit(f"{len(pieces)} tokens do not fit vocab_size {vocab_size}")
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(pieces)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    specials = dict(zip(["pad", "unk", "cls", "sep", "mask"], SPECIALS, strict=True))
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64}
    config.update({f"{name}_token": token for name, token in specials.items()})
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def build_teacher(config_path: Path, vocab_size: int, seed: int) -> torch.nn.Module:
    """A fresh, seeded ``BertForSequenceClassification`` from an HF config JSON."""
    from transformers import AutoConfig, BertForSequenceClassification

    values = json.loads(config_path.read_text())
    if vocab_size > values["vocab_size"]:
        raise SystemExit(
            f"{config_path}: vocab_size {values['vocab_size']} < tokenizer {vocab_size}"
        )
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(seed)
    return BertForSequenceClassification(config)


def fine_tune(model: torch.nn.Module, items: list[dict], epochs: int, seed: int) -> None:
    """Supervised training with cachebrew's BasicTrainer (loss = the model's CE loss)."""
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        items,
        batch_size=16,
        shuffle=True,
        generator=generator,
        collate_fn=lambda b: pad_batch(b, 0),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    with tempfile.TemporaryDirectory() as scratch:
        config = TrainingConfig(
            output_dir=scratch, seed=seed, device="cpu", ckpt_epoch_frequency=epochs
        )
        trainer = BasicTrainer(config, model, lambda batch, outputs: {"losses": outputs.loss})
        trainer.train(optimizer, loader, num_epochs=epochs, max_grad_norm=1.0)


@torch.no_grad()
def accuracy(model: torch.nn.Module, items: list[dict]) -> float:
    """Accuracy of the teacher on tokenized, labelled items."""
    model.eval()
    batch = pad_batch(items, 0)
    labels = batch.pop("labels")
    return float((model(**batch).logits.argmax(-1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="HF config JSON of the teacher")
    parser.add_argument("--data", type=Path, required=True, help="labelled jsonl (text, label, id)")
    parser.add_argument("--dev", type=Path, help="labelled jsonl to report the accuracy on")
    parser.add_argument("--out", type=Path, required=True, help="teacher directory to write")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    records = list(read_corpus(args.data, label_field="label", id_field="id"))
    train_tokenizer([str(r.text) for r in records], args.out, args.vocab_size)
    tokenizer = load_tokenizer(args.out)
    items = tokenize_records(records, tokenizer, max_length=32)
    model = build_teacher(args.config, len(tokenizer), args.seed)
    fine_tune(model, items, args.epochs, args.seed)
    model.save_pretrained(args.out)  # safetensors; tokenizer files are already there
    scores = {"train_accuracy": accuracy(model, items)}
    if args.dev is not None:
        dev = list(read_corpus(args.dev, label_field="label", id_field="id"))
        scores["dev_accuracy"] = accuracy(model, tokenize_records(dev, tokenizer, max_length=32))
    (args.out / "teacher_metrics.json").write_text(json.dumps(scores, indent=2) + "\n")
    print(f"teacher {args.out}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
