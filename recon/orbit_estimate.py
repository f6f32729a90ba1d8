"""Find an orbit's camera from its frames: elevation, vertical field of view, direction, loop closure.

Droplet3D publishes no camera for its orbits, and turntable videos come with none either. The fit trusts
the orbit exactly (the visual hull is carved with it), so a few degrees of error ruin the asset. This
module estimates the orbit from the frames before any splat is fitted.

**The gauge.** Images fix a camera only up to a similarity of the world: a scale, and a rotation about
the orbit's axis. Both are fixed by convention and the rest is estimated:

* ``radius`` stays at its preset (2.0 world units) and the object's size follows from it. An orbit
  filmed at distance d is described exactly by radius 2 and the object scaled by 2 / d; elevation and
  field of view do not change under that rescaling, so they are well defined and are estimated. At a
  fixed radius the field of view is *not* degenerate with the object's size: a wider lens at the same
  distance is a stronger perspective (the near side of the object sweeps across the frame faster than
  the far side), which point tracks measure.
* ``start_azimuth`` stays at its preset (frame 0 on +X): a rotation about +Z is invisible in the frames.

**How.** Silhouettes (`recon.background`) say where the object is; corners on it are tracked from frame
to frame (`recon.tracks`). A candidate orbit (elevation, fov, direction) gives every frame's camera;
each track is triangulated with them (the point closest to its rays) and reprojected, and the candidate's
cost is a robust mean (Geman-McClure, `ROBUST_PX`) of the tracks' reprojection errors. The true orbit
explains every track to the tracker's noise; a wrong elevation bends the projected circles, a wrong
lens gets the near/far speeds wrong, and the wrong direction cannot triangulate at all. A coarse grid
over both directions and the whole ranges finds the basin, Nelder-Mead the minimum. (Silhouettes alone
were tried first: a turntable seen from one elevation leaves a whole family of shapes consistent with
every silhouette, and a 10-degree elevation error moved the visual hull's silhouette IoU by less than
its voxel noise.)

Whether the last frame closes the loop (``full_turn``) is read from the pixels: the last frame then
repeats the first, so their difference is far below that of neighbouring frames.

**Uncertainty.** The spread (standard deviation) of the estimate over bootstrap resamples of the tracks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from recon.background import find_background
from recon.errors import ReconError
from recon.poses import GL_TO_CV, OrbitConfig, orbit_cameras
from recon.tracks import (
    FORWARD_BACKWARD_LOOSE_PX,
    FORWARD_BACKWARD_PX,
    START_EVERY,
    TrackingVideo,
    Tracks,
    track_pair,
)

ESTIMATED = ("elevation", "fov", "direction", "full_turn")  # the orbit values this module can estimate
SILHOUETTE_SIDE = 64  # px: silhouettes only say where to look for corners
# Closing the loop: the last frame repeats the first when their difference is below this share of the
# median difference between neighbouring frames (a generated video's frames still differ a little).
FULL_TURN_RATIO = 0.35
# Where the tracks' fov spread is at least this (degrees), the silhouettes set the lens and elevation
# (`recon.silhouette`): a texture-poor object's tracks (tens of corners, many of them sliding T-junctions)
# put the tree's smooth scene 4.5 degrees wide with a spread of 2.8 (3.8 with every degradation on). On a
# textured object the spread is 0.1-1.2 and the tracks are the better measure: silhouettes scored on the
# estimated circle suffer every frame's offset from it, and at a threshold of 1 they moved a 21-frame
# uneven turn's lens from +0.3 to -5.3 degrees.
SILHOUETTE_FOV_SPREAD = 2.0
# The silhouettes' sweeps span this many track spreads either side, and at least the floors (degrees).
SILHOUETTE_SPREADS, SILHOUETTE_FOV_SPAN, SILHOUETTE_ELEVATION_SPAN = 2.5, 3.0, 2.0
# The refined lens's reported uncertainty (the adjustment has run by then): the error the silhouettes left
# on the smooth scene (41.1 and 41.3 degrees for a true 40, from starts 4.5 and 7.3 off).
SILHOUETTE_FOV_DEG = 1.5
ROBUST_PX = 0.15  # scale of the robust cost, in tracking pixels: tracks off by more count as outliers
MIN_TRACKS = 20  # fewer tracks than this cannot fix an orbit (a textureless object): keep the preset
COARSE_TRACKS = 200  # tracks used by the coarse grid (all of them for the final minimum)
INLIER_FACTOR = 2.0  # the polish keeps tracks whose error is below this multiple of the median error
BOOTSTRAP = 6  # resamples of the tracks for the uncertainty
BOOTSTRAP_SEED = 0


@dataclass
class SearchConfig:
    """Where the search looks; angles in degrees."""

    elevation_range: tuple[float, float] = (-10.0, 60.0)  # orbits beyond these are not turntables
    fov_range: tuple[float, float] = (15.0, 75.0)  # telephoto to wide-angle
    coarse_step: float = 2.5  # grid step of the first pass over the whole ranges
    local_span: float = 8.0  # starting values (--refine) confine the search to this far from them
    tolerance: float = 0.02  # Nelder-Mead stops when the simplex is this small, degrees


@dataclass
class OrbitEstimate:
    """The estimated orbit, how sure the search is, and what it cost."""

    orbit: OrbitConfig
    estimated: tuple[str, ...]  # which values came from the frames (the others were given)
    uncertainty: dict[str, float]  # degrees, bootstrap standard deviation
    cost: float  # robust mean reprojection cost of the best orbit (0 = every track exact, 1 = all outliers)
    median_error_px: float  # median track reprojection error at the best orbit, tracking pixels
    direction_margin: float  # cost of the best orbit of the other direction minus the best cost
    loop_ratio: float  # last-vs-first difference over the median neighbour difference
    tracks: int
    seconds: float
    note: str = ""  # why the estimate fell back to the given values, if it did
    # The point tracks it was read from (tracking pixels), for the bundle adjustment (`recon.bundle`).
    observed: Tracks | None = field(default=None, repr=False)
    # The forward-backward check of the tracks the orbit was scored on: the strict one, or the loose one
    # where too few tracks passed the strict one (`recon.tracks.FORWARD_BACKWARD_LOOSE_PX`).
    forward_backward_px: float = FORWARD_BACKWARD_PX
    # Where the tracks left the lens unsure, the silhouettes' refinement (`recon.silhouette`): the tracks'
    # values and spread, and the silhouette coherence before and after. Empty where it did not run.
    silhouettes: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """The JSON-able record for report.json."""
        return {
            "method": "point tracks triangulated by candidate orbits (coarse grid, then Nelder-Mead)",
            "estimated": list(self.estimated),
            "orbit": self.orbit.to_dict(),
            "uncertainty_deg": {k: round(v, 3) for k, v in self.uncertainty.items()},
            "cost": round(self.cost, 5),
            "median_error_px": round(self.median_error_px, 4),
            "direction_margin": round(self.direction_margin, 5),
            "loop_ratio": round(self.loop_ratio, 4),
            "tracks": self.tracks,
            "forward_backward_px": self.forward_backward_px,
            "seconds": round(self.seconds, 2),
            "note": self.note,
            "silhouettes": self.silhouettes,
            "gauge": "radius and start_azimuth are fixed by convention; the object's size follows the radius",
        }

    def _silhouette_note(self) -> str:
        if not self.silhouettes:
            return ""
        return f"; lens from silhouettes (tracks: fov {self.silhouettes['tracks']['fov']:.1f})"

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        o, u = self.orbit, self.uncertainty
        if self.note:
            return f"orbit estimate: {self.note}"
        return (
            f"orbit estimate: elevation {o.elevation:.1f} +- {u.get('elevation', 0.0):.1f} deg, "
            f"fov {o.fov:.1f} +- {u.get('fov', 0.0):.1f} deg, {o.direction}, "
            f"{'full turn' if o.full_turn else 'open loop'} (radius {o.radius:g} fixed; "
            f"{self.tracks} tracks{'' if self.forward_backward_px <= FORWARD_BACKWARD_PX else ' (loose)'}, "
            f"median error {self.median_error_px:.2f} px{self._silhouette_note()}; {self.seconds:.1f} s)"
        )


def object_masks(frames: np.ndarray, alpha: np.ndarray | None, side: int) -> np.ndarray:
    """The object's masks [N, h, w] of `frames` (and their `alpha`, when they had one) at `side` px."""
    from recon.fit import resize_frames

    small = resize_frames(frames, side)
    small_alpha = None if alpha is None else resize_frames(alpha[..., None], side)[..., 0]
    return find_background(small, small_alpha).masks


