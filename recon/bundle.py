"""Bundle adjustment from the point tracks: every frame's place on the orbit, and the focal length.

The orbit estimate (`recon.orbit_estimate`) fits one circle to the whole video: elevation, fov and
direction shared by every frame. A generated orbit jitters by a degree or so per frame, and a fit given
the circle blurs that into the asset. The photometric refinement in the fit (`recon.pose_refine`) sees
each frame only on the few steps that render it, against a model still blurred by the jitter: measured,
it left 0.66 degree per frame of a +-1 degree jitter. The tracks (`recon.tracks`) are far sharper
evidence: they are accurate to about 0.2 px at 256 px, and a 1-degree turn moves the object's points by
about 3 px there.

**What moves.** Each frame's camera stays on the orbit's sphere (radius fixed: the scale gauge), looking
at its centre with no roll, and gets its own azimuth and elevation; the focal length, shared by every
frame, gets one scale; every track gets its 3D point. The cost is the tracks' reprojection error in
tracking pixels, robust (`BundleConfig.loss`), plus a weak prior that holds each frame near the estimated
circle (it only matters for a frame that no track sees).

**The gauge.** A rotation of the whole world about the orbit's axis (+Z) moves every camera's azimuth by
the same angle and no pixel: frame 0's azimuth is held during the solve, then every azimuth is shifted so
the mean correction is zero (the circle's start azimuth stays the convention it is). A tilt of the world
is no gauge here, since it would roll the cameras, and the cameras do not roll; nor is the mean elevation,
which the tracks fix as they fix the estimate's. Values the user gave are held: a given elevation keeps
every frame at it (only azimuths move), a given fov keeps the focal length.

**Why `scipy.optimize.least_squares`.** A trust-region solver ("trf") with a robust loss and a sparse
Jacobian pattern is exactly this problem's shape: every residual depends on one frame's two angles, one
track's point and the focal length, so finite differences need only a handful of grouped evaluations per
Jacobian and LSMR solves the sparse normal equations, no Schur complement to write by hand. The loss is
``soft_l1`` (smooth, linear for large residuals): a track the tracker got wrong (a T-junction where one
part of the object passes in front of another) pulls with a bounded force instead of a squared one, then
the next passes drop the observations still far off. (Huber and Cauchy were tried: with them the solve
left the focal length where it started and missed more.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from recon.orbit_estimate import track_errors, triangulate
from recon.poses import Cameras, OrbitConfig, focal_from_fov, look_at_c2w, orbit_azimuths, orbit_positions
from recon.tracks import Tracks

LOSSES = ("linear", "huber", "soft_l1", "cauchy")  # scipy's robust losses that suit a reprojection error
# LSMR's stopping tolerances for each trust-region step: its defaults (1e-6) stop the inner solve early, and
# the outer iteration then crawls along the ill-conditioned valley of the focal length and the points'
# depths (measured: no convergence in 300 evaluations; with these, 45).
LSMR_TOLERANCES = {"atol": 1e-12, "btol": 1e-12}
MIN_OBSERVED_FRAMES = 3  # fewer frames seen by a track carry no orbit: the adjustment keeps the circle
# A photometric polish of bundle-adjusted poses (`recon.pose_refine`) at this share of its learning rates:
# at full rate it moved a 36-frame jitter's poses from 0.18 to 0.57 degree worst (300 iterations at 64 px),
# since each frame's few steps follow a still blurred model. Even at 0.1 it cost 1-2 dB of held-out PSNR,
# so `reconstruct` keeps the adjusted poses (`recon.api.fit_refines_poses`); benchmarks/bench_orbit.py
# --jitter-iterations still measures the polish.
POLISH_LR_SHARE = 0.1


def polish_rates(fit: Any) -> dict[str, float]:
    """The pose learning rates of `fit` (a `recon.fit.FitConfig`) for a fit that starts from bundle-adjusted
    poses: only a polish."""
    names = ("lr_pose_rotation", "lr_pose_translation", "lr_focal")
    return {name: getattr(fit, name) * POLISH_LR_SHARE for name in names}


@dataclass
class BundleConfig:
    """How the bundle adjustment weighs and stops (pixels are tracking pixels, `recon.tracks`)."""

    loss: str = "soft_l1"
    """Robust loss of `scipy.optimize.least_squares` (one of `LOSSES`); see the module docstring."""
    robust_px: float = 0.5
    """Residuals beyond this many pixels count linearly, not squared (the tracker's noise is ~0.2 px)."""
    noise_px: float = 0.2
    """The tracker's noise per coordinate, pixels (measured against ray-cast depth): the unit in which the
    prior below is weighed against the tracks."""
    prior_deg: float = 1.0
    """Each frame's azimuth and elevation are held near the estimated circle with this spread, degrees.
    Weak for a frame's own offset (tens of tracks pin it to hundredths of a degree), it holds the slow
    modes the tracks barely see: in an open orbit nothing links the last frame back to the first, so
    a ramp in azimuth along the orbit (with the focal length and the points' depths: the bas-relief
    ambiguity of short tracks) or a tilt of the whole orbit costs almost nothing."""
    outlier_factor: float = 2.0
    """Every pass after the first drops the observations whose error in the pass before was above this
    multiple of the median observation's. Observations, not whole tracks: a track slides where one part
    of the object passes in front of another, often for only a frame or two of its length (measured on
    the +-1 degree jitter benchmark: the worst frame of 36 went from 0.60 to 0.27 degree)."""
    max_evaluations: int = 100
    """Residual evaluations per pass (`max_nfev`); a pass usually stops before on `tolerance` (~45)."""
    tolerance: float = 1e-10
    """Relative change of the cost and the parameters that stops a pass (`ftol`, `xtol`)."""
    passes: int = 4
    """Solves; every pass after the first drops the outlier observations of the one before."""

    def validate(self) -> BundleConfig:
        if self.loss not in LOSSES:
            raise ValueError(f"bundle loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.robust_px <= 0 or self.prior_deg <= 0 or self.outlier_factor <= 1 or self.passes < 1:
            raise ValueError("bundle robust_px and prior_deg must be > 0, outlier_factor > 1, passes >= 1")
        return self


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

    def cameras(self, width: int, height: int) -> Cameras:
        """The adjusted cameras for frames of `width` x `height` pixels."""
        c2w = look_at_c2w(orbit_positions(self.azimuth, self.elevation, self.orbit.radius))
        focal = focal_from_fov(self.orbit.fov, height) * self.focal_scale
        return Cameras(c2w, focal, focal, width / 2.0, height / 2.0, width, height)

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        d_az = self.azimuth - orbit_azimuths(len(self.azimuth), self.orbit)
        d_el = self.elevation - self.orbit.elevation
        fov = 2.0 * math.degrees(math.atan(math.tan(math.radians(self.orbit.fov) / 2.0) / self.focal_scale))
        return (
            f"bundle adjustment: {len(self.azimuth)} frames moved up to {np.abs(d_az).max():.2f} deg in "
            f"azimuth and {np.abs(d_el).max():.2f} in elevation, fov {fov:.1f}; {self.tracks_used} tracks, "
            f"RMS error {self.rms_before_px:.2f} -> {self.rms_after_px:.2f} px; {self.seconds:.1f} s"
        )

    def report(self) -> dict[str, Any]:
        """The JSON-able record for report.json (the per-frame corrections are added by the caller)."""
        return {
            "method": "bundle adjustment of the point tracks: per-frame azimuth and elevation on the orbit's "
            "sphere, the focal length and the tracks' points, robust reprojection error",
            "rms_before_px": round(self.rms_before_px, 4),
            "rms_after_px": round(self.rms_after_px, 4),
            "tracks_used": self.tracks_used,
            "tracks": self.tracks,
            "seconds": round(self.seconds, 2),
        }


def project(
    points: np.ndarray, azimuth: np.ndarray, elevation: np.ndarray, radius: float, focal: float,
    centre: tuple[float, float],
) -> np.ndarray:  # fmt: skip
    """Pixels [k, 2] of world `points` [k, 3] seen by look-at cameras at (`azimuth`, `elevation`) [k]
    (radians) on the sphere of `radius`, +Z up, no roll (`recon.poses` conventions)."""
    ca, sa, ce, se = np.cos(azimuth), np.sin(azimuth), np.cos(elevation), np.sin(elevation)
    back = np.stack([ce * ca, ce * sa, se], -1)  # the camera's +z (OpenGL), away from the centre
    right = np.stack([-sa, ca, np.zeros_like(ca)], -1)
    up = np.cross(back, right)
    d = points - radius * back
    depth = np.maximum(-(d * back).sum(-1), 1e-6)  # a point behind the camera reprojects far away
    u = centre[0] + focal * (d * right).sum(-1) / depth
    v = centre[1] - focal * (d * up).sum(-1) / depth
    return np.stack([u, v], -1)


class _Problem:
    """The residuals of one set of tracks and their sparse Jacobian pattern.

    Parameters, in order: the azimuths of frames 1..N-1 (frame 0's is held: the gauge), the elevations
    (none when the elevation is held), the log focal scale (none when the fov is held), the points.
    """

    def __init__(
        self, tracks: Tracks, nominal_az: np.ndarray, orbit: OrbitConfig, free_elevation: bool,
        free_focal: bool, cfg: BundleConfig,
    ) -> None:  # fmt: skip
        from scipy.sparse import lil_matrix

        self.n = n = len(nominal_az)
        self.nominal_az = np.radians(nominal_az)
        self.nominal_el = math.radians(orbit.elevation)
        self.radius = orbit.radius
        self.focal = focal_from_fov(orbit.fov, tracks.height)
        self.centre = (tracks.width / 2.0, tracks.height / 2.0)
        valid = tracks.valid
        self.obs_track = np.nonzero(valid)[0]
        self.obs_frame = tracks.frames[valid]
        self.obs_uv = tracks.uv[valid]
        self.t = len(tracks)
        self.free_elevation, self.free_focal = free_elevation, free_focal
        self.n_az, self.n_el, self.n_f = n - 1, n if free_elevation else 0, int(free_focal)
        self.n_cam = self.n_az + self.n_el + self.n_f
        self.prior_scale = cfg.noise_px / math.radians(cfg.prior_deg)  # MAP weight against the tracks
        k = len(self.obs_track)
        rows = 2 * k + self.n_az + self.n_el
        pattern = lil_matrix((rows, self.n_cam + 3 * self.t), dtype=np.int8)
        obs_rows = np.arange(2 * k)
        obs = np.repeat(np.arange(k), 2)
        az_col = self.obs_frame[obs] - 1
        has_az = az_col >= 0
        pattern[obs_rows[has_az], az_col[has_az]] = 1
        if free_elevation:
            pattern[obs_rows, self.n_az + self.obs_frame[obs]] = 1
        if free_focal:
            pattern[obs_rows, self.n_az + self.n_el] = 1
        for c in range(3):
            pattern[obs_rows, self.n_cam + 3 * self.obs_track[obs] + c] = 1
        prior = 2 * k + np.arange(self.n_az + self.n_el)
        pattern[prior, np.arange(self.n_az + self.n_el)] = 1
        self.pattern = pattern.tocsr()

    def unpack(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        """Azimuths and elevations [N] (radians), focal length (px), points [T, 3]."""
        az = np.concatenate([self.nominal_az[:1], x[: self.n_az]])
        held = np.full(self.n, self.nominal_el)
        el = x[self.n_az : self.n_az + self.n_el] if self.free_elevation else held
        focal = self.focal * (math.exp(x[self.n_az + self.n_el]) if self.free_focal else 1.0)
        return az, el, focal, x[self.n_cam :].reshape(-1, 3)

    def pack(self, az: np.ndarray, el: np.ndarray, log_focal: float, points: np.ndarray) -> np.ndarray:
        parts = [az[1:]]
        if self.free_elevation:
            parts.append(el)
        if self.free_focal:
            parts.append([log_focal])
        return np.concatenate([*parts, points.ravel()])

    def reprojection(self, x: np.ndarray) -> np.ndarray:
        """Reprojection error [k, 2] of every observation, pixels."""
        az, el, focal, points = self.unpack(x)
        f = self.obs_frame
        return project(points[self.obs_track], az[f], el[f], self.radius, focal, self.centre) - self.obs_uv

    def residuals(self, x: np.ndarray) -> np.ndarray:
        az, el, _, _ = self.unpack(x)
        prior = [(az[1:] - self.nominal_az[1:]) * self.prior_scale]
        if self.free_elevation:
            prior.append((el - self.nominal_el) * self.prior_scale)
        return np.concatenate([self.reprojection(x).ravel(), *prior])

    def track_rms(self, x: np.ndarray) -> np.ndarray:
        """Per-track RMS reprojection error [T], pixels."""
        sq = (self.reprojection(x) ** 2).sum(-1)
        total = np.bincount(self.obs_track, sq, minlength=self.t)
        count = np.bincount(self.obs_track, minlength=self.t)
        return np.sqrt(total / np.maximum(count, 1))


def _trimmed(tracks: Tracks, errors: np.ndarray, cfg: BundleConfig) -> Tracks:
    """`tracks` without the observations whose reprojection error (`errors` [k], one per valid entry in
    row-major order) is above `cfg.outlier_factor` times the median, and without the tracks that leaves
    shorter than `MIN_OBSERVED_FRAMES`."""
    frames = tracks.frames.copy()
    rows, cols = np.nonzero(tracks.valid)
    far = errors > cfg.outlier_factor * np.median(errors)
    frames[rows[far], cols[far]] = -1
    kept = Tracks(frames, tracks.uv, tracks.width, tracks.height)
    return _subset(kept, np.flatnonzero(kept.valid.sum(1) >= MIN_OBSERVED_FRAMES))


def _subset(tracks: Tracks, keep: np.ndarray) -> Tracks:
    return Tracks(tracks.frames[keep], tracks.uv[keep], tracks.width, tracks.height)


def adjust(
    tracks: Tracks, n: int, orbit: OrbitConfig, fixed: dict[str, Any] | None = None,
    cfg: BundleConfig | None = None,
) -> BundleResult:  # fmt: skip
    """Adjust every frame's azimuth and elevation and the focal length of the `n` frames on `orbit` to the
    `tracks` (see the module docstring); `fixed` holds the orbit values the user gave, kept exactly."""
    from scipy.optimize import least_squares

    cfg = (cfg or BundleConfig()).validate()
    fixed = fixed or {}
    t0 = time.perf_counter()
    nominal_az = orbit_azimuths(n, orbit)
    free_el, free_focal = "elevation" not in fixed, "fov" not in fixed
    keep = (tracks.valid.sum(1) >= MIN_OBSERVED_FRAMES) & (
        (np.where(tracks.valid, tracks.frames, 0) < n).all(1)
    )
    current = _subset(tracks, np.flatnonzero(keep))
    az = np.radians(nominal_az)
    el = np.full(n, math.radians(orbit.elevation))
    log_focal, errors, far_off = 0.0, np.zeros(0), np.zeros(0)
    if len(current) == 0:
        return BundleResult(nominal_az, np.degrees(el), 1.0, orbit, float("nan"), float("nan"), 0,
                            len(tracks), time.perf_counter() - t0)  # fmt: skip
    for k in range(cfg.passes):
        if k:  # drop the observations the last pass left far off
            current = _trimmed(current, far_off, cfg)
        problem = _Problem(current, nominal_az, orbit, free_el, free_focal, cfg)
        points = triangulate(current, _c2w(az, el, orbit.radius), problem.focal * math.exp(log_focal))
        solution = least_squares(
            problem.residuals, problem.pack(az, el, log_focal, points), jac_sparsity=problem.pattern,
            method="trf", tr_solver="lsmr", tr_options=LSMR_TOLERANCES, loss=cfg.loss, f_scale=cfg.robust_px,
            x_scale="jac", max_nfev=cfg.max_evaluations, ftol=cfg.tolerance, xtol=cfg.tolerance,
        )  # fmt: skip
        az, el, focal, _ = problem.unpack(solution.x)
        log_focal = math.log(focal / problem.focal)
        errors = problem.track_rms(solution.x)
        far_off = np.linalg.norm(problem.reprojection(solution.x), axis=-1)
    # How well the kept tracks agree, on the circle (each triangulated with it) and after.
    on_circle = _c2w(np.radians(nominal_az), np.full(n, math.radians(orbit.elevation)), orbit.radius)
    before = track_errors(current, on_circle, problem.focal)
    # The gauge: a common turn about +Z moves no pixel; keep the mean azimuth correction at zero.
    azimuth = np.degrees(az)
    azimuth -= float(np.mean(azimuth - nominal_az))
    return BundleResult(
        azimuth, np.degrees(el), math.exp(log_focal), orbit, float(np.sqrt(np.mean(before**2))),
        float(np.sqrt(np.mean(errors**2))), len(current), len(tracks), time.perf_counter() - t0,
    )  # fmt: skip


def _c2w(az: np.ndarray, el: np.ndarray, radius: float) -> np.ndarray:
    """Look-at cameras at azimuths and elevations [N] (radians) on the sphere of `radius`."""
    return look_at_c2w(orbit_positions(np.degrees(az), np.degrees(el), radius))
