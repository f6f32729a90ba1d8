"""How the orbit of a reconstruction is chosen: given, estimated from the frames, or refined.

The rules (README and `--help` say the same):

* ``--orbit auto`` estimates every orbit value the user did not give (elevation, fov, direction,
  full_turn; `recon.orbit_estimate`). It is the default when no orbit value is given anywhere (command
  line, ``--config`` file, a generate folder's generation.json).
* ``--orbit fixed`` uses the values as they are (given ones over the preset); it is the default as soon
  as any orbit value is given, so an existing command line keeps its meaning.
* Given values are held fixed. With ``--refine`` they are starting points instead: the estimate searches
  near them (in either mode).
* Every frame's pose and the focal length are refined when the orbit is estimated, or with ``--refine``:
  bundle-adjusted to the point tracks (`recon.bundle`), or, where there are none, jointly with the splats
  (`recon.pose_refine`; `recon.api.fit_refines_poses`); ``--no-refine`` turns that off.

``radius`` and ``start_azimuth`` are never estimated: they fix the gauge (`recon.orbit_estimate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recon.errors import ReconError
from recon.orbit_estimate import ESTIMATED

MODES = ("auto", "fixed")
CONTROL_KEYS = ("mode", "refine")  # keys of the orbit options that steer the choice, not orbit values


@dataclass
class OrbitPlan:
    """What to do with the orbit of one reconstruction."""

    mode: str  # "auto" or "fixed"
    refine_given: bool  # given values are starting points (--refine), not held fixed
    refine_poses: bool  # refine every frame's pose and the focal length with the splats
    given: dict[str, Any]  # orbit values the user gave (command line, config file, generation.json)

    @property
    def estimates(self) -> bool:
        """Whether `recon.orbit_estimate` runs at all."""
        free = [name for name in ESTIMATED if name not in self.given]
        return (self.mode == "auto" and bool(free or self.refine_given)) or self.refine_given

    def fixed(self) -> dict[str, Any]:
        """Values the estimate must hold exactly."""
        return {} if self.refine_given else {k: v for k, v in self.given.items() if k in ESTIMATED}

    def starts(self) -> dict[str, Any]:
        """Values the estimate starts from and stays near."""
        return {k: v for k, v in self.given.items() if k in ESTIMATED} if self.refine_given else {}

    def report(self) -> dict[str, Any]:
        return {"mode": self.mode, "refine_given": self.refine_given, "refine_poses": self.refine_poses,
                "given": dict(self.given)}  # fmt: skip


def split_orbit_options(options: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The orbit values and the control keys (mode, refine) of command-line orbit options."""
    options = dict(options or {})
    controls = {key: options.pop(key, None) for key in CONTROL_KEYS}
    return options, controls


def given_values(
    config: dict[str, Any] | None, hints: dict[str, Any] | None, cli: dict[str, Any] | None
) -> dict[str, Any]:
    """The orbit values the user gave anywhere, later sources winning (`recon.config` precedence)."""
    given: dict[str, Any] = dict(hints or {})
    given.update((config or {}).get("orbit", {}))
    given.update({k: v for k, v in (cli or {}).items() if v is not None})
    return given


def plan_orbit(controls: dict[str, Any], given: dict[str, Any]) -> OrbitPlan:
    """The plan for `--orbit` / `--refine` (None = not given) and the given orbit values."""
    mode = controls.get("mode")
    if mode is None:
        mode = "fixed" if given else "auto"
    if mode not in MODES:
        raise ReconError(f"--orbit must be one of {', '.join(MODES)}, got {mode!r}")
    refine = controls.get("refine")
    if refine is not None and not isinstance(refine, bool):
        raise ReconError(f"--refine must be true or false, got {refine!r}")
    refine_given = bool(refine)
    refine_poses = refine if refine is not None else mode == "auto"
    return OrbitPlan(mode, refine_given, bool(refine_poses), given)