def closes_loop(frames: np.ndarray) -> float:
    """Difference of the last frame from the first over the median difference of neighbouring frames."""
    from recon.fit import resize_frames

    small = resize_frames(frames, SILHOUETTE_SIDE).astype(np.float32)
    neighbours = np.abs(np.diff(small, axis=0)).mean(axis=(1, 2, 3))
    closing = float(np.abs(small[-1] - small[0]).mean())
    return closing / max(float(np.median(neighbours)), 1e-6)


def triangulate(tracks: Tracks, c2w: np.ndarray, focal: float) -> np.ndarray:
    """Each track's 3D point [T, 3]: the point nearest to its rays through cameras `c2w`.

    `c2w` [N, 4, 4] (OpenGL axes) are the cameras of every frame; `focal` is in tracking pixels and the
    principal point is the image centre.
    """
    cx, cy = tracks.width / 2.0, tracks.height / 2.0
    valid = tracks.valid
    frames = np.clip(tracks.frames, 0, None)
    cams = c2w[frames]  # [T, L, 4, 4]
    x = (tracks.uv[..., 0] - cx) / focal
    y = -(tracks.uv[..., 1] - cy) / focal
    local = np.stack([x, y, -np.ones_like(x)], -1)
    d = (cams[..., :3, :3] @ np.nan_to_num(local)[..., None])[..., 0]
    d = d / np.linalg.norm(d, axis=-1, keepdims=True) * valid[..., None]
    origin = cams[..., :3, 3]
    proj = (np.eye(3) - d[..., :, None] * d[..., None, :]) * valid[..., None, None]
    a = proj.sum(1) + 1e-9 * np.eye(3)
    b = (proj @ origin[..., None])[..., 0].sum(1)
    return np.linalg.solve(a, b[..., None])[..., 0]


