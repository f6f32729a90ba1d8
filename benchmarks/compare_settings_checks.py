"""Would pydantic v2 replace `recon.overrides`' hand-written settings checks? (issue 22, item 1)

The same override cases through our dataclass settings (`FitConfig().updated(...).validate()`) and
through a pydantic v2 dataclass with the strictest settings that still take JSON's 2 for 2.0
(`strict=True, extra="forbid", allow_inf_nan=False`) and the same bounds as `Field(ge=, le=)`. Prints,
for each case, what each refuses and with which message. pydantic is installed with typer (the CLI's
dependency), so this needs nothing extra.

    python benchmarks/compare_settings_checks.py
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from recon.constants import MAX_FIT_RESOLUTION, MAX_ITERATIONS, MAX_SH_DEGREE, MIN_FIT_RESOLUTION
from recon.errors import ReconError
from recon.fit import FitConfig


@pydantic_dataclass(config=ConfigDict(strict=True, extra="forbid", allow_inf_nan=False))
class PydanticFit:
    """A few of FitConfig's fields, one of each kind, with FitConfig's defaults and bounds."""

    iterations: int = Field(1500, ge=1, le=MAX_ITERATIONS)
    sh_degree: int = Field(1, ge=0, le=MAX_SH_DEGREE)
    resolution: int = Field(128, ge=MIN_FIT_RESOLUTION, le=MAX_FIT_RESOLUTION)
    lr_means: float = 1.6e-4
    appearance: bool = False


CASES: list[dict[str, Any]] = [
    {"iterations": "many"}, {"iterations": "5"}, {"iterations": 2.5}, {"iterations": True},
    {"lr_means": 1}, {"lr_means": float("nan")}, {"lr_means": 1e300}, {"appearance": 1},
    {"iterations": 0}, {"iterations": MAX_ITERATIONS + 1}, {"itrations": 5},
    {"resolution": MIN_FIT_RESOLUTION},
]  # fmt: skip


def ours(data: dict[str, Any]) -> str:
    try:
        FitConfig().updated(data, "fit").validate()
    except ReconError as exc:
        return f"refused: {exc}"[:80]
    return "accepted"


def pydantic(data: dict[str, Any]) -> str:
    try:
        PydanticFit(**data)
    except ValidationError as exc:
        error = exc.errors()[0]
        return f"refused: {error['loc'][0]}: {error['msg']}"[:80]
    return "accepted"


def main() -> None:
    for case in CASES:
        print(f"{case!s:28}\n    ours:     {ours(case)}\n    pydantic: {pydantic(case)}")


if __name__ == "__main__":
    main()
