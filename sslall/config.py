"""The workspace configuration, `sslall.toml`: schema, defaults and validation.

The config is a tree of frozen dataclasses validated once at load: `Config` here, its sections
(`ModelConfig`, ...) in `sslall._config_sections` and exported from here. Each key is declared
once, as a `setting(default, doc, ...)` field holding its documentation (which the README
mirrors) and its allowed values or range; an unknown key or a bad value raises `ConfigError`
naming the key and what is allowed. `route.strategy` and `pseudo.policy` accept whatever is registered (see
`sslall._settings`).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslall._config_sections import (
    AugmentConfig,
    DataConfig,
    IndexConfig,
    LabelStudioConfig,
    ModelConfig,
    OodConfig,
    PreprocessConfig,
    PseudoConfig,
    RouteConfig,
    RunsConfig,
    TrackingConfig,
    TrainConfig,
)
from sslall._settings import REQUIRED, Setting, check_value, setting, setting_of
from sslall.errors import ConfigError, NotFoundError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CONFIG_NAME = "sslall.toml"
# Starts and ends with a non-space (a folder name: "L1 " and "L1" must not both exist), no newline (\Z)
CLASS_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9 _.+-]{0,62}[A-Za-z0-9_.+-])?\Z")


@dataclass(frozen=True)
class Config:
    classes: tuple[str, ...] = setting(REQUIRED, "the class names, in order (2 or more, unique)")
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    route: RouteConfig = field(default_factory=RouteConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    labelstudio: LabelStudioConfig = field(default_factory=LabelStudioConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    runs: RunsConfig = field(default_factory=RunsConfig)
    ood: OodConfig = field(default_factory=OodConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# the [section] tables, in file order: each section field's default factory is its dataclass
SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)
                             if f.default_factory is not dataclasses.MISSING}


def config_keys() -> list[str]:
    """Every key of `sslall.toml`, dotted (``"route.strategy"``), in the file's order."""
    return ["classes", *(f"{name}.{f.name}" for name, cls in SECTIONS.items()
                         for f in dataclasses.fields(cls))]


def key_setting(key: str) -> Setting:
    """The declaration of a dotted key: ``.doc``, ``.choices`` (built-in), ``.allowed()`` (now).

    Raises:
        KeyError: no such key.
    """
    section, _, name = key.rpartition(".")
    cls = SECTIONS.get(section) if section else Config
    for f in dataclasses.fields(cls) if cls else ():
        if f.name == name and f.metadata:
            return setting_of(f)
    raise KeyError(key)


def parse_classes(value: Any, key: str = "classes") -> tuple[str, ...]:
    """Validate a list of class names: 2+, unique, safe as folder names."""
    if isinstance(value, str):
        value = [c.strip() for c in value.split(",") if c.strip()]
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ConfigError(key, f"expected a list of class names, got {value!r}")
    if len(value) < 2:
        raise ConfigError(key, f"needs at least 2 classes, got {len(value)}")
    if len(set(value)) != len(value):
        dupes = sorted({c for c in value if value.count(c) > 1})
        raise ConfigError(key, f"duplicate class names {dupes}")
    for name in value:
        if not CLASS_NAME.match(name):
            raise ConfigError(
                key, f"class name {name!r} is not allowed",
                "letters, digits, space, '_', '.', '+', '-', no space at either end; up to 64 "
                "characters",
            )
    return tuple(value)


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(name, f"expected a [{name}] table, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"{name}.{key}", "unknown key", ", ".join(fields))
        values[key] = check_value(f"{name}.{key}", value, fields[key].default, setting_of(fields[key]))
    return cls(**values)


def config_from_dict(raw: dict[str, Any], *, default_classes: tuple[str, ...] | None = None) -> Config:
    """Build and validate a `Config` from parsed TOML (`default_classes` when it names none)."""
    allowed = ["classes", *SECTIONS]
    for key in raw:
        if key not in allowed:
            raise ConfigError(key, "unknown key", ", ".join(allowed))
    if "classes" not in raw and default_classes is None:
        raise ConfigError("classes", "is missing", "a list of 2 or more class names")
    sections = {name: _build_section(name, cls, raw.get(name, {})) for name, cls in SECTIONS.items()}
    return Config(classes=parse_classes(raw.get("classes", list(default_classes or ()))), **sections)


def load_config(path: Path, *, default_classes: tuple[str, ...] | None = None) -> Config:
    """Read and validate `sslall.toml` (`default_classes` when the file names none)."""
    if not path.is_file():
        raise NotFoundError(f"no config file at {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path.name), f"is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path.name), "is not UTF-8 text") from None
    return config_from_dict(raw, default_classes=default_classes)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_config(config: Config) -> str:
    """Write a config as commented TOML (every key, with its documentation)."""
    lines = [
        "# sslall workspace configuration. Every key is documented in the README.",
        f"# {key_setting('classes').doc}",
        f"classes = {_toml_value(config.classes)}",
    ]
    for name in SECTIONS:
        lines += ["", f"[{name}]"]
        section = getattr(config, name)
        for f in dataclasses.fields(section):
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}"
                         f"  # {setting_of(f).doc}")
    return "\n".join(lines) + "\n"


def with_overrides(config: Config, **sections: dict[str, Any]) -> Config:
    """Return a copy with some keys replaced, validated like the file (CLI flags use this)."""
    replaced = {}
    for name, values in sections.items():
        current = getattr(config, name)
        clean = {k: v for k, v in values.items() if v is not None}
        merged = {**dataclasses.asdict(current), **clean}
        merged = {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}
        replaced[name] = _build_section(name, SECTIONS[name], merged)
    return dataclasses.replace(config, **replaced)


__all__ = ["CONFIG_NAME", "AugmentConfig", "Config", "DataConfig", "IndexConfig", "LabelStudioConfig",
           "ModelConfig", "PreprocessConfig", "PseudoConfig", "RouteConfig", "TrackingConfig", "TrainConfig",
           "config_from_dict", "config_keys", "key_setting", "load_config", "render_config",
           "with_overrides"]