def track_errors(tracks: Tracks, c2w: np.ndarray, focal: float) -> np.ndarray:
    """Per-track RMS reprojection error [T] (pixels) after triangulating each track with cameras `c2w`
    (`triangulate`)."""
    cx, cy = tracks.width / 2.0, tracks.height / 2.0
    valid = tracks.valid
    frames = np.clip(tracks.frames, 0, None)
    points = triangulate(tracks, c2w, focal)  # [T, 3]
    view = np.linalg.inv(c2w @ GL_TO_CV)[frames]  # invert the N cameras once, not every observation
    pc = (view[..., :3, :3] @ points[:, None, :, None])[..., 0] + view[..., :3, 3]
    z = np.maximum(pc[..., 2], 1e-3)  # a point behind a camera reprojects far away
    err = np.hypot(
        focal * pc[..., 0] / z + cx - tracks.uv[..., 0], focal * pc[..., 1] / z + cy - tracks.uv[..., 1]
    )
    err = np.where(valid, np.nan_to_num(err, nan=1e3), 0.0)
    return np.sqrt((err**2).sum(1) / valid.sum(1))


def robust_cost(errors: np.ndarray) -> float:
    """Geman-McClure mean of per-track errors: smooth, and outlier tracks saturate at 1."""
    r2 = (errors / ROBUST_PX) ** 2
    return float(np.mean(r2 / (1.0 + r2)))


