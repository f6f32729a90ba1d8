"""Layered settings: presets, config files and command-line options override dataclass fields."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from recon.errors import ReconError

T = TypeVar("T")


def with_overrides(settings: T, data: dict[str, Any], where: str) -> T:
    """A copy of the dataclass `settings` with the keys of `data` replaced (None = not given).

    Unknown keys are an error naming `where`, so a typo in a config file cannot pass silently.
    """
    known = {f.name for f in dataclasses.fields(settings)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ReconError(
            f"unknown {where} setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    return dataclasses.replace(settings, **{k: v for k, v in data.items() if v is not None})  # type: ignore[type-var]
