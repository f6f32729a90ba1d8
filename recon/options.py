"""The reconstruction's options as the caller gives them, and the requests `recon.api` takes.

Each group (`Orbit`, `Fit`, `Export`) holds what a caller (the CLI, `run`, a batch row, a script) gave;
None means "not given": the config file, the input's own record or the preset decides (`recon.config`).
Each field is also a command-line option: `option()` keeps its flags, bounds, help and help panel in the
field's metadata, and `cli.py` builds every command's flags from these fields (`runs.options` adds the
groups that are not the reconstruction's). The stage's full settings, with their preset defaults, are
`recon.poses.OrbitConfig`, `recon.fit.FitConfig` and `recon.asset.ExportConfig`; the groups here are
resolved into them once, in `recon.api`.

Torch-free: `--help` must not wait for torch. Here rather than in `runs` so that the library is called
with these typed objects (`ReconstructRequest`, `PosesRequest`) and imports never run upward.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from recon.constants import (
    MAX_FIT_RESOLUTION,
    MAX_ITERATIONS,
    MAX_SEED,
    MAX_SH_DEGREE,
    MAX_TEXTURE_SIZE,
    MIN_FACES,
    MIN_FIT_RESOLUTION,
    MIN_RADIUS,
    MIN_TEXTURE_SIZE,
    TEXELS_PER_FRAME_PIXEL,
)

REQUIRED: Any = ...  # a field every command that takes it must be given

ORBIT_PANEL = "Orbit (poses)"
FIT_PANEL = "Reconstruction"
EXPORT_PANEL = "Export"
FIT_SEED_HELP = "Random seed of the reconstruction's initialisation and view order (default 0)."
ORBIT_VALUES = ("elevation", "radius", "fov", "start_azimuth", "direction", "full_turn")  # OrbitConfig's


def option(
    default: Any, *flags: str, help: str, low: float | None = None, high: float | None = None,
    finite: bool = False, panel: str | None = None, show_default: bool = True, argument: bool = False,
) -> Any:  # fmt: skip
    """A dataclass field that is also a command-line option (`flags` as click spells them; default: the
    field's name). `low`/`high` are inclusive bounds, `finite` refuses nan and inf (they pass any range
    check), `argument` makes it positional."""
    meta = {"flags": flags, "help": help, "low": low, "high": high, "finite": finite, "panel": panel,
            "show_default": show_default, "argument": argument}  # fmt: skip
    return field(default=default, metadata=meta)


def is_required(f: Field) -> bool:
    return f.default is REQUIRED or (f.default is MISSING and f.default_factory is MISSING)


@dataclass
class Orbit:
    """The orbit's cameras (`recon.poses.OrbitConfig`); None = preset, generation.json or --config."""

    elevation: float | None = option(
        None,
        finite=True,
        panel=ORBIT_PANEL,
        help="Camera elevation in degrees above the object (positive = looking down), |value| < 90 "
        "(preset: 15).",
    )
    radius: float | None = option(
        None,
        finite=True,
        panel=ORBIT_PANEL,
        help=f"Camera distance from the object's centre, at least {MIN_RADIUS:g} (world units; the object is "
        "~1 unit across; preset: 2.0).",
    )
    fov: float | None = option(
        None,
        finite=True,
        panel=ORBIT_PANEL,
        help="Full vertical field of view in degrees, in (0, 180) (preset: 45).",
    )
    start_azimuth: float | None = option(
        None,
        finite=True,
        panel=ORBIT_PANEL,
        help="Azimuth of frame 0 in degrees, measured from +X toward +Y (world +Z up; preset: 0).",
    )
    direction: str | None = option(
        None,
        panel=ORBIT_PANEL,
        help="Orbit direction seen from above: ccw (counter-clockwise) or cw (preset: ccw).",
    )
    full_turn: bool | None = option(
        None,
        "--full-turn/--no-full-turn",
        panel=ORBIT_PANEL,
        show_default=False,
        help="The last frame repeats the first view (step 360/(N-1)); default: it does not (360/N).",
    )
    orbit_mode: str | None = option(
        None,
        "--orbit",
        panel=ORBIT_PANEL,
        help="auto: estimate elevation, fov, direction and full-turn from the frames (radius stays 2: the "
        "object's size follows), holding any value given; fixed: use the given and preset values. "
        "Default: auto when no orbit value is given (command line, --config, generation.json), else "
        "fixed.",
    )
    refine: bool | None = option(
        None,
        "--refine/--no-refine",
        panel=ORBIT_PANEL,
        show_default=False,
        help="Given orbit values are starting points of the estimate, not fixed, and every frame's pose "
        "and the focal length are refined with the splats (default: refine poses when the orbit is "
        "estimated).",
    )
    config: Path | None = option(
        None,
        panel=ORBIT_PANEL,
        help="JSON config file with 'orbit', 'fit', 'mesh' and 'preset' keys (see configs/); command-line "
        "options override it.",
    )

    def given(self) -> dict[str, Any]:
        """The `OrbitConfig` values, with --orbit and --refine as "mode" and "refine" (`recon.orbit_mode`);
        None = not given."""
        return {**{name: getattr(self, name) for name in ORBIT_VALUES}, "mode": self.orbit_mode,
                "refine": self.refine}  # fmt: skip


