"""Bundle adjustment from the point tracks: every frame's place on the orbit, and the focal length.

The orbit estimate (`recon.orbit_estimate`) fits one circle to the whole video: elevation, fov and
direction shared by every frame. A generated orbit is no exact circle: its angular speed is smooth but
not uniform, its elevation drifts, and a frame may sit a degree off. A fit given the circle blurs that
into the asset. The point tracks (`recon.tracks`) measure each frame's offset: they are accurate to about
0.2 px at 256 px on a textured object, and a 1-degree turn moves the object's points by about 3 px there.

**What moves.** Each frame's camera looks at the orbit's centre with no roll and gets its own azimuth,
elevation and distance (frame 0's distance stays the orbit's radius: the scale gauge; a video model's
camera drifts in and out, measured: on a 4% drift the fixed radius left frames 1.2 degrees and the fov 1.1
off, the free distance 0.24 and 0.03); the focal length, shared by every frame, gets one scale; every
track gets its 3D point. The cost is the tracks' reprojection error in
tracking pixels, robust (`BundleConfig.loss`), plus four priors, each weighed against the tracks in
units of the tracker's noise (`BundleConfig.noise_px`):

* *the circle*: each frame stays near the estimated circle (`BundleConfig.prior_deg`). It holds the slow
  modes that the tracks barely see: in an open orbit nothing links the last frame back to the first, so a
  ramp in azimuth along the orbit (with the focal length and the points' depths: the bas-relief
  ambiguity of short tracks) or a tilt of the whole orbit costs the tracks almost nothing;
* *smoothness*: an orbit is a smooth path, so the second differences of each frame's offset from the
  circle (angles and log distance) are held near zero (`BundleConfig.smooth_deg`). A slowly varying
  speed or a drifting elevation costs nothing; a frame that jumps away from both neighbours costs a lot;
* *the smooth path*: each frame's azimuth and elevation offsets stay near one low-order smooth path
  through the whole orbit (a constant, a linear drift and a few harmonics per turn; its coefficients are
  solved with the frames, `BundleConfig.path_deg`). The second-difference prior holds a frame to its
  neighbours only, so where the tracks thin out (a generated video's back, whose detail changes from frame
  to frame) the frames there could wander together; the path ties them to what the rest of the turn draws;
* *the lens*: the estimate already measured the fov, with an uncertainty (its bootstrap spread), so the
  focal length may move within that spread, and further only where the tracks demand it: a free lens that
  ends at its bound is solved again with the spread and bound `BundleConfig.lens_widen` times wider (the
  circle the estimate fits biases its lens on an uneven turn, by more than its spread says).

Bounds make the worst case safe: no frame leaves the circle by more than `max_azimuth_deg` /
`max_elevation_deg`, and the fov stays within `lens_bound` spreads of the estimate.

**Why these priors.** On smooth, texture-poor objects the tracks are few (tens, not hundreds) and noisy
(0.5 px at the truth, T-junctions where one part passes another), and an adjustment free in 2N + 1
camera values and 3T points explains their noise instead: measured on the tree's smooth scene (48 frames,
160 px) the unregularised adjustment moved the fov 40.9 -> 52.2 and frames 12 degrees off; on a Blender
render of a real asset it moved the fov 40.5 -> 6.7 (a near-orthographic camera, its points shrunk to
fit); on generated orbits it moved neighbouring frames 48 degrees apart.

**The check.** A fifth of the tracks (`BundleConfig.holdout_every`) take no part in the solve. Each
candidate camera set triangulates them and reprojects them; the candidates are the full adjustment, the
adjustment with the lens held at the estimate, and the circle itself, and the adjusted poses win only where
their held-out tracks agree clearly better than the circle's (`BundleResult.choice`, recorded in
report.json with the figures). So the adjustment cannot make the poses worse than the circle on evidence it
did not fit.

**The gauge.** A rotation of the whole world about the orbit's axis (+Z) moves every camera's azimuth by
the same angle and no pixel: frame 0's azimuth is held during the solve, then every azimuth is shifted so
the mean correction is zero (the circle's start azimuth stays the convention it is). A tilt of the world
is no gauge here, since it would roll the cameras, and the cameras do not roll; nor is the mean elevation,
which the tracks fix as they fix the estimate's. Values the user gave are held: a given elevation keeps
every frame at it (only azimuths move), a given fov keeps the focal length.

**Why `scipy.optimize.least_squares`.** A trust-region solver ("trf") with a robust loss, bounds and a
sparse Jacobian pattern is exactly this problem's shape: every residual depends on one frame's two angles
(three neighbours' for the smoothness prior), one track's point and the focal length, so finite
differences need only a handful of grouped evaluations per Jacobian and LSMR solves the sparse normal
equations, no Schur complement to write by hand. The loss is ``soft_l1`` (smooth, linear for large
residuals): a track the tracker got wrong pulls with a bounded force instead of a squared one, then the
next passes drop the observations still far off. (Huber and Cauchy were tried: with them the solve left
the focal length where it started and missed more.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from recon.bundle_config import LOSSES, MIN_CHECK_TRACKS, BundleConfig
from recon.bundle_solve import MIN_OBSERVED_FRAMES, OrbitPath, Priors, Solution, covering, solve, subset
from recon.orbit_estimate import track_errors
from recon.poses import Cameras, OrbitConfig, focal_from_fov, orbit_azimuths
from recon.tracks import Tracks

__all__ = ["CHOICES", "LOSSES", "BundleConfig", "BundleResult", "adjust"]

# A free lens this close to its bound (a share of it) counts as stopped there (`BundleConfig.lens_widen`).
LENS_AT_BOUND = 0.95
HOLDOUT_SEED = 0  # which tracks are held out is fixed, so a run is repeatable
# What the check can choose: the candidates (most freedom first), then the circle for want of tracks.
CHOICES = ("adjusted", "lens held", "circle", "too few tracks", "no tracks")


@dataclass
class BundleResult:
    """Every frame's adjusted place on the orbit and the focal scale, and how well the tracks agree."""

    azimuth: np.ndarray  # [N] degrees, each frame's azimuth on the orbit
    elevation: np.ndarray  # [N] degrees
    focal_scale: float  # the adjusted focal length over the orbit's
    orbit: OrbitConfig  # the circle it started from (radius, fov)
    rms_before_px: float  # RMS reprojection error of the inlier tracks on the circle, tracking pixels
    rms_after_px: float  # the same after the adjustment
    tracks_used: int  # tracks kept by the last pass
    tracks: int  # tracks given
    seconds: float
    choice: str = "adjusted"  # which candidate the held-out tracks chose (`CHOICES`)
    # Median held-out track error (pixels) of each candidate, the evidence for `choice`.
    held_out_px: dict[str, float] = field(default_factory=dict)
    distance: np.ndarray | None = None  # [N] each frame's distance from the centre (None: the orbit's radius)

    def on(self, orbit: OrbitConfig) -> BundleResult:
        """The circle this result kept (`choice` "circle" or for want of tracks), on another `orbit` with the
        same turn: its lens and elevation set afterwards (`recon.orbit_estimate.lens_from_silhouettes`)."""
        assert self.choice not in CHOICES[:2], "an adjusted result belongs to the orbit it was solved on"
        return replace(self, orbit=orbit, elevation=np.full(len(self.elevation), orbit.elevation))

    @property
    def fov(self) -> float:
        """The adjusted vertical field of view, degrees."""
        half = math.tan(math.radians(self.orbit.fov) / 2.0) / self.focal_scale
        return 2.0 * math.degrees(math.atan(half))

    def cameras(self, width: int, height: int) -> Cameras:
        """The adjusted cameras for frames of `width` x `height` pixels."""
        n = len(self.azimuth)
        distance = np.full(n, self.orbit.radius) if self.distance is None else self.distance
        c2w = OrbitPath(np.radians(self.azimuth), np.radians(self.elevation), distance).c2w()
        focal = focal_from_fov(self.orbit.fov, height) * self.focal_scale
        return Cameras(c2w, focal, focal, width / 2.0, height / 2.0, width, height)

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        d_az = self.azimuth - orbit_azimuths(len(self.azimuth), self.orbit)
        d_el = self.elevation - self.orbit.elevation
        held = ", ".join(f"{name} {px:.2f}" for name, px in self.held_out_px.items())
        return (
            f"bundle adjustment ({self.choice}; held-out track error px: {held}): {len(self.azimuth)} frames "
            f"moved up to {np.abs(d_az).max():.2f} deg in azimuth and {np.abs(d_el).max():.2f} in elevation, "
            f"fov {self.fov:.1f}; {self.tracks_used} tracks, RMS error {self.rms_before_px:.2f} -> "
            f"{self.rms_after_px:.2f} px; {self.seconds:.1f} s"
        )

    def report(self) -> dict[str, Any]:
        """The JSON-able record for report.json (the per-frame corrections are added by the caller)."""
        return {
            "method": "bundle adjustment of the point tracks: per-frame azimuth and elevation on the orbit's "
            "sphere, the focal length and the tracks' points, robust reprojection error, with priors on the "
            "circle, the path's smoothness, a low-order smooth path and the estimated lens; checked on "
            "held-out tracks",
            "choice": self.choice,
            "why": _why(self.choice),
            "held_out_median_px": {k: round(v, 4) for k, v in self.held_out_px.items()},
            "rms_before_px": round(self.rms_before_px, 4),
            "rms_after_px": round(self.rms_after_px, 4),
            "tracks_used": self.tracks_used,
            "tracks": self.tracks,
            "seconds": round(self.seconds, 2),
        }


