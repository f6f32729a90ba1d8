"""Layered settings: presets, config files and command-line options override dataclass fields.

A field whose extremes exhaust memory or make no sense declares its bounds where it is defined, with
its default (`bounded`); `check_bounds` checks the resolved settings against them, so there is no
separate table of ranges to keep in step with the fields.

Every override is checked against the type the dataclass field declares (`int`, `float`, `str`,
`bool`, or a union of them) and numbers must be finite, before any work starts. The check reads the
annotations at run time, so it keeps working when fields are added, renamed or retyped: no list of
field names to keep in step here.

Why not pydantic v2 (measured: benchmarks/RESULTS.md, "settings checks"): in strict mode it refuses the
same types, non-finite numbers, out-of-bounds values and unknown keys, but not absurd magnitudes, and its
messages name neither the value's source nor the known keys. The ~40 lines it would replace here would
come back as a formatter over its errors.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from recon.errors import ReconError

T = TypeVar("T")
# Beyond this magnitude no setting (steps, voxels, learning rates, degrees...) is meaningful; such a
# value is a typo that would otherwise surface as an endless loop or a huge allocation.
MAX_MAGNITUDE = 1e9
TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _accepts(kind: Any, value: Any) -> bool:
    """Whether `value` (from JSON or the command line) fits the declared type `kind`."""
    origin = typing.get_origin(kind)
    if origin is typing.Union or isinstance(kind, types.UnionType):
        return any(_accepts(member, value) for member in typing.get_args(kind))
    if origin is typing.Literal:
        return value in typing.get_args(kind)
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # JSON writes 2.0 as 2
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in (str, Any):
        return kind is Any or isinstance(value, str)
    return True  # a type this check does not know: the dataclass's own validation decides


def _describe(kind: Any) -> str:
    if typing.get_origin(kind) is typing.Union or isinstance(kind, types.UnionType):
        return " or ".join(_describe(member) for member in typing.get_args(kind))
    return TYPE_NAMES.get(kind, getattr(kind, "__name__", str(kind)))


def check_value(name: str, kind: Any, value: Any, where: str) -> None:
    """Raise ReconError unless `value` has the declared type and, if a number, is finite and sane."""
    if not _accepts(kind, value):
        raise ReconError(f"{where} setting {name} must be {_describe(kind)}, got {value!r}")
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if is_number and (not math.isfinite(value) or abs(value) > MAX_MAGNITUDE):
        raise ReconError(f"{where} setting {name} must be a finite number of at most {MAX_MAGNITUDE:g}")


def bounded(default: Any, low: float, high: float) -> Any:
    """A dataclass field with its default and the closed range [low, high] its value must lie in."""
    return dataclasses.field(default=default, metadata={"bounds": (low, high)})


def bounds(settings_type: Any) -> dict[str, tuple[float, float]]:
    """Every bounded field of a settings dataclass (type or instance): name -> (low, high)."""
    return {f.name: f.metadata["bounds"] for f in dataclasses.fields(settings_type) if "bounds" in f.metadata}


def check_bounds(settings: T, section: str) -> T:
    """Raise ReconError for a field of `settings` outside its declared bounds; return `settings`."""
    for name, (low, high) in bounds(settings).items():
        value = getattr(settings, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not low <= value <= high:
            raise ReconError(f"{section} setting {name} must be between {low:g} and {high:g}, got {value!r}")
    return settings


def with_overrides(settings: T, data: dict[str, Any], where: str) -> T:
    """A copy of the dataclass `settings` with the keys of `data` replaced (None = not given).

    Unknown keys are an error naming `where`, so a typo in a config file cannot pass silently; so is a
    value of the wrong type or a non-finite number.
    """
    known = {f.name for f in dataclasses.fields(settings)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ReconError(
            f"unknown {where} setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    hints = typing.get_type_hints(type(settings))
    given = {k: v for k, v in data.items() if v is not None}
    for name, value in given.items():
        check_value(name, hints.get(name, Any), value, where)
    return dataclasses.replace(settings, **given)  # type: ignore[type-var]