@dataclass
class Fit:
    """How the splats are fitted (`recon.fit.FitConfig`); None = the preset's value."""

    preset: str | None = option(
        None,
        panel=FIT_PANEL,
        help="fast or quality (default: quality on CUDA, fast on CPU).",
    )
    iterations: int | None = option(
        None,
        low=1,
        high=MAX_ITERATIONS,
        panel=FIT_PANEL,
        help="Training steps (fast: 600, quality: 7000).",
    )
    sh_degree: int | None = option(
        None,
        low=0,
        high=MAX_SH_DEGREE,
        panel=FIT_PANEL,
        help="Spherical-harmonics degree 0-3 (fast: 1, quality: 3).",
    )
    resolution: int | None = option(
        None,
        low=MIN_FIT_RESOLUTION,
        high=MAX_FIT_RESOLUTION,
        panel=FIT_PANEL,
        help="Longest image side used for fitting; frames are downscaled (fast: 128, quality: 512).",
    )
    # One name for the fit's seed everywhere (--fit-seed); `reconstruct` still accepts its old spelling,
    # --seed, which `generate`, `run` and `batch` use for generation's seed.
    fit_seed: int | None = option(
        None, "--fit-seed", "--seed", low=0, high=MAX_SEED, panel=FIT_PANEL, help=FIT_SEED_HELP
    )
    engine: str = option(
        "gsplat",
        panel=FIT_PANEL,
        help="gsplat (built in) or splatfacto (nerfstudio's ns-train; needs the nerfstudio extra; its re-"
        "centring, re-orientation and auto-scaling are turned off so its splats stay in our frame).",
    )

    def given(self, device: str) -> dict[str, Any]:
        """The `FitConfig` values (its `seed` is this group's `fit_seed`), on `device`; None = not given."""
        return {"iterations": self.iterations, "device": device, "sh_degree": self.sh_degree,
                "resolution": self.resolution, "seed": self.fit_seed}  # fmt: skip


@dataclass
class Export:
    """How the mesh and splats are written (`recon.asset.ExportConfig`); None = --config or default."""

    faces: int | None = option(
        None,
        low=0,
        panel=EXPORT_PANEL,
        help=f"Face budget of the mesh: quadric decimation to at most this many, at least {MIN_FACES} "
        "(default 50000, or one per pixel of a frame when that is fewer; 0 = all).",
    )
    texture_size: int | None = option(
        None,
        low=MIN_TEXTURE_SIZE,
        high=MAX_TEXTURE_SIZE,
        panel=EXPORT_PANEL,
        help=f"Side of the baked base-colour texture in texels (default 2048; never more than "
        f"{TEXELS_PER_FRAME_PIXEL} texels per pixel of the frames' longest side, which is all they hold).",
    )
    vertex_colors: bool | None = option(
        None,
        "--vertex-colors/--texture",
        panel=EXPORT_PANEL,
        show_default=False,
        help="Per-vertex colour instead of a UV texture (default: textured).",
    )
    splat_format: str | None = option(
        None,
        panel=EXPORT_PANEL,
        help="Splat file: ply (standard 3DGS), splat (antimatter15) or ply-compressed (SuperSplat).",
    )

    def given(self) -> dict[str, Any]:
        """The `ExportConfig` values; None = not given."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class PosesRequest:
    """`recon.api.poses`: the orbit to pose, and the orbit options given."""

    input_path: Path
    orbit: Orbit = field(default_factory=Orbit)


@dataclass
class ReconstructRequest:
    """`recon.api.reconstruct`: the orbit to reconstruct and every option given (the groups above; None
    in a group = not given), and the device ("auto": CUDA when present)."""

    input_path: Path
    orbit: Orbit = field(default_factory=Orbit)
    fit: Fit = field(default_factory=Fit)
    export: Export = field(default_factory=Export)
    device: str = "auto"
