"""The config keys whose values need a check of their own (`setting(check=...)`), each with the
JSON Schema of what it accepts (`setting(schema=...)`, shown by `sslall config schema`); the
tests hold each schema to its check.

Bottom layer: imports nothing of sslall but `sslall.errors`.
"""

from __future__ import annotations

import re
from typing import Any

from sslall.errors import ConfigError

__all__ = ["FOLDS_SCHEMA", "PROJECT_SCHEMA", "PSEUDO_WEIGHT_SCHEMA", "URL_SCHEMA", "check_folds",
           "check_http_url", "check_project", "check_pseudo_weight"]

_HTTP_URL = r"^https?://[^/\s?#]+(/\S*)?$"
PSEUDO_WEIGHT_SCHEMA = {"anyOf": [{"const": "confidence"},
                                  {"type": "number", "exclusiveMinimum": 0, "maximum": 1}]}
URL_SCHEMA = {"type": "string", "anyOf": [{"const": ""}, {"pattern": _HTTP_URL}]}
FOLDS_SCHEMA = {"type": "integer", "anyOf": [{"const": 0}, {"minimum": 2, "maximum": 32}]}
# a title is 3+ characters once stripped: two non-spaces with something between them
PROJECT_SCHEMA = {"type": "string", "anyOf": [{"pattern": r"^[0-9]+$"}, {"pattern": r"\S[\s\S]+\S"}]}


def check_pseudo_weight(key: str, value: Any) -> Any:
    """'confidence' or a number in (0, 1] (as a float).

    Raises:
        ConfigError: anything else.
    """
    if value == "confidence":
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    raise ConfigError(key, f"got {value!r}", "'confidence' or a number in (0, 1]")


def check_http_url(key: str, value: Any) -> Any:
    """"" (not configured) or an http(s) URL.

    Raises:
        ConfigError: anything else.
    """
    if value != "" and not (isinstance(value, str) and re.match(_HTTP_URL, value)):
        raise ConfigError(key, f"{value!r} is not an http(s) URL", '"" or e.g. "http://127.0.0.1:8080"')
    return value


def check_folds(key: str, value: Any) -> Any:
    """0 (off) or a whole number of folds in [2, 32].

    Raises:
        ConfigError: anything else.
    """
    if isinstance(value, int) and not isinstance(value, bool) and (value == 0 or 2 <= value <= 32):
        return value
    raise ConfigError(key, f"got {value!r}", "0 (off) or a whole number of folds in [2, 32]")


def check_project(key: str, value: Any) -> Any:
    """A numeric id, or a title of 3 or more characters (spaces at either end not counted).

    Raises:
        ConfigError: anything else.
    """
    if not (isinstance(value, str) and (value.isdigit() or len(value.strip()) >= 3)):
        raise ConfigError(key, f"got {value!r}", "a numeric id, or a title of 3 or more characters")
    return value
