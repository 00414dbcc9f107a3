"""The configuration as data: `config_data` (a `Config` as JSON-ready values, the shape of
sslall.toml) and `config_schema` (the JSON Schema, draft 2020-12, of sslall.toml), both built
from the `setting(...)` declarations so they cannot drift from what `load_config` accepts.

Just above `sslall.config`: imports nothing of sslall but it and `sslall._settings`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sslall._settings import REQUIRED, Setting, setting_of
from sslall.config import CLASS_NAME, SECTIONS, Config

__all__ = ["SCHEMA_DIALECT", "config_data", "config_schema"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def config_data(config: Config) -> dict[str, Any]:
    """Every key of `config` (defaults included) as JSON/TOML-ready values, in file order."""
    data: dict[str, Any] = {"classes": list(config.classes)}
    for name in SECTIONS:
        section = getattr(config, name)
        data[name] = {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
    return data


def config_schema() -> dict[str, Any]:
    """The JSON Schema of sslall.toml: each key's type, default, description, allowed names
    (registry keys: the names registered when this is called) and range.

    Raises:
        ValueError: a key's `within` is malformed (a programming error, caught by the tests).
    """
    classes = setting_of(next(f for f in dataclasses.fields(Config) if f.name == "classes"))
    properties: dict[str, Any] = {"classes": {
        "description": classes.doc, "type": "array", "minItems": 2, "uniqueItems": True,
        "items": {"type": "string", "pattern": CLASS_NAME.pattern.replace(r"\Z", "$")}}}
    for name, cls in SECTIONS.items():
        properties[name] = {
            "description": _section_doc(name, cls), "type": "object",
            "additionalProperties": False, "default": {},
            "properties": {f.name: _key_schema(f.default, setting_of(f))
                           for f in dataclasses.fields(cls)}}
    return {"$schema": SCHEMA_DIALECT, "title": "sslall.toml",
            "description": "An sslall workspace's configuration (sslall.toml).", "type": "object",
            "required": ["classes"], "additionalProperties": False, "properties": properties}


def _key_schema(default: Any, spec: Setting) -> dict[str, Any]:
    out: dict[str, Any] = {"description": spec.doc}
    if default is not REQUIRED:
        out["default"] = _plain(default)
    if spec.schema is not None:  # a key with its own check says what that check accepts
        return out | spec.schema
    if isinstance(default, tuple):
        return out | {"type": "array", "items": {"type": "integer", "exclusiveMinimum": 0}}
    out["type"] = _TYPES[type(default)]
    if spec.choices or spec.registry:
        out["enum"] = list(spec.allowed())
    if spec.within is not None:
        low, high, incl_low, incl_high = spec.bounds()
        if low is not None:
            out["minimum" if incl_low else "exclusiveMinimum"] = _number(low, default)
        if high is not None:
            out["maximum" if incl_high else "exclusiveMaximum"] = _number(high, default)
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _number(bound: float, default: Any) -> int | float:
    """A bound as the key's own type: 16 for an integer key, not 16.0."""
    return int(bound) if isinstance(default, int) and bound.is_integer() else bound


def _section_doc(name: str, cls: type) -> str:
    """The section's docstring's first line; dataclass makes one from the signature when the
    class has none, and that says nothing."""
    doc = (cls.__doc__ or "").strip()
    if not doc or doc.startswith(f"{cls.__name__}("):
        return f"the [{name}] table"
    return doc.splitlines()[0]
