"""`sslall config show` prints the effective configuration (TOML, or JSON with --json) and
`sslall config schema` the JSON Schema of sslall.toml, which accepts the configs sslall writes and
refuses what `load_config` refuses.

Each check runs through a small validator that walks the schema (the keywords the schema uses),
and through `jsonschema` too when it is installed (it is not a dependency of sslall).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from conftest import invoke
from typer.testing import CliRunner

from sslall._schema import config_data, config_schema
from sslall.cli import app
from sslall.config import Config, config_from_dict, config_keys, load_config
from sslall.decide._acquisition import STRATEGIES
from sslall.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

HAS_JSONSCHEMA = importlib.util.find_spec("jsonschema") is not None
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def problems(schema: dict, value: object, where: str = "") -> list[str]:
    """Where `value` breaks `schema` (empty when it fits), for the keywords the schema uses."""
    out: list[str] = []
    kind = schema.get("type")
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = kind is None or isinstance(value, _TYPES[kind])
    if not ok:
        return [f"{where}: {value!r} is not {kind}"]
    if "const" in schema and value != schema["const"]:
        out.append(f"{where}: not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} not in enum")
    for key, test in (("minimum", lambda b: value >= b), ("maximum", lambda b: value <= b),
                      ("exclusiveMinimum", lambda b: value > b),
                      ("exclusiveMaximum", lambda b: value < b),
                      ("minItems", lambda b: len(value) >= b),
                      ("pattern", lambda b: re.search(b, value) is not None)):
        if key in schema and not test(schema[key]):
            out.append(f"{where}: breaks {key} {schema[key]!r}")
    if schema.get("uniqueItems") and len(set(map(json.dumps, value))) != len(value):
        out.append(f"{where}: items not unique")
    for i, item in enumerate(value if "items" in schema else []):
        out += problems(schema["items"], item, f"{where}[{i}]")
    if "anyOf" in schema and all(problems(s, value, where) for s in schema["anyOf"]):
        out.append(f"{where}: fits none of anyOf")
    if kind == "object":
        out += [f"{where}.{k}: missing" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k in schema.get("properties", {}):
                out += problems(schema["properties"][k], v, f"{where}.{k}")
            elif schema.get("additionalProperties") is False:
                out.append(f"{where}.{k}: not allowed")
    return out


def fits(schema: dict, value: object) -> bool:
    """Whether `value` fits, by the walker and (when installed) by jsonschema: both must agree."""
    mine = not problems(schema, value)
    if HAS_JSONSCHEMA:
        import jsonschema

        theirs = jsonschema.Draft202012Validator(schema).is_valid(value)
        assert mine == theirs, (value, problems(schema, value))
    return mine


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(invoke(CliRunner(), "config", "schema").stdout)


def test_the_schema_is_draft_2020_12_and_names_every_key(schema: dict) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    if HAS_JSONSCHEMA:
        import jsonschema

        jsonschema.Draft202012Validator.check_schema(schema)
    found = ["classes", *(f"{section}.{key}" for section, table in schema["properties"].items()
                          if section != "classes" for key in table["properties"])]
    assert found == config_keys()
    for key in config_keys():
        section, _, name = key.rpartition(".")
        spec = schema["properties"][section]["properties"][name] if section else \
            schema["properties"][key]
        assert spec["description"], key
        assert "type" in spec or "anyOf" in spec, key
        assert key == "classes" or "default" in spec, key


def test_types_defaults_enums_and_ranges_come_from_the_declarations(schema: dict) -> None:
    model = schema["properties"]["model"]["properties"]
    assert model["image_size"] == {"description": "input side in pixels", "default": 224,
                                   "type": "integer", "minimum": 16, "maximum": 1024}
    assert model["device"]["enum"] == ["auto", "cpu", "cuda", "mps"]
    assert model["pretrained"]["type"] == "boolean"
    train = schema["properties"]["train"]["properties"]
    assert train["lr"]["exclusiveMinimum"] == 0 and "maximum" not in train["lr"]
    assert train["head_hidden"]["default"] == [64, 64]
    assert "margin" in schema["properties"]["route"]["properties"]["strategy"]["enum"]


def test_a_strategy_registered_before_the_call_is_in_the_enum(monkeypatch) -> None:
    monkeypatch.setitem(STRATEGIES, "my-strategy", lambda ctx: ctx)
    enum = config_schema()["properties"]["route"]["properties"]["strategy"]["enum"]
    assert "my-strategy" in enum and "margin" in enum


def test_the_default_and_the_demo_configs_fit(schema: dict, workspace: Path, tmp_path: Path
                                              ) -> None:
    from sslall.experiments._demo import build_demo, prepare_demo_folder

    assert fits(schema, config_data(Config(classes=("A", "B"))))
    assert fits(schema, tomllib.loads((workspace / "sslall.toml").read_text()))  # `sslall init`
    prepare_demo_folder(tmp_path / "demo", per_class=40, fresh=False)
    demo = build_demo(tmp_path / "demo", ("L1", "L2", "L3"), per_class=40,
                      backbone="tf_efficientnet_lite0", image_size=128)
    written = tomllib.loads(demo.workspace.config_path.read_text())
    assert fits(schema, written) and written["model"]["image_size"] == 128


@pytest.mark.parametrize(("key", "value", "ok"), [
    ("model.image_size", 8, False), ("model.image_size", 16, True),
    ("model.device", "tpu", False), ("train.dropout", 1.0, False), ("train.dropout", 0.0, True),
    ("train.pseudo_weight", 0, False), ("train.pseudo_weight", 0.5, True),
    ("train.pseudo_weight", "confidence", True), ("train.pseudo_weight", "half", False),
    ("train.head_hidden", [0], False), ("train.head_hidden", [32], True),
    ("route.label_issue_folds", 1, False), ("route.label_issue_folds", 0, True),
    ("route.label_issue_folds", 33, False), ("labelstudio.url", "ftp://x", False),
    ("labelstudio.url", "", True), ("labelstudio.url", "http://127.0.0.1:8080", True),
    ("labelstudio.project", "ab", False), ("labelstudio.project", "7", True),
    ("labelstudio.project", " a b ", True), ("ood.quantile", 0, False),
    ("route.budget", True, False), ("model.bogus", 1, False),
])
def test_the_schema_refuses_what_load_config_refuses(schema: dict, key: str, value: object,
                                                      ok: bool) -> None:
    section, name = key.split(".")
    raw = {"classes": ["A", "B"], section: {name: value}}
    try:
        config_from_dict(raw)
        loads = True
    except ConfigError:
        loads = False
    assert loads is ok
    assert fits(schema, raw) is ok


def test_classes_must_be_two_unique_folder_names(schema: dict) -> None:
    assert not fits(schema, {"classes": ["A"]})
    assert not fits(schema, {"classes": ["A", "A"]})
    assert not fits(schema, {"classes": ["A", "B/C"]})
    assert not fits(schema, {"model": {}})
    assert fits(schema, {"classes": ["Pre-B", "T cell"]})


def test_config_show_prints_the_effective_config(workspace: Path) -> None:
    runner = CliRunner()
    (workspace / "sslall.toml").write_text('classes = ["L1", "L2", "L3"]\n[route]\nbudget = 7\n')
    as_toml = invoke(runner, "config", "show", "-w", workspace)
    as_json = invoke(runner, "config", "show", "-w", workspace, "--json")
    assert as_toml.exit_code == 0 and as_json.exit_code == 0, as_toml.stderr + as_json.stderr
    effective = config_data(load_config(workspace / "sslall.toml"))
    assert tomllib.loads(as_toml.stdout) == json.loads(as_json.stdout) == effective
    assert effective["route"]["budget"] == 7 and effective["train"]["epochs"] == 30
    assert "# cells sent to review per round, at most" in as_toml.stdout


def test_config_show_without_a_workspace_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSLALL_WORKSPACE", "")
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 3
    assert result.stderr.startswith("error: not inside an sslall workspace")
    assert result.stdout == ""