class _Problem:
    """The cost of candidate orbits on one set of tracks (the fixed values baked into `base`)."""

    def __init__(self, tracks: Tracks, n: int, base: OrbitConfig) -> None:
        self.tracks, self.n, self.base = tracks, n, base

    def errors(self, elevation: float, fov: float, direction: str) -> np.ndarray:
        # dataclasses.replace, not `updated`: this runs thousands of times and needs no validation.
        orbit = replace(self.base, elevation=float(elevation), fov=float(fov), direction=direction)
        cams = orbit_cameras(self.n, orbit, self.tracks.width, self.tracks.height)
        return track_errors(self.tracks, cams.c2w, cams.fy)

    def cost(self, elevation: float, fov: float, direction: str) -> float:
        if not (-89.0 < elevation < 89.0 and 1.0 < fov < 170.0):
            return 1.0
        return robust_cost(self.errors(elevation, fov, direction))


def _subset(tracks: Tracks, index: np.ndarray) -> Tracks:
    return Tracks(tracks.frames[index], tracks.uv[index], tracks.width, tracks.height)


def _minimise(
    problem: _Problem, start: tuple[float, float], direction: str, free: tuple[bool, bool],
    bounds: dict[str, tuple[float, float]], tolerance: float,
) -> tuple[float, float, float]:  # fmt: skip
    """Nelder-Mead over the free ones of (elevation, fov), clipped to `bounds`; returns (cost, el, fov)."""
    from scipy.optimize import minimize

    def unpack(x: np.ndarray) -> tuple[float, float]:
        values, k = list(start), 0
        for i, is_free in enumerate(free):
            if is_free:
                values[i] = x[k]
                k += 1
        return float(np.clip(values[0], *bounds["elevation"])), float(np.clip(values[1], *bounds["fov"]))

    x0 = np.array([v for v, is_free in zip(start, free, strict=True) if is_free])
    if len(x0) == 0:
        return problem.cost(*start, direction), *start
    result = minimize(
        lambda x: problem.cost(*unpack(x), direction), x0, method="Nelder-Mead",
        options={"xatol": tolerance, "fatol": 1e-7, "initial_simplex": None},
    )  # fmt: skip
    el, fov = unpack(result.x)
    return float(result.fun), el, fov


def search_bounds(
    fixed: dict[str, Any], starts: dict[str, Any], search: SearchConfig
) -> dict[str, tuple[float, float]]:
    """Where the elevation and the fov may lie: a given value is a point, a starting value a window."""
    bounds = {}
    for name, whole in (("elevation", search.elevation_range), ("fov", search.fov_range)):
        if name in fixed:
            bounds[name] = (float(fixed[name]),) * 2
        elif name in starts:
            bounds[name] = (float(starts[name]) - search.local_span, float(starts[name]) + search.local_span)
        else:
            bounds[name] = whole
    return bounds


