"""One declaration per config key, and the validation of a value against it.

`setting(default, doc, ...)` returns a dataclass field whose metadata (a `Setting`) holds the
key's documentation and its allowed values or range, so a key is declared in one place.

Keys whose value names a registered function (`route.strategy`, `pseudo.policy`) declare
``registry=KIND``. The layer that owns those registries (`sslall.decide`, above this one) gives
the live names with `set_name_source` when it is imported; before that, the declared built-in
``choices`` apply, so a fresh process still validates names without importing the registries.

Bottom layer: imports nothing of sslall but `sslall.errors`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sslall.errors import ConfigError

REQUIRED: Any = dataclasses.MISSING  # the default of a key that has none
_META = "sslall.setting"
_INTERVAL = re.compile(r"^([\[(])(-inf|[-+.e0-9]+), (inf|[-+.e0-9]+)([\])])$")
_NAME_SOURCES: dict[str, Callable[[], Iterable[str]]] = {}


@dataclass(frozen=True)
class Setting:
    """What a key allows: documentation, choices, an interval, a registry kind or a custom check.

    ``within`` is an interval such as ``"[0, 1)"`` or ``"(0, inf]"``; ``check(key, value)``
    replaces the type, choice and range checks (for keys like a URL) and returns the value;
    ``schema`` is then the JSON Schema of what ``check`` accepts (`sslall._schema`).
    """

    doc: str
    choices: tuple[str, ...] = ()
    within: str | None = None
    registry: str | None = None
    check: Callable[[str, Any], Any] | None = None
    schema: dict[str, Any] | None = None

    def bounds(self) -> tuple[float | None, float | None, bool, bool]:
        """(low, high, low inclusive, high inclusive) of ``within``; None = unbounded."""
        match = _INTERVAL.match(self.within or "")
        if match is None:
            raise ValueError(f"within must look like '[0, 1)' or '(0, inf]'; got {self.within!r}")
        left, low, high, right = match.groups()
        return (None if low == "-inf" else float(low), None if high == "inf" else float(high),
                left == "[", right == "]")

    def allowed(self) -> tuple[str, ...]:
        """The values allowed now: the registered names for a registry key, else ``choices``.

        Registered built-ins keep their declared order and other registered names follow,
        sorted, so the message for a built-in config reads as it always has.
        """
        if self.registry not in _NAME_SOURCES:
            return self.choices
        live = set(_NAME_SOURCES[self.registry]())
        return (*[c for c in self.choices if c in live], *sorted(live - set(self.choices)))


def setting(default: Any, doc: str, *, choices: Iterable[str] = (), within: str | None = None,
            registry: str | None = None, check: Callable[[str, Any], Any] | None = None,
            schema: dict[str, Any] | None = None) -> Any:
    """A dataclass field for one config key: its default and everything its value must meet.

    Raises:
        ValueError: ``within`` is not an interval like ``"[0, 1)"``, or ``check`` comes without
            the ``schema`` of what it accepts (programming errors).
    """
    spec = Setting(doc, tuple(choices), within, registry, check, schema)
    if within is not None:
        spec.bounds()
    if check is not None and schema is None:
        raise ValueError("a setting with check= needs schema=, the JSON Schema of what it accepts")
    return dataclasses.field(default=default, metadata={_META: spec})


def setting_of(field: dataclasses.Field) -> Setting:
    """The `Setting` a field was declared with.

    Raises:
        KeyError: the field was not declared with `setting`.
    """
    return field.metadata[_META]


def set_name_source(kind: str, names: Callable[[], Iterable[str]]) -> None:
    """Make ``names()`` (called at each validation) the allowed values of ``registry=kind`` keys."""
    _NAME_SOURCES[kind] = names


def _describe_type(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def check_value(key: str, value: Any, default: Any, spec: Setting) -> Any:
    """``value`` checked against the default's type and the key's choices and range.

    Raises:
        ConfigError: the value does not fit, naming the key, what was given and what is allowed.
    """
    # NaN passes every range test (each comparison is False) and inf is no setting's value.
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"{value!r} is not a finite number")
    if spec.check is not None:
        return spec.check(key, value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise ConfigError(key, f"got {value!r}", "a list of positive integers")
        return tuple(value)
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(key, f"expected {_describe_type(expected)}, got {value!r}")
    allowed = spec.allowed()
    if (spec.choices or spec.registry) and value not in allowed:
        import difflib  # only on this error path: keeps `import sslall.config` small

        hint = difflib.get_close_matches(value, allowed, n=1) if spec.registry else []
        tip = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(key, f"got {value!r}{tip}", ", ".join(allowed))
    if spec.within is not None:
        low, high, incl_low, incl_high = spec.bounds()
        too_low = low is not None and (value < low if incl_low else value <= low)
        too_high = high is not None and (value > high if incl_high else value >= high)
        if too_low or too_high:
            raise ConfigError(key, f"{value!r} is out of range", spec.within)
    return value

