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


def test_a_fresh_process_checks_strategy_and_policy_names_without_the_registries() -> None:
    """`route.strategy` and `pseudo.policy` follow the registries in `sslall.decide`, which the
    config does not import: before anything imports them, the declared built-ins apply."""
    import subprocess
    import sys

    code = """if True:
        import sys
        from sslall.config import config_from_dict
        from sslall.errors import ConfigError
        ok = config_from_dict({"classes": ["A", "B"], "route": {"strategy": "bald"},
                               "pseudo": {"policy": "adaptive"}})
        print(ok.route.strategy, ok.pseudo.policy)
        for section, key, value in (("route", "strategy", "margn"), ("pseudo", "policy", "own")):
            try:
                config_from_dict({"classes": ["A", "B"], section: {key: value}})
            except ConfigError as exc:
                print(exc.exit_code, exc)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("numpy", "faiss", "torch")
                     or m.startswith("sslall.decide")))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "bald adaptive",
        "2 config key 'route.strategy': got 'margn'; did you mean 'margin'? (allowed: margin, "
        "entropy, least-confidence, bald, coreset, typiclust, random)",
        "2 config key 'pseudo.policy': got 'own' (allowed: fixed, adaptive, propagation)",
        "[]",
    ]


def test_every_key_is_declared_once_with_its_documentation() -> None:
    from sslall.config import config_keys, key_setting

    keys = config_keys()
    assert len(keys) == len(set(keys)) and keys[:2] == ["classes", "model.backbone"]
    assert all(key_setting(k).doc for k in keys)
    assert key_setting("model.mode").choices == ("auto", "head", "last-stage", "finetune")
    assert key_setting("data.holdout_fraction").within == "[0, 1)"
    with pytest.raises(KeyError):
        key_setting("model.colour")