def estimate_orbit(
    frames: np.ndarray,
    base: OrbitConfig,
    fixed: dict[str, Any] | None = None,
    starts: dict[str, Any] | None = None,
    alpha: np.ndarray | None = None,
    search: SearchConfig | None = None,
) -> OrbitEstimate:
    """Estimate the orbit values of `frames` [N, H, W, 3] uint8 that are not in `fixed`.

    `base` supplies the gauge (radius, start_azimuth); `fixed` holds values the user gave, kept exactly;
    `starts` holds given values that are only starting points: the search stays within
    `search.local_span` degrees of them and keeps their direction.
    """

    search = search or SearchConfig()
    fixed, starts = dict(fixed or {}), dict(starts or {})
    t0 = time.perf_counter()
    n = len(frames)
    base = base.updated({k: v for k, v in {**starts, **fixed}.items() if k in ESTIMATED})

    # 1. Loop closure from the pixels; silhouettes; tracks.
    loop_ratio = closes_loop(frames)
    if "full_turn" not in fixed:
        base = base.updated({"full_turn": bool(loop_ratio < FULL_TURN_RATIO)})
    masks = object_masks(frames, alpha, SILHOUETTE_SIDE)
    if masks.mean() < 1e-4:
        raise ReconError("no object found: every frame matches its background, so no orbit can be estimated")
    # For the bundle adjustment, tracks start on every frame (twice the observations of a frame the
    # object's darker side leaves few corners on) and go on across the seam (last frame to first). The
    # candidate orbits are scored on the tracks they always were: every START_EVERY-th start, cut at the seam.
    # The adjustment takes the tracks with the looser forward-backward check (`recon.tracks`).
    video, wrap_to = TrackingVideo.of(frames, masks), 1 if base.full_turn else 0
    strict, observed = track_pair(video, wrap_to=wrap_to, start_every=1, loose_px=FORWARD_BACKWARD_LOOSE_PX)
    tracks = strict.starting_every(START_EVERY).before_seam()
    checked_px = FORWARD_BACKWARD_PX
    if len(tracks) < MIN_TRACKS:
        # A small, noisy video (21 generated frames of 128 px, every degradation on: 15 strict tracks) is
        # better estimated from the loose tracks (44 there; worst frame 4.6 degrees after the adjustment)
        # than posed on the preset (8.7).
        tracks, checked_px = observed.starting_every(START_EVERY).before_seam(), FORWARD_BACKWARD_LOOSE_PX
    estimated = tuple(name for name in ESTIMATED if name not in fixed)
    if len(tracks) < MIN_TRACKS:
        note = (f"only {len(tracks)} point tracks on the object (a textureless object?): the orbit is not "
                "estimated; give --elevation and --fov")  # fmt: skip
        return OrbitEstimate(base.validate(), (), {}, 1.0, float("nan"), 0.0, loop_ratio, len(tracks),
                             time.perf_counter() - t0, note, forward_backward_px=checked_px)  # fmt: skip

    # 2. The ranges: a fixed value is a point, a starting value a window around it.
    bounds = search_bounds(fixed, starts, search)
    free = (bounds["elevation"][0] < bounds["elevation"][1], bounds["fov"][0] < bounds["fov"][1])
    fixed_direction = fixed.get("direction", starts.get("direction"))
    directions = [fixed_direction] if fixed_direction else ["ccw", "cw"]

    # 3. Coarse grid per direction on a subset of the tracks, then Nelder-Mead on all of them.
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    coarse = _Problem(_subset(tracks, rng.permutation(len(tracks))[:COARSE_TRACKS]), n, base)
    full = _Problem(tracks, n, base)

    def axis(name: str) -> np.ndarray:
        low, high = bounds[name]
        return np.array([low]) if low == high else np.arange(low, high + 1e-9, search.coarse_step)

    best: dict[str, tuple[float, float, float]] = {}
    for direction in directions:
        grid = [(coarse.cost(e, f, direction), e, f) for e in axis("elevation") for f in axis("fov")]
        _, el, fov = min(grid)
        best[direction] = _minimise(full, (el, fov), direction, free, bounds, search.tolerance)
    direction = min(best, key=lambda d: best[d][0])
    cost, el, fov = best[direction]
    margin = min((best[d][0] for d in best if d != direction), default=1.0) - cost

    # 4. Polish on the inliers of that estimate: tracks the tracker got wrong (T-junctions where one part
    #    passes in front of another, drift) pull a robust mean a degree or two; without them it is unbiased.
    errors = full.errors(el, fov, direction)
    inliers = _Problem(_subset(tracks, np.flatnonzero(errors < INLIER_FACTOR * np.median(errors))), n, base)
    _, el, fov = _minimise(inliers, (el, fov), direction, free, bounds, search.tolerance)

    # 5. Uncertainty: the spread over bootstrap resamples of the inlier tracks, from the estimate.
    samples = []
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, len(inliers.tracks), len(inliers.tracks))
        resample = _Problem(_subset(inliers.tracks, pick), n, base)
        samples.append(_minimise(resample, (el, fov), direction, free, bounds, search.tolerance)[1:])
    spread = np.std(np.array(samples), axis=0)
    uncertainty = {"elevation": float(spread[0]), "fov": float(spread[1])}
    orbit = base.updated({"elevation": round(el, 3), "fov": round(fov, 3), "direction": direction})
    median = float(np.median(full.errors(el, fov, direction)))

    # 6. For the bundle adjustment, the same video tracked backward too: a track lags its point along
    #    the motion, and backward tracks lag the other way (`recon.tracks`), so together they are unbiased.
    backward = track_pair(video, wrap_to, 1, backward=True, loose_px=FORWARD_BACKWARD_LOOSE_PX)[1]
    return OrbitEstimate(
        orbit.validate(), estimated, uncertainty, cost, median, margin, loop_ratio, len(tracks),
        time.perf_counter() - t0, observed=Tracks.concat(observed, backward), forward_backward_px=checked_px,
    )  # fmt: skip


