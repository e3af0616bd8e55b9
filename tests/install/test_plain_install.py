"""`pip install .` with no extras gives a CLI that runs Hugging Face teachers (issue 12).

Slow (a fresh virtual environment, torch from the local CPU wheel, the rest from the package
index): run by `make test-slow`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=1800, **kwargs)  # type: ignore[call-overload]


def test_plain_install_runs_a_hugging_face_teacher(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    torch_done = _run([py, "-m", "pip", "install", "-q", "torch==2.13.0"])
    assert torch_done.returncode == 0, torch_done.stderr[-2000:]
    installed = _run([py, "-m", "pip", "install", "-q", str(ROOT)])  # no extras
    assert installed.returncode == 0, installed.stderr[-2000:]

    version = _run([str(env_dir / "bin" / "cachebrew"), "--version"])
    assert version.returncode == 0 and version.stdout.startswith("cachebrew "), version.stderr

    # A tiny BERT teacher from an HF config JSON and a tokenizer.json, both built here.
    script = tmp_path / "make_teacher.py"
    script.write_text(
        "import sys, json\n"
        "from tokenizers import Tokenizer, models, pre_tokenizers\n"
        "from transformers import BertConfig, BertForSequenceClassification\n"
        "out = sys.argv[1]\n"
        "vocab = {w: i for i, w in enumerate(['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'good', 'bad', 'film'])}\n"
        "tok = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))\n"
        "tok.pre_tokenizer = pre_tokenizers.Whitespace()\n"
        "cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,\n"
        "    num_attention_heads=2, intermediate_size=32, max_position_embeddings=32, num_labels=2)\n"
        "BertForSequenceClassification(cfg).save_pretrained(out)\n"
        "tok.save(out + '/tokenizer.json')\n"
    )
    teacher = tmp_path / "teacher"
    made = _run([py, str(script), str(teacher)])
    assert made.returncode == 0, made.stderr[-2000:]
    corpus = tmp_path / "train.jsonl"
    rows = [
        {"id": f"r{i}", "text": t, "label": i % 2}
        for i, t in enumerate(["good film", "bad film"] * 4)
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))

    cache = tmp_path / "cache"
    done = _run(
        [str(env_dir / "bin" / "cachebrew"), "precompute", "--teacher", str(teacher),
         "--data", str(corpus), "--out", str(cache), "--label-field", "label", "--quiet"],
        env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert (cache / "manifest.json").is_file()
    assert sys.executable != py  # the check ran in the fresh environment, not this one
