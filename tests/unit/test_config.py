"""Tests of cachebrew.config: TextBrewer's defaults, round trips, validation, immutability."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
import textbrewer
import textbrewer.presets
import torch
import yaml

from cachebrew import presets
from cachebrew.config import (
    DistillationConfig,
    IntermediateMatch,
    TrainingConfig,
    resolve_device,
)
from cachebrew.errors import ConfigError
from cachebrew.validation import apply_overrides, load_yaml_mapping


def hidden_match(**overrides: Any) -> dict[str, Any]:
    match = {"layer_T": 4, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
    return {**match, **overrides}


def rich_distillation_kwargs() -> dict[str, Any]:
    return {
        "temperature": 8,
        "temperature_scheduler": ["flsw", {"beta": 1, "gamma": 2}],
        "hard_label_weight": 0.5,
        "kd_loss_weight_scheduler": "linear_decay",
        "kd_loss_type": "mse",
        "probability_shift": True,
        "kd_t2_scale": True,
        "intermediate_matches": [
            hidden_match(proj=["linear", 384, 768, {"lr": 1e-3}]),
            hidden_match(layer_T=[0, 4], layer_S=[0, 1], loss="nst", proj=["tanh", 384, 768]),
            {
                "layer_T": 8,
                "layer_S": 2,
                "feature": "attention",
                "loss": "attention_mse",
                "weight": 2,
            },
        ],
    }


def textbrewer_defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.name != "self"}


# --------------------------------------------------------------------------------- defaults


def test_distillation_defaults_equal_textbrewer() -> None:
    ours = DistillationConfig()
    theirs = textbrewer_defaults(textbrewer.DistillationConfig)
    assert {f.name for f in dataclasses.fields(ours)} == set(theirs) | {
        "kd_t2_scale",
        "textbrewer_compat",
    }
    for name, default in theirs.items():
        expected = () if name == "intermediate_matches" else default  # TextBrewer: None -> []
        assert getattr(ours, name) == expected, name
    assert ours.kd_t2_scale is False and ours.textbrewer_compat is False
    instance = textbrewer.DistillationConfig()
    for name in ("temperature", "hard_label_weight", "kd_loss_type", "kd_loss_weight"):
        assert getattr(ours, name) == getattr(instance, name)
    assert ours.temperature_scheduler_fn() is None and instance.temperature_scheduler is None


def test_training_defaults_equal_textbrewer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ours = TrainingConfig()
    assert not (tmp_path / "saved_models").exists()  # not created at construction
    theirs = textbrewer_defaults(textbrewer.TrainingConfig)
    assert {f.name for f in dataclasses.fields(ours)} == set(theirs) | {
        "seed",
        "bf16",
        "gradient_checkpointing",
    }
    for name, default in theirs.items():
        expected = "auto" if name == "device" else default  # documented: 'auto', not 'cuda'
        assert getattr(ours, name) == expected, name
    assert ours.seed is None and ours.bf16 is False
    instance = textbrewer.TrainingConfig()
    for name in theirs:
        if name != "device":
            assert getattr(ours, name) == getattr(instance, name), name


# ------------------------------------------------------------------------------ round trips


def test_textbrewer_style_construction_normalises_lists() -> None:
    config = DistillationConfig(**rich_distillation_kwargs())
    first, second, third = config.intermediate_matches
    assert isinstance(config.intermediate_matches, tuple)
    assert config.temperature_scheduler == ("flsw", {"beta": 1, "gamma": 2})
    assert first.proj == ("linear", 384, 768, {"lr": 1e-3})
    assert second.layer_T == (0, 4) and second.layer_S == (0, 1)
    assert second.proj == ("tanh", 384, 768, {})
    assert third.proj is None and third.weight == 2.0
    assert third.loss_fn() is presets.MATCH_LOSS_MAP["attention_mse"]
    assert config.kd_loss_fn() is presets.KD_LOSS_MAP["mse"]


def test_round_trip_through_dict_json_and_yaml(tmp_path: Path) -> None:
    config = DistillationConfig(**rich_distillation_kwargs())
    data = config.to_dict()
    assert DistillationConfig.from_dict(data) == config
    (tmp_path / "d.json").write_text(json.dumps(data))
    assert DistillationConfig.from_json_file(tmp_path / "d.json") == config
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(data))
    assert DistillationConfig.from_yaml(str(tmp_path / "d.yaml")) == config


def test_training_round_trip(tmp_path: Path) -> None:
    config = TrainingConfig(
        gradient_accumulation_steps=2,
        ckpt_steps=100,
        log_dir=tmp_path,
        device=torch.device("cpu"),
        bf16=True,
        seed=7,
    )
    assert config.log_dir == str(tmp_path) and config.device == "cpu"
    assert TrainingConfig.from_dict(config.to_dict()) == config
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(config.to_dict()))
    assert TrainingConfig.from_yaml(tmp_path / "t.yaml") == config


def test_intermediate_match_round_trip_and_str() -> None:
    match = IntermediateMatch(**hidden_match(proj=["relu", 4, 8]))
    assert IntermediateMatch.from_dict(match.to_dict()) == match
    assert "loss : hidden_mse" in str(match)
    assert "temperature : 4.0" in str(DistillationConfig())
    assert "device : auto" in str(TrainingConfig())


@pytest.mark.parametrize(
    "name", ["temperature_scheduler", "hard_label_weight_scheduler", "kd_loss_weight_scheduler"]
)
def test_none_scheduler_need_not_be_interned(name: str, tmp_path: Path) -> None:
    not_interned = "".join(["no", "ne"])
    assert not_interned is not sys.intern("none")  # the PyPI bug compared identities
    assert getattr(DistillationConfig(**{name: not_interned}), name) == "none"
    assert getattr(DistillationConfig(**{name: None}), name) == "none"
    (tmp_path / "c.json").write_text(json.dumps({name: "none"}))
    config = DistillationConfig.from_json_file(tmp_path / "c.json")
    assert getattr(config, name) == "none"
    assert config.kd_loss_weight_scheduler_fn() is None
    assert config.hard_label_weight_scheduler_fn() is None
    assert config.temperature_scheduler_fn() is None


# ---------------------------------------------------------------------------- bad configs

BAD_DISTILLATION = [
    ({"kd_loss_type": "kld"}, r"kd_loss_type: unknown KD loss 'kld'; choose one of \['ce', 'kl'"),
    ({"temperature": 0}, r"temperature: expected a number > 0, got 0"),
    ({"temperature": True}, r"temperature: expected a number > 0, got True"),
    ({"kd_loss_weight": "1"}, r"kd_loss_weight: expected a finite number, got '1'"),
    ({"hard_label_weight": float("nan")}, r"hard_label_weight: expected a finite number"),
    ({"probability_shift": 1}, r"probability_shift: expected true or false, got 1"),
    ({"kd_t2_scale": "yes"}, r"kd_t2_scale: expected true or false"),
    (
        {"kd_loss_weight_scheduler": "cosine"},
        r"kd_loss_weight_scheduler: unknown weight scheduler 'cosine'; "
        r"choose one of \['linear_decay', 'linear_growth', 'none'\]",
    ),
    ({"hard_label_weight_scheduler": ["linear_decay"]}, r"hard_label_weight_scheduler: unknown"),
    (
        {"temperature_scheduler": "sqrt"},
        r"temperature_scheduler: unknown temperature scheduler 'sqrt'; "
        r"choose one of \['constant', 'cwsm', 'flsw', 'none'\]",
    ),
    (
        {"temperature_scheduler": "flsw"},
        r"temperature_scheduler: 'flsw' needs parameters .*use \['flsw', beta, gamma\]",
    ),
    ({"temperature_scheduler": "cwsm"}, r"'cwsm' needs parameters .*use \['cwsm', beta\]"),
    ({"temperature_scheduler": ["flsw", 1]}, r"\['flsw', 1\] does not fit the parameters"),
    ({"temperature_scheduler": ["cwsm", 1, 2]}, r"\['cwsm', 1, 2\] does not fit"),
    ({"temperature_scheduler": ["cwsm", {"alpha": 1}]}, r"unexpected keyword argument 'alpha'"),
    ({"temperature_scheduler": 3}, r"temperature_scheduler: expected 'none', a scheduler name"),
    ({"intermediate_matches": {"layer_T": 1}}, r"intermediate_matches: expected a list"),
    ({"intermediate_matches": [3]}, r"intermediate_matches\[0\]: expected a mapping"),
]

BAD_MATCH = [
    (
        {"loss": "hidden_mae"},
        r"intermediate_matches\[0\]\.loss: unknown match loss 'hidden_mae'; "
        r"choose one of \['attention_ce', .*'pkd'\]",
    ),
    (
        {"feature": "hiddens"},
        r"intermediate_matches\[0\]\.feature: unknown feature 'hiddens'; "
        r"choose one of \['attention', 'hidden'\]",
    ),
    ({"weight": None}, r"intermediate_matches\[0\]\.weight: expected a finite number, got None"),
    ({"layer_T": -1}, r"\.layer_T: loss 'hidden_mse' takes one layer index \(int >= 0\), got -1"),
    ({"layer_S": [1, 2]}, r"\.layer_S: loss 'hidden_mse' takes one layer index .*only \['fsp'"),
    ({"layer_S": True}, r"\.layer_S: loss 'hidden_mse' takes one layer index"),
    ({"loss": "fsp"}, r"\.layer_T: loss 'fsp' compares two layers; expected a pair like \[0, 6\]"),
    ({"loss": "mmd", "layer_T": [0, 1], "layer_S": [0, 1, 2]}, r"\.layer_S: loss 'mmd' compares"),
    (
        {"loss": "unknown", "layer_T": [0, 1]},
        r"\.layer_S: must have the same form as layer_T \(\[0, 1\]\), got 1",
    ),
    (
        {"proj": "linear"},
        r"\.proj: expected \[kind, dim_S, dim_T\] or \[kind, dim_S, dim_T, \{options\}\]",
    ),
    ({"proj": ["linear", 4]}, r"\.proj: expected \[kind, dim_S, dim_T\]"),
    (
        {"proj": ["gelu", 4, 8]},
        r"\.proj\[0\]: unknown projection kind 'gelu'; choose one of \['linear', 'relu', 'tanh'\]",
    ),
    (
        {"proj": ["linear", 0, 8]},
        r"\.proj\[1\]: dim_S \(student feature size\) must be a positive int, got 0",
    ),
    (
        {"proj": ["linear", 4, 8.0]},
        r"\.proj\[2\]: dim_T \(teacher feature size\) must be a positive int",
    ),
    (
        {"proj": ["linear", 4, 8, 1e-3]},
        r"\.proj\[3\]: expected a dict of optimizer param-group options",
    ),
    ({"proj": ["linear", 4, 8, {"params": []}]}, r"\.proj\[3\]: must not set 'params'"),
    (
        {"layer_t": 4},
        r"intermediate_matches\[0\]: unknown key 'layer_t' \(did you mean 'layer_T'\?\)",
    ),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_DISTILLATION)
def test_bad_distillation_config(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DistillationConfig(**kwargs)


@pytest.mark.parametrize(("overrides", "message"), BAD_MATCH)
def test_bad_intermediate_match(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DistillationConfig.from_dict({"intermediate_matches": [hidden_match(**overrides)]})


def test_missing_match_keys_and_standalone_match() -> None:
    with pytest.raises(
        ConfigError, match=r"intermediate_matches\[0\]: missing required key\(s\) \['weight'\]"
    ):
        DistillationConfig(
            intermediate_matches=[{k: v for k, v in hidden_match().items() if k != "weight"}]
        )
    with pytest.raises(ConfigError, match=r"^loss: unknown match loss 'x'"):
        IntermediateMatch(layer_T=1, layer_S=1, weight=1, loss="x", feature="hidden")


BAD_TRAINING = [
    (
        {"gradient_accumulation_steps": 0},
        r"gradient_accumulation_steps: expected an integer >= 1, got 0",
    ),
    ({"ckpt_frequency": 1.5}, r"ckpt_frequency: expected an integer >= 1, got 1.5"),
    ({"ckpt_epoch_frequency": True}, r"ckpt_epoch_frequency: expected an integer >= 1, got True"),
    ({"ckpt_steps": 0}, r"ckpt_steps: expected an integer >= 1, got 0"),
    ({"fp16": True, "bf16": True}, r"fp16, bf16: both are true; choose at most one"),
    ({"fp16": "true"}, r"fp16: expected true or false"),
    ({"device": "gpu"}, r"device: cannot parse 'gpu'"),
    ({"device": 0}, r"device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, got 0"),
    ({"local_rank": -2}, r"local_rank: expected an integer >= -1, got -2"),
    ({"seed": "1"}, r"seed: expected None or an integer in \[0, 2\*\*32\), got '1'"),
    ({"seed": -1}, r"seed: expected None or an integer"),
    ({"output_dir": None}, r"output_dir: expected a directory path, got None"),
    ({"log_dir": 3}, r"log_dir: expected None or a directory path, got 3"),
    (
        {"fp16_opt_level": "O4"},
        r"fp16_opt_level: unknown level 'O4'; choose one of \['O0', 'O1', 'O2', 'O3'\]",
    ),
    (
        {"data_parallel": True, "local_rank": 0},
        r"data_parallel: DataParallel and DDP \(local_rank=0\) are exclusive",
    ),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_TRAINING)
def test_bad_training_config(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainingConfig(**kwargs)


def test_unknown_top_level_key_suggests_closest() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'temprature' \(did you mean 'temperature'\?\); valid fields: \['temperature',",
    ):
        DistillationConfig.from_dict({"temprature": 8})
    with pytest.raises(ConfigError, match=r"unknown key 'fp_16' \(did you mean 'fp16'\?\)"):
        TrainingConfig.from_dict({"fp_16": True})


def test_every_problem_reported_at_once() -> None:
    bad = {
        "temprature": 8,
        "kd_loss_type": "kld",
        "temperature_scheduler": "flsw",
        "kd_loss_weight_scheduler": "cosine",
        "intermediate_matches": [
            hidden_match(),
            hidden_match(loss="hidden_mae", proj=["linear", 0, 8]),
            hidden_match(feature="hiddens", weight="1"),
        ],
    }
    with pytest.raises(ConfigError) as info:
        DistillationConfig.from_dict(bad)
    problems = info.value.problems
    assert len(problems) == 8, problems
    expected = [
        "unknown key 'temprature'",
        "kd_loss_type: unknown KD loss 'kld'",
        "temperature_scheduler: 'flsw' needs parameters",
        "kd_loss_weight_scheduler: unknown weight scheduler 'cosine'",
        "intermediate_matches[1].loss: unknown match loss 'hidden_mae'",
        "intermediate_matches[1].proj[1]: dim_S",
        "intermediate_matches[2].weight: expected a finite number, got '1'",
        "intermediate_matches[2].feature: unknown feature 'hiddens'",
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), fragment
    assert str(info.value).startswith("8 problems in the configuration:")


def test_every_training_problem_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        TrainingConfig(gradient_accumulation_steps=0, fp16=True, bf16=True, device="gpu", seed=-1)
    assert len(info.value.problems) == 4
    for name in ("gradient_accumulation_steps", "fp16, bf16", "device", "seed"):
        assert any(p.startswith(f"{name}:") for p in info.value.problems), name


# ------------------------------------------------------------------------------------ files


def test_file_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=f"{missing}: cannot read config file"):
        DistillationConfig.from_yaml(missing)
    with pytest.raises(ConfigError, match="missing.json: cannot read config file"):
        TrainingConfig.from_json_file(tmp_path / "missing.json")
    (tmp_path / "bad.yaml").write_text("temperature: [8\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        DistillationConfig.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text("{'temperature': 8}")
    with pytest.raises(ConfigError, match="bad.json: invalid JSON"):
        DistillationConfig.from_json_file(tmp_path / "bad.json")


def test_file_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list.yaml: the top level must be a mapping .*got list"):
        load_yaml_mapping(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="empty.yaml: .*got an empty document"):
        DistillationConfig.from_yaml(tmp_path / "empty.yaml")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ConfigError, match="list.json: the top level must be a mapping"):
        TrainingConfig.from_json_file(tmp_path / "list.json")
    (tmp_path / "ok.yaml").write_text("a: 1\n")
    assert load_yaml_mapping(tmp_path / "ok.yaml") == {"a": 1}


def test_file_validation_problems_name_the_path(tmp_path: Path) -> None:
    (tmp_path / "d.yaml").write_text("kd_loss_type: kld\n")
    with pytest.raises(ConfigError, match=r"d.yaml: kd_loss_type: unknown KD loss 'kld'"):
        DistillationConfig.from_yaml(tmp_path / "d.yaml")


# ------------------------------------------------------------------------------- immutability


def test_configs_are_frozen() -> None:
    config = DistillationConfig(intermediate_matches=[hidden_match()])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.kd_loss_weight = 0.5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.intermediate_matches[0].weight = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainingConfig().device = "cpu"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.intermediate_matches.append(None)  # type: ignore[attr-defined]


def test_user_proj_list_is_not_mutated_or_shared() -> None:
    proj = ["linear", 384, 768]
    options = {"lr": 1e-3}
    proj_with_options = ["relu", 384, 768, options]
    config = DistillationConfig(
        intermediate_matches=[hidden_match(proj=proj), hidden_match(proj=proj_with_options)]
    )
    assert proj == ["linear", 384, 768]  # TextBrewer appended {} to the user's list
    stored = config.intermediate_matches[1].proj
    assert stored == ("relu", 384, 768, {"lr": 1e-3})
    assert stored is not None and stored[3] is not options


def test_registered_names_validate() -> None:
    def hid_l1_loss(state_S: torch.Tensor, state_T: torch.Tensor, mask: Any = None) -> torch.Tensor:
        return (state_S - state_T).abs().mean()

    def sqrt_builder(scale: float) -> Any:
        return lambda logits_S, logits_T, base_temperature: base_temperature * scale

    registered = [
        ("match_loss", "hidden_l1", hid_l1_loss),
        ("kd_loss", "my_kd", presets.KD_LOSS_MAP["ce"]),
        ("weight_scheduler", "half", lambda progress: 0.5),
        ("temperature_scheduler", "scaled", sqrt_builder),
        ("projection", "my_proj", presets.PROJ_MAP["linear"]),
    ]
    try:
        for map_name, name, func in registered:
            presets.register_new(map_name, name, func)
        config = DistillationConfig(
            kd_loss_type="my_kd",
            kd_loss_weight_scheduler="half",
            temperature_scheduler=["scaled", 2.0],
            intermediate_matches=[hidden_match(loss="hidden_l1", proj=["my_proj", 4, 8])],
        )
        assert config.intermediate_matches[0].loss_fn() is hid_l1_loss
        assert config.kd_loss_weight_scheduler_fn()(0.3) == 0.5  # type: ignore[misc]
        assert config.temperature_scheduler_fn()(None, None, 4.0) == 8.0  # type: ignore[misc]
        with pytest.raises(
            ConfigError, match=r"'scaled' needs parameters .*use \['scaled', scale\]"
        ):
            DistillationConfig(temperature_scheduler="scaled")
    finally:
        for map_name, name, _ in registered:
            presets.MAPS[map_name].pop(name, None)


# -------------------------------------------------------------------------- built functions


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (["flsw", 1, 2], ["flsw", 1, 2]),
        (["flsw", {"beta": 1, "gamma": 2}], ["flsw", 1, 2]),
        (("flsw", 0.5, 1), ["flsw", 0.5, 1]),
        (["cwsm", 1.5], ["cwsm", 1.5]),
        (["cwsm", {"beta": 1.5}], ["cwsm", 1.5]),
    ],
)
def test_temperature_scheduler_matches_textbrewer(ours: Any, theirs: list[Any]) -> None:
    generator = torch.Generator().manual_seed(0)
    logits_S = torch.randn(6, 5, generator=generator)
    logits_T = torch.randn(6, 5, generator=generator)
    scheduler = DistillationConfig(temperature_scheduler=ours).temperature_scheduler_fn()
    assert scheduler is not None
    reference = textbrewer.presets.TEMPERATURE_SCHEDULER[theirs]
    expected = reference(logits_S, logits_T, 4.0)
    torch.testing.assert_close(scheduler(logits_S, logits_T, 4.0), expected)


def test_constant_and_weight_schedulers() -> None:
    config = DistillationConfig(
        temperature_scheduler="constant",
        kd_loss_weight_scheduler="linear_decay",
        hard_label_weight_scheduler="linear_growth",
    )
    scheduler = config.temperature_scheduler_fn()
    assert scheduler is not None and scheduler(torch.zeros(2, 3), torch.zeros(2, 3), 4.0) == 4.0
    assert config.kd_loss_weight_scheduler_fn() is presets.WEIGHT_SCHEDULER["linear_decay"]
    assert config.hard_label_weight_scheduler_fn() is presets.WEIGHT_SCHEDULER["linear_growth"]


# ----------------------------------------------------------------------------------- device


def test_resolved_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TrainingConfig(device="cpu").resolved_device() == torch.device("cpu")
    assert TrainingConfig(device=torch.device("cuda", 1)).device == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert TrainingConfig().resolved_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert TrainingConfig().resolved_device() == torch.device("cuda")
    assert TrainingConfig(local_rank=1).resolved_device() == torch.device("cuda", 1)


def test_match_objects_and_dicts_mix_and_configs_pickle() -> None:
    match = IntermediateMatch(**hidden_match(layer_T=[0, 4], layer_S=[0, 1], loss="fsp"))
    config = DistillationConfig(
        temperature_scheduler=("cwsm", 1.0), intermediate_matches=[match, hidden_match()]
    )
    assert config.intermediate_matches[0] is match
    assert config.intermediate_matches[1] == IntermediateMatch(**hidden_match())
    assert pickle.loads(pickle.dumps(config)) == config
    assert copy.deepcopy(TrainingConfig(seed=3)) == TrainingConfig(seed=3)


def test_from_dict_needs_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"DistillationConfig: expected a mapping .*got \[1\]"):
        DistillationConfig.from_dict([1])  # type: ignore[arg-type]


def test_apply_overrides_parses_yaml_values_and_dotted_keys() -> None:
    base = {"training": {"seed": 1}, "temperature": 4}
    out = apply_overrides(base, ["training.seed=3", "temperature=8.5", "layers=[0, 4]", "x=none"])
    assert out == {"training": {"seed": 3}, "temperature": 8.5, "layers": [0, 4], "x": "none"}
    assert base == {"training": {"seed": 1}, "temperature": 4}  # input not mutated


def test_apply_overrides_reports_every_bad_item() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides({"temperature": 4}, ["temperature", "=3", "temperature.x=1"])
    assert len(info.value.problems) == 3
    assert "expected key=value" in info.value.problems[0]
    assert "temperature is 4, not a mapping" in info.value.problems[2]


def test_resolve_device_auto_picks_cuda_only_when_available(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("auto", local_rank=2) == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_models_and_training_config_share_the_device_resolver() -> None:
    from cachebrew import models

    assert models.resolve_device is resolve_device
    assert TrainingConfig(device="cpu").resolved_device() == resolve_device("cpu")