def wants_silhouettes(estimate: OrbitEstimate) -> bool:
    """Whether the tracks left the lens too unsure (`SILHOUETTE_FOV_SPREAD`) and the frames should decide
    it by their silhouettes (`lens_from_silhouettes`)."""
    return (
        not estimate.note
        and "fov" in estimate.estimated
        and estimate.uncertainty["fov"] >= SILHOUETTE_FOV_SPREAD
    )


def lens_from_silhouettes(
    estimate: OrbitEstimate, frames: np.ndarray, fixed: dict[str, Any] | None = None,
    starts: dict[str, Any] | None = None, alpha: np.ndarray | None = None, search: SearchConfig | None = None,
) -> OrbitEstimate:  # fmt: skip
    """`estimate` with the fov (and the elevation, unless given) at the silhouettes' peak near the tracks'
    values (`recon.silhouette`). Scored on the estimated circle, so only for an orbit the circle explains:
    the caller asks once the bundle adjustment found no frame off it."""
    from recon.silhouette import COHERENCE_SIDE, refine_with_silhouettes

    t0 = time.perf_counter()
    orbit, spread = estimate.orbit, estimate.uncertainty
    bounds = search_bounds(dict(fixed or {}), dict(starts or {}), search or SearchConfig())
    masks = object_masks(frames, alpha, COHERENCE_SIDE)
    spans = {"fov": max(SILHOUETTE_SPREADS * spread["fov"], SILHOUETTE_FOV_SPAN)}
    if "elevation" in estimate.estimated:
        spans["elevation"] = max(SILHOUETTE_SPREADS * spread.get("elevation", 0.0), SILHOUETTE_ELEVATION_SPAN)
    refined, coherence = refine_with_silhouettes(masks, orbit, spans)
    # A given starting value's window (--refine) bounds the silhouettes as it bounds the tracks.
    values = {name: float(np.clip(getattr(refined, name), *bounds[name])) for name in spans}
    seconds = round(time.perf_counter() - t0, 2)
    record = {
        "tracks": {"elevation": orbit.elevation, "fov": orbit.fov, "fov_spread": round(spread["fov"], 3)},
        "coherence": {k: round(v, 5) for k, v in coherence.items()}, "seconds": seconds,
    }  # fmt: skip
    return replace(
        estimate, orbit=orbit.updated(values), silhouettes=record,
        uncertainty={**spread, "fov": min(spread["fov"], SILHOUETTE_FOV_DEG)},
    )  # fmt: skip