def _why(choice: str) -> str:
    return {
        "adjusted": "the adjusted poses and lens explain the held-out tracks best",
        "lens held": "the adjusted poses explain the held-out tracks best with the estimated lens kept",
        "circle": "no adjustment explained the held-out tracks better than the estimated circle: kept it",
        "no tracks": "no track long enough: kept the estimated circle",
        "too few tracks": "too few tracks to check an adjustment on held-out ones: kept the estimated circle",
    }[choice]


def adjust(
    tracks: Tracks, n: int, orbit: OrbitConfig, fixed: dict[str, Any] | None = None,
    cfg: BundleConfig | None = None, fov_uncertainty: float | None = None,
) -> BundleResult:  # fmt: skip
    """Adjust every frame's azimuth and elevation and the focal length of the `n` frames on `orbit` to the
    `tracks`, checked on held-out tracks (see the module docstring); `fixed` holds the orbit values the
    user gave, kept exactly; `fov_uncertainty` (degrees) is the estimate's, the lens prior's spread."""
    cfg = (cfg or BundleConfig()).validate()
    fixed = fixed or {}
    t0 = time.perf_counter()
    nominal_az = orbit_azimuths(n, orbit)
    free_el, free_focal = "elevation" not in fixed, "fov" not in fixed
    priors = Priors.of(cfg, orbit, fov_uncertainty)
    keep = (tracks.valid.sum(1) >= MIN_OBSERVED_FRAMES) & (
        (np.where(tracks.valid, tracks.frames, 0) < n).all(1)
    )
    usable = subset(tracks, np.flatnonzero(keep))
    circle_el = np.full(n, orbit.elevation)
    if len(usable) == 0:
        return BundleResult(nominal_az, circle_el, 1.0, orbit, float("nan"), float("nan"), 0, len(tracks),
                            time.perf_counter() - t0, "no tracks")  # fmt: skip

    # 1. Hold out every `holdout_every`-th track (in a fixed random order) to check the candidates; solve
    #    with at most `max_tracks` of the others.
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(usable))
    check = subset(usable, np.sort(order[:: cfg.holdout_every]))
    rest = np.delete(order, np.arange(0, len(order), cfg.holdout_every))
    fitting = subset(usable, np.sort(covering(usable, rest, n, cfg)))

    # 2. The candidates, solved without the held-out tracks: free lens, then the lens held.
    circle = OrbitPath.circle(nominal_az, orbit)
    focal = focal_from_fov(orbit.fov, tracks.height)

    def held_out_error(path: OrbitPath) -> float:
        """Median error of the held-out tracks, triangulated and reprojected by `path`'s cameras."""
        return float(np.median(track_errors(check, path.c2w(), focal * math.exp(path.log_focal))))

    solutions: dict[str, Solution] = {}
    if len(check) >= MIN_CHECK_TRACKS:
        if free_focal:
            adjusted = solve(fitting, nominal_az, orbit, free_el, True, cfg, priors)
            if cfg.lens_widen > 1 and abs(adjusted.path.log_focal) >= LENS_AT_BOUND * priors.lens_bound:
                # The tracks demand more (`BundleConfig.lens_widen`). From the circle again: started from the
                # bounded solution (its tracks trimmed to agree with the wrong lens) the same seed-1 orbit
                # stopped at 43.5 instead of 40.6. The wider lens must explain the held-out tracks better.
                wider = solve(fitting, nominal_az, orbit, free_el, True, cfg, priors.widened(cfg.lens_widen))
                if held_out_error(wider.path) < held_out_error(adjusted.path):
                    adjusted = wider
            solutions["adjusted"] = adjusted
        solutions["lens held"] = solve(fitting, nominal_az, orbit, free_el, False, cfg, priors)

    # 3. The check: the held-out tracks, triangulated and reprojected by each candidate and the circle.
    held_out = {name: held_out_error(solution.path) for name, solution in solutions.items()}
    held_out["circle"] = held_out_error(circle)
    choice = _choose(held_out, cfg) if solutions else "too few tracks"
    if choice not in solutions:
        rms = float(np.sqrt(np.mean(track_errors(fitting, circle.c2w(), focal) ** 2)))
        seconds = time.perf_counter() - t0
        return BundleResult(
            nominal_az, circle_el, 1.0, orbit, rms, rms, 0, len(tracks), seconds, choice, held_out
        )
    # The winner, as solved without the held-out tracks (a fifth fewer tracks changed the jitter benchmark's
    # worst frame by hundredths of a degree; solving again with them would cost a third solve).
    final = solutions[choice]
    before = track_errors(final.kept, circle.c2w(), focal)
    # The gauge: a common turn about +Z moves no pixel; keep the mean azimuth correction at zero.
    azimuth = np.degrees(final.path.az)
    azimuth -= float(np.mean(azimuth - nominal_az))
    return BundleResult(
        azimuth, np.degrees(final.path.el), math.exp(final.path.log_focal), orbit,
        float(np.sqrt(np.mean(before**2))), final.rms_px, len(final.kept), len(tracks),
        time.perf_counter() - t0, choice, held_out, final.path.radius,
    )  # fmt: skip


def _choose(held_out: dict[str, float], cfg: BundleConfig) -> str:
    """The candidate the held-out tracks' median errors pick (see the module docstring).

    The poses must earn their freedom: an adjustment replaces the circle only for a clear gain
    (`BundleConfig.check_margin`). The lens then comes with them unless it makes the held-out tracks
    worse (`BundleConfig.lens_margin`): one value shared by every frame and bounded by the estimate's
    spread, it moves the held-out error by a hair either way (measured: 0.2052 against 0.2048 px on the
    jitter benchmark, where the free lens is 0.5 degree nearer the truth), so the median cannot judge it
    finely, only catch it going astray.
    """
    posed = [name for name in ("adjusted", "lens held") if name in held_out]
    if min(held_out[name] for name in posed) >= (1.0 - cfg.check_margin) * held_out["circle"]:
        return "circle"
    if "adjusted" in held_out and held_out["adjusted"] <= (1.0 + cfg.lens_margin) * held_out["lens held"]:
        return "adjusted"
    return "lens held"
