from pathlib import Path

import pytest

from sslall.config import (
    Config,
    config_from_dict,
    load_config,
    parse_classes,
    render_config,
    with_overrides,
)
from sslall.errors import ConfigError


def test_defaults_round_trip_through_toml(tmp_path: Path) -> None:
    config = Config(classes=("A", "B"))
    path = tmp_path / "sslall.toml"
    path.write_text(render_config(config))
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"classes": ["A", "B"], "colour": 1}, "'colour': unknown key (allowed: classes, model"),
        ({"classes": ["A", "B"], "model": {"backbon": "x"}}, "'model.backbon': unknown key"),
        ({"classes": ["A", "B"], "pseudo": {"threshold": 1.0}}, "'pseudo.threshold'"),
        ({"classes": ["A", "B"], "pseudo": {"threshold": 0}}, "out of range (allowed: (0, 1))"),
        ({"classes": ["A", "B"], "route": {"budget": -1}}, "'route.budget': -1 is out of range"),
        ({"classes": ["A", "B"], "train": {"epochs": "ten"}}, "expected an integer, got 'ten'"),
        ({"classes": ["A", "B"], "train": {"epochs": True}}, "expected an integer"),
        ({"classes": ["A", "B"], "model": {"mode": "fast"}}, "allowed: auto, head, last-stage, finetune"),
        ({"classes": ["A", "B"], "route": {"strategy": "best"}}, "margin, entropy"),
        ({"classes": ["A"]}, "at least 2 classes"),
        ({"classes": ["A", "A"]}, "duplicate class names"),
        ({"classes": ["A", "../B"]}, "not allowed"),
        ({}, "'classes': is missing"),
        ({"classes": ["A", "B"], "train": {"head_hidden": [64, -1]}}, "positive integers"),
        ({"classes": ["A", "B"], "train": {"pseudo_weight": 2}}, "'confidence' or a number"),
    ],
)
def test_bad_values_name_the_key(raw: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_int_accepted_for_float_and_overrides_validate() -> None:
    config = config_from_dict({"classes": ["A", "B"], "train": {"lr": 1}})
    assert config.train.lr == 1.0
    assert with_overrides(config, pseudo={"threshold": 0.8}).pseudo.threshold == 0.8
    with pytest.raises(ConfigError, match="pseudo.threshold"):
        with_overrides(config, pseudo={"threshold": 2.0})


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "sslall.toml"
    path.write_text("classes = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_parse_classes_from_comma_string() -> None:
    assert parse_classes("Benign, Early,Pre") == ("Benign", "Early", "Pre")


def test_readme_documents_every_config_key() -> None:
    from sslall.config import config_keys

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [k for k in config_keys() if f"`{k}`" not in readme]
    assert not missing, f"README lacks config keys {missing}"
