"""Load teachers and students: a local HF directory, an HF config file, or a factory.

Specs: a local HF directory (``config.json`` + ``*.safetensors``, ``tokenizer.json`` if present);
an HF config JSON file (fresh, seeded weights); ``"module:function"`` (no arguments, returns a
model or ``(model, adaptor)``). HF models are built with ``attn_implementation="eager"`` and
hidden states and attentions returned, as the matches need them; teachers are put in eval mode
with gradients off. Every load is local: no hub download ever happens.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from cachebrew.config import resolve_device as resolve_device  # the one resolver, re-exported
from cachebrew.errors import ConfigError
from cachebrew.files import sha256_files

logger = logging.getLogger(__name__)

# task name -> transformers auto class that builds that head
TASK_MODEL_CLASSES: dict[str, str] = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "masked_lm": "AutoModelForMaskedLM",
    "causal_lm": "AutoModelForCausalLM",
}
# architecture class-name suffix -> task (``BertForTokenClassification`` -> token_classification)
ARCHITECTURE_SUFFIXES: dict[str, str] = {
    "ForSequenceClassification": "sequence_classification",
    "ForTokenClassification": "token_classification",
    "ForMaskedLM": "masked_lm",
    "ForCausalLM": "causal_lm",
    "LMHeadModel": "causal_lm",
}
# heads whose logits are per position; their adaptor output carries ``logits_mask``
TOKEN_LEVEL_KINDS: frozenset[str] = frozenset({"token_classification", "masked_lm", "causal_lm"})
ROLES: tuple[str, ...] = ("teacher", "student")

_FACTORY_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# config keys that describe how we run the model, not what it is
_VOLATILE_CONFIG_KEYS = {"transformers_version", "output_hidden_states", "output_attentions"}
# conventional special-token spellings, used when a tokenizer.json comes without tokenizer_config.json
_SPECIAL_TOKEN_SPELLINGS: dict[str, tuple[str, ...]] = {
    "unk_token": ("[UNK]", "<unk>"),
    "pad_token": ("[PAD]", "<pad>"),
    "cls_token": ("[CLS]", "<s>"),
    "sep_token": ("[SEP]", "</s>"),
    "mask_token": ("[MASK]", "<mask>"),
}

# adaptor key -> HF output key
_OUTPUT_KEYS = {
    "logits": "logits",
    "hidden": "hidden_states",
    "attention": "attentions",
    "losses": "loss",
}
Adaptor = Callable[[Any, Any], dict[str, Any]]


@dataclass
class LoadedModel:
    """A model ready for precompute or distill.

    Attributes:
        model: the ``torch.nn.Module``.
        adaptor: ``(batch, outputs) -> dict`` with cachebrew's adaptor keys.
        kind: one of ``TASK_MODEL_CLASSES`` or ``"custom"`` (factory models of unknown type).
        tokenizer: the tokenizer saved next to the weights, or None.
        identity: what the cache manifest records: ``class``, ``kind``, ``config_sha256``,
            ``weights_sha256``, ``weights_hash_of`` (``"file"``: the safetensors bytes;
            ``"state_dict"``: the tensors, for fresh or partly fresh weights), ``fresh_head``,
            ``tokenizer_sha256`` and ``source``.
    """

    model: torch.nn.Module
    adaptor: Adaptor
    kind: str
    tokenizer: Any = None
    identity: dict[str, Any] = field(default_factory=dict)


def load_model(
    spec: str | Path,
    *,
    task: str | None = None,
    num_labels: int | None = None,
    role: str = "teacher",
    seed: int = 0,
) -> LoadedModel:
    """Load a teacher or student from a directory, a config file or a factory.

    Args:
        spec: HF directory, HF config JSON file, or ``"module:function"``.
        task: head to build; overrides ``architectures`` (a checkpoint without that head gets a
            fresh one, logged); needed when ``architectures`` names no head (``BertModel``).
        num_labels: label count of a fresh classification head (a checkpoint head of another
            size is an error).
        role: ``"teacher"`` (eval mode, no gradients) or ``"student"`` (train mode).
        seed: seeds fresh weights; the global RNG state is left as it was.

    Raises:
        ConfigError: missing path, unknown task or role, no head known, factory import failure,
            label-count mismatch.
    """
    problems = []
    if task is not None and task not in TASK_MODEL_CLASSES:
        problems.append(f"unknown task {task!r}; choose one of {sorted(TASK_MODEL_CLASSES)}")
    if role not in ROLES:
        problems.append(f"unknown role {role!r}; choose one of {list(ROLES)}")
    if problems:
        raise ConfigError(problems)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loaded = _load_from_spec(spec, task, num_labels)
    if role == "teacher":
        loaded.model.eval().requires_grad_(False)
    else:
        loaded.model.train()
    return loaded


def _load_from_spec(spec: str | Path, task: str | None, num_labels: int | None) -> LoadedModel:
    path = Path(spec)
    if isinstance(spec, str) and _FACTORY_SPEC.match(spec) and not path.exists():
        return _load_factory(spec)
    if path.is_dir():
        return _load_directory(path, task, num_labels)
    if path.is_file():
        return _load_config_file(path, task, num_labels)
    raise ConfigError(
        f"model spec {str(spec)!r}: no such file or directory (expected an HF directory, "
        "an HF config JSON file or 'module:function')"
    )


def _load_directory(path: Path, task: str | None, num_labels: int | None) -> LoadedModel:
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise ConfigError(f"model directory {path} has no config.json")
    weight_files = sorted(path.glob("*.safetensors"))
    if not weight_files:
        raise ConfigError(
            f"model directory {path} has no *.safetensors weights (pickle not loaded)"
        )
    config = AutoConfig.from_pretrained(path)
    kind, model_class = _prepare_config(config, task, num_labels, source=path)
    model, info = model_class.from_pretrained(
        path,
        config=config,
        attn_implementation="eager",
        output_loading_info=True,
        ignore_mismatched_sizes=task is not None,
    )
    mismatched = {k if isinstance(k, str) else k[0] for k in info["mismatched_keys"]}
    fresh = sorted(set(info["missing_keys"]) | mismatched)
    if fresh:
        logger.info("%s: fresh weights for %s (not in the checkpoint)", path, fresh)
    weights_sha, hash_of = (
        (_hash_state_dict(model), "state_dict") if fresh else (sha256_files(weight_files), "file")
    )
    tokenizer = _tokenizer_next_to(path)
    tokenizer_sha = sha256_files([path / "tokenizer.json"]) if tokenizer else None
    identity = _identity(model, kind, path, (weights_sha, hash_of), bool(fresh), tokenizer_sha)
    return LoadedModel(model, partial(default_adaptor, kind=kind), kind, tokenizer, identity)


def _load_config_file(path: Path, task: str | None, num_labels: int | None) -> LoadedModel:
    from transformers import AutoConfig

    try:  # json.JSONDecodeError and an unknown model_type are ValueErrors
        values = json.loads(path.read_text())
        config = AutoConfig.for_model(values.pop("model_type"), **values)
    except (ValueError, KeyError, AttributeError, TypeError) as error:
        raise ConfigError(
            f"{path} is not an HF config JSON with a known 'model_type': "
            f"{type(error).__name__}: {error}"
        ) from error
    kind, model_class = _prepare_config(config, task, num_labels, source=path)
    model = model_class.from_config(config, attn_implementation="eager")
    identity = _identity(model, kind, path, (_hash_state_dict(model), "state_dict"), True)
    return LoadedModel(model, partial(default_adaptor, kind=kind), kind, None, identity)


def _prepare_config(
    config: Any, task: str | None, num_labels: int | None, source: Path
) -> tuple[str, Any]:
    """Pick the head, set output flags and label count; return (kind, auto class)."""
    import transformers

    kind = task or _kind_from_architectures(config.architectures)
    if kind is None:
        raise ConfigError(
            f"{source}: architectures {config.architectures} name no known head; "
            f"pass task= one of {sorted(TASK_MODEL_CLASSES)}"
        )
    checkpoint_kind = _kind_from_architectures(config.architectures)
    if checkpoint_kind is not None and checkpoint_kind != kind:
        logger.info(
            "%s: building a fresh %s head (checkpoint has %s)", source, kind, checkpoint_kind
        )
    if num_labels is not None and num_labels != config.num_labels:
        if checkpoint_kind == kind and source.is_dir():
            raise ConfigError(
                f"{source}: the checkpoint's {kind} head has {config.num_labels} labels, "
                f"num_labels={num_labels} asked; drop num_labels or pass another task"
            )
        config.num_labels = num_labels
    config.output_hidden_states = True
    config.output_attentions = True
    return kind, getattr(transformers, TASK_MODEL_CLASSES[kind])


def _kind_from_architectures(architectures: Iterable[str] | None) -> str | None:
    for name in architectures or ():
        for suffix, kind in ARCHITECTURE_SUFFIXES.items():
            if name.endswith(suffix):
                return kind
    return None


def _load_factory(spec: str) -> LoadedModel:
    module_name, function_name = spec.split(":")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"cannot import model factory {spec!r}: {type(error).__name__}: {error}"
        ) from error
    result = factory()
    model, adaptor = result if isinstance(result, tuple) and len(result) == 2 else (result, None)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(
            f"model factory {spec!r} returned {type(model).__name__}; "
            "expected a torch.nn.Module or (module, adaptor)"
        )
    kind = _kind_from_architectures([type(model).__name__]) or "custom"
    adaptor = adaptor or partial(default_adaptor, kind=kind)
    identity = _identity(model, kind, spec, (_hash_state_dict(model), "state_dict"), False)
    return LoadedModel(model, adaptor, kind, None, identity)


def _identity(
    model: torch.nn.Module,
    kind: str,
    source: Path | str,
    weights: tuple[str, str],
    fresh: bool,
    tokenizer_sha: str | None = None,
) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {
        "class": type(model).__name__,
        "kind": kind,
        "config_sha256": _hash_config(config) if hasattr(config, "to_dict") else None,
        "weights_sha256": weights[0],
        "weights_hash_of": weights[1],
        "fresh_head": fresh,
        "tokenizer_sha256": tokenizer_sha,
        "source": str(source),
    }


def _hash_config(config: Any) -> str:
    values = {
        key: value
        for key, value in config.to_dict().items()
        if key not in _VOLATILE_CONFIG_KEYS and not key.startswith("_")
    }
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _hash_state_dict(model: torch.nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def default_adaptor(batch: Any, outputs: Any, *, kind: str | None = None) -> dict[str, Any]:
    """Map HF model outputs to cachebrew's adaptor keys (TextBrewer's vocabulary).

    Args:
        batch: the Mapping the model was called with (``input_ids``, ``attention_mask`` (B, L),
            optional ``labels``); tuple batches give no ``inputs_mask`` / ``labels``.
        outputs: an HF ``ModelOutput`` or a Mapping (``logits``, ``hidden_states``, ...).
        kind: the head (``LoadedModel.kind``); decides ``logits_mask`` and ``labels``.

    Returns:
        ``logits`` (B, C) or (B, L, C); ``hidden``: num_layers + 1 tensors (B, L, D), ``hidden[0]``
        the embeddings as in TextBrewer; ``attention``: num_layers tensors (B, H, L, L);
        ``inputs_mask`` (B, L); ``losses``: the model's loss when computed; ``labels`` for
        sequence classification. Token-level heads also give ``logits_mask`` = attention mask:
        KD on every real position (TextBrewer's NER example, DistilBERT), which needs no labels
        and is the student's mask too when the tokenizer is shared. Their ``labels`` (not for
        causal LM: shifted inside the model) are pre-selected with it to (N_sel,), like the
        logits; -100 (specials, later sub-tokens) must be ignored.

    Note:
        HF returns attention **probabilities** (post-softmax, masked keys 0), not the pre-softmax
        scores TextBrewer's example models returned. ``attention_mse(_sum)`` work on them as they
        are (the ``<= -1e-3`` clamp is a no-op); ``attention_ce(_mean)`` softmax their input, so
        they compare softmax(probabilities), a flatter target. Use a custom adaptor for scores.
    """
    if not isinstance(outputs, Mapping):
        raise ConfigError(
            f"default_adaptor needs dict-like model outputs, got {type(outputs).__name__}; "
            "pass your own adaptor for tuple outputs"
        )
    result: dict[str, Any] = {}
    for key, output_key in _OUTPUT_KEYS.items():
        if outputs.get(output_key) is not None:
            result[key] = outputs[output_key]
    if isinstance(batch, Mapping):
        result.update(_batch_masks_and_labels(batch, kind))
    return result


def _batch_masks_and_labels(batch: Mapping[str, Any], kind: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    mask = batch.get("attention_mask")
    if mask is None and batch.get("input_ids") is not None:
        mask = torch.ones_like(batch["input_ids"])  # what HF assumes without a mask
    if mask is not None:
        result["inputs_mask"] = mask
    labels = batch.get("labels")
    if kind in TOKEN_LEVEL_KINDS and mask is not None:
        result["logits_mask"] = mask
        if labels is not None and kind != "causal_lm":
            result["labels"] = labels[mask.bool()]
    elif labels is not None and kind == "sequence_classification":
        result["labels"] = labels
    return result


def load_tokenizer(path_or_dir: str | Path) -> Any:
    """Load a fast tokenizer from ``tokenizer.json`` (a directory holding it, or the file).

    With ``tokenizer_config.json`` beside it, ``AutoTokenizer`` reads the special tokens;
    otherwise they are taken from the conventional spellings found in the vocabulary.

    Raises:
        ConfigError: no ``tokenizer.json`` (``vocab.txt`` alone is not supported: transformers 5
            maps every token to [UNK] when a BERT tokenizer is built from it), or the loaded
            tokenizer does not reproduce ``tokenizer.json``'s ids.
    """
    path = Path(path_or_dir)
    json_path = path / "tokenizer.json" if path.is_dir() else path
    if not json_path.is_file():
        hint = " (vocab.txt found)" if (json_path.parent / "vocab.txt").is_file() else ""
        raise ConfigError(
            f"no tokenizer.json at {json_path}{hint}; vocab.txt alone is not supported because "
            "transformers 5 maps every token to [UNK] when built from it. Save a tokenizer.json "
            "(tokenizers.Tokenizer.save) next to it"
        )
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    raw = Tokenizer.from_file(str(json_path))
    if (json_path.parent / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(json_path.parent)
    else:
        vocab = raw.get_vocab()
        specials = {
            name: next((s for s in spellings if s in vocab), None)
            for name, spellings in _SPECIAL_TOKEN_SPELLINGS.items()
        }
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(json_path), **{k: v for k, v in specials.items() if v}
        )
    _check_tokenizer_matches(tokenizer, raw, json_path)
    return tokenizer


def _check_tokenizer_matches(tokenizer: Any, raw: Any, json_path: Path) -> None:
    words = [w for w in raw.get_vocab() if w.isalpha() and not w.startswith("##")][:8]
    probe = " ".join(sorted(words))
    if tokenizer(probe)["input_ids"] != raw.encode(probe).ids:
        raise ConfigError(
            f"the tokenizer loaded from {json_path.parent} does not reproduce {json_path}'s ids "
            "(tokenizer_config.json may name a class that ignores tokenizer.json)"
        )


def _tokenizer_next_to(directory: Path) -> Any:
    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory)
    logger.warning("%s has no tokenizer.json; LoadedModel.tokenizer is None", directory)
    return None


def count_parameters(model: torch.nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    unique = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in unique.values())


def init_from_teacher(
    student: torch.nn.Module,
    teacher: torch.nn.Module | LoadedModel | str | Path,
    layers: list[int],
) -> torch.nn.Module:
    """Copy a BERT-family teacher's embeddings and chosen layers into a student, in place.

    Student encoder layer ``i`` gets teacher layer ``layers[i]`` (0-based encoder layers, so
    not the ``hidden`` index, which is shifted by the embeddings). Heads and pooler stay as they are.

    Args:
        student: BERT-family model (``base_model.embeddings``, ``base_model.encoder.layer``).
        teacher: a model, a ``LoadedModel`` or a local HF directory (loaded as its backbone).
        layers: one teacher layer index per student layer.

    Returns:
        the student.

    Raises:
        ConfigError: not BERT-family, different hidden size or embedding shapes, wrong number
            of layers, or a layer index out of range (all problems at once).
    """
    teacher_model = _teacher_backbone(teacher)
    student_emb, student_layers = _bert_parts(student, "student")
    teacher_emb, teacher_layers = _bert_parts(teacher_model, "teacher")
    problems = _shape_problems(student_emb, teacher_emb, "embeddings")
    if len(layers) != len(student_layers):
        problems.append(
            f"layers has {len(layers)} entries; the student has {len(student_layers)} layers"
        )
    bad = [i for i in layers if not 0 <= i < len(teacher_layers)]
    if bad:
        problems.append(f"teacher layer indices {bad} out of range [0, {len(teacher_layers) - 1}]")
    elif student_layers and not problems:
        problems += _shape_problems(student_layers[0], teacher_layers[layers[0]], "layer")
    if problems:
        raise ConfigError(problems)
    with torch.no_grad():
        student_emb.load_state_dict(teacher_emb.state_dict())
        for student_index, teacher_index in enumerate(layers):
            student_layers[student_index].load_state_dict(
                teacher_layers[teacher_index].state_dict()
            )
    logger.info("initialised student from teacher embeddings and layers %s", layers)
    return student


def _teacher_backbone(teacher: torch.nn.Module | LoadedModel | str | Path) -> torch.nn.Module:
    if isinstance(teacher, LoadedModel):
        return teacher.model
    if isinstance(teacher, torch.nn.Module):
        return teacher
    path = Path(teacher)
    if not (path / "config.json").is_file():
        raise ConfigError(f"teacher {str(teacher)!r} is not an HF directory with config.json")
    from transformers import AutoModel

    return AutoModel.from_pretrained(path)


def _bert_parts(model: torch.nn.Module, role: str) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if embeddings is None or layers is None:
        raise ConfigError(
            f"{role} {type(model).__name__} is not BERT-family "
            "(needs base_model.embeddings and base_model.encoder.layer)"
        )
    return embeddings, layers


def _shape_problems(
    student_part: torch.nn.Module, teacher_part: torch.nn.Module, what: str
) -> list[str]:
    student_state, teacher_state = student_part.state_dict(), teacher_part.state_dict()
    problems = [
        f"{what}.{name}: student {tuple(student_state[name].shape)} vs teacher "
        f"{tuple(tensor.shape)} (hidden sizes must match)"
        for name, tensor in teacher_state.items()
        if name in student_state and student_state[name].shape != tensor.shape
    ]
    missing = sorted(set(teacher_state) ^ set(student_state))
    if missing:
        problems.append(f"{what}: parameter names differ between student and teacher: {missing}")
    return problems


def adamw_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: no weight decay on biases and LayerNorm weights (BERT's recipe).

    Every trainable parameter of fewer than 2 dimensions (biases, norm weights) goes to the
    ``weight_decay=0`` group; empty groups are left out.
    """
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]
