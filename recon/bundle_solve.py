"""The bundle adjustment's robust least-squares solve (`recon.bundle` says what it is for and checks it).

Every frame's camera on the orbit (`OrbitPath`: azimuth, elevation, distance) and the shared focal scale,
with every track's 3D point, fitted to the tracks' pixels under the priors of `recon.bundle`'s docstring
(`Problem`: the residuals, their sparse Jacobian pattern and the bounds); `solve` runs the passes, each
after the first without the observations the one before left far off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from recon.bundle_config import BundleConfig
from recon.orbit_estimate import triangulate
from recon.poses import OrbitConfig, focal_from_fov, look_at_c2w, orbit_positions
from recon.tracks import Tracks

# LSMR's stopping tolerances for each trust-region step: its defaults (1e-6) stop the inner solve early, and
# the outer iteration then crawls along the ill-conditioned valley of the focal length and the points'
# depths (measured: no convergence in 300 evaluations; with these, 45).
LSMR_TOLERANCES = {"atol": 1e-12, "btol": 1e-12}
MIN_OBSERVED_FRAMES = 3  # fewer frames seen by a track carry no orbit: the adjustment keeps the circle


def project(
    points: np.ndarray, azimuth: np.ndarray, elevation: np.ndarray, radius: np.ndarray | float, focal: float,
    centre: tuple[float, float],
) -> np.ndarray:  # fmt: skip
    """Pixels [k, 2] of world `points` [k, 3] seen by look-at cameras at (`azimuth`, `elevation`) [k]
    (radians) and distance `radius` (one, or [k]) from the centre, +Z up, no roll (`recon.poses`
    conventions)."""
    ca, sa, ce, se = np.cos(azimuth), np.sin(azimuth), np.cos(elevation), np.sin(elevation)
    back = np.stack([ce * ca, ce * sa, se], -1)  # the camera's +z (OpenGL), away from the centre
    right = np.stack([-sa, ca, np.zeros_like(ca)], -1)
    up = np.cross(back, right)
    d = points - np.reshape(radius, (-1, 1)) * back
    depth = np.maximum(-(d * back).sum(-1), 1e-6)  # a point behind the camera reprojects far away
    u = centre[0] + focal * (d * right).sum(-1) / depth
    v = centre[1] - focal * (d * up).sum(-1) / depth
    return np.stack([u, v], -1)


@dataclass
class Channel:
    """One per-frame camera value the solve moves: its nominal value, which frames are free, its priors."""

    name: str
    nominal: np.ndarray  # [N] radians, or log distance
    first: int  # frames before this are held at the nominal value (frame 0 of azimuth and distance: gauges)
    circle: float  # spread of the offset from the circle
    smooth: float  # spread of the offset's second difference
    bound: float  # |offset| at most
    path: float = 0.0  # spread of the offset from its low-order smooth path (`smooth_path_basis`); 0: none


@dataclass
class Priors:
    """The priors' spreads (radians; log distance; log focal for the lens) and the bounds they imply."""

    circle: float
    smooth: float
    lens: float  # spread of the log focal scale
    lens_bound: float  # |log focal scale| at most
    azimuth_bound: float
    elevation_bound: float
    distance: float  # spread of the log distance's offset
    distance_smooth: float
    distance_bound: float
    path: float  # spread of each angle's offset from its low-order smooth path (0: no such prior)
    harmonics: int  # that path's harmonics over the video's frames (a turn, for a full orbit)

    def widened(self, factor: float) -> Priors:
        """These priors with the lens's spread and bound `factor` times wider."""
        return replace(self, lens=self.lens * factor, lens_bound=self.lens_bound * factor)

    @classmethod
    def of(cls, cfg: BundleConfig, orbit: OrbitConfig, fov_uncertainty: float | None) -> Priors:
        fov_sigma = cfg.lens_default_deg if fov_uncertainty is None else fov_uncertainty
        fov_sigma = max(fov_sigma, cfg.lens_floor_deg)
        # d log(focal) / d fov = -1 / sin(fov): the fov's spread as a spread of the log focal length.
        lens = math.radians(fov_sigma) / math.sin(math.radians(orbit.fov))
        return cls(math.radians(cfg.prior_deg), math.radians(cfg.smooth_deg), lens, cfg.lens_bound * lens,
                   math.radians(cfg.max_azimuth_deg), math.radians(cfg.max_elevation_deg),
                   cfg.distance_prior, cfg.distance_smooth, cfg.max_distance, math.radians(cfg.path_deg),
                   cfg.path_harmonics)  # fmt: skip


class Problem:
    """The residuals of one set of tracks, their sparse Jacobian pattern and the parameters' bounds.

    Parameters, in order: each `Channel`'s free frames (azimuth from frame 1: frame 0's is the gauge;
    elevation, unless held; log distance from frame 1: frame 0's is the scale gauge), the log focal scale
    (unless held), the smooth path's coefficients of each angle (when `Priors.path` is on), the points.
    Residual rows: two per observation; per channel, the circle prior (one per free frame), the smoothness
    prior (one per inner frame) and, for the angles, the smooth-path prior (one per frame); the lens prior
    (one, when the lens is free).
    """

    def __init__(
        self, tracks: Tracks, nominal_az: np.ndarray, orbit: OrbitConfig, free_elevation: bool,
        free_focal: bool, cfg: BundleConfig, priors: Priors,
    ) -> None:  # fmt: skip
        from scipy.sparse import lil_matrix

        self.n = n = len(nominal_az)
        p = priors
        az = np.radians(nominal_az)
        channels = [Channel("azimuth", az, 1, p.circle, p.smooth, p.azimuth_bound, p.path)]
        if free_elevation:
            el = np.full(n, math.radians(orbit.elevation))
            channels.append(Channel("elevation", el, 0, p.circle, p.smooth, p.elevation_bound, p.path))
        if cfg.free_distance:
            log_r = np.full(n, math.log(orbit.radius))
            channels.append(Channel("distance", log_r, 1, p.distance, p.distance_smooth, p.distance_bound))
        self.channels = channels
        self.nominal_el = math.radians(orbit.elevation)
        self.radius = orbit.radius
        self.focal = focal_from_fov(orbit.fov, tracks.height)
        self.centre = (tracks.width / 2.0, tracks.height / 2.0)
        valid = tracks.valid
        self.obs_track = np.nonzero(valid)[0]
        self.obs_frame = tracks.frames[valid]
        self.obs_uv = tracks.uv[valid]
        self.t = len(tracks)
        self.free_focal = free_focal
        self.priors = priors
        self.noise = cfg.noise_px  # MAP weights: priors in units of the tracker's noise
        # Column of every channel's frame (-1: held).
        self.columns, col = {}, 0
        for ch in channels:
            cols = np.full(n, -1)
            cols[ch.first :] = col + np.arange(n - ch.first)
            self.columns[ch.name] = cols
            col += n - ch.first
        self.focal_col = col if free_focal else -1
        col += int(free_focal)
        # The smooth path's coefficients: parameters of their own, so that each path residual depends on one
        # frame and a few coefficients and the Jacobian stays sparse (the projection onto the basis written
        # out would make every path residual depend on every frame).
        self.basis = smooth_path_basis(n, p.harmonics)
        self.path_columns = {}
        for ch in channels:
            if ch.path > 0:
                self.path_columns[ch.name] = col + np.arange(self.basis.shape[1])
                col += self.basis.shape[1]
        self.n_cam = col

        k = len(self.obs_track)
        n_inner = max(n - 2, 0)
        path_rows = n * len(self.path_columns)
        rows = 2 * k + sum(n - ch.first + n_inner for ch in channels) + path_rows + int(free_focal)
        pattern = lil_matrix((rows, self.n_cam + 3 * self.t), dtype=np.int8)
        obs_rows = np.arange(2 * k)
        obs_frames = self.obs_frame[np.repeat(np.arange(k), 2)]
        for ch in channels:
            cols = self.columns[ch.name][obs_frames]
            pattern[obs_rows[cols >= 0], cols[cols >= 0]] = 1
        if free_focal:
            pattern[obs_rows, self.focal_col] = 1
        for c in range(3):
            pattern[obs_rows, self.n_cam + 3 * self.obs_track[np.repeat(np.arange(k), 2)] + c] = 1
        row = 2 * k
        inner = np.arange(1, n - 1)
        for ch in channels:
            cols = self.columns[ch.name]
            free = cols[cols >= 0]
            pattern[row + np.arange(len(free)), free] = 1
            row += len(free)
            for offset in (-1, 0, 1):  # frame i-1, i, i+1 of each inner frame i
                c = cols[inner + offset]
                pattern[row + np.arange(n_inner)[c >= 0], c[c >= 0]] = 1
            row += n_inner
            if ch.name in self.path_columns:  # frame i's offset and every coefficient of its path
                frames = np.arange(n)
                pattern[row + frames[cols >= 0], cols[cols >= 0]] = 1
                pattern[row : row + n, self.path_columns[ch.name]] = 1
                row += n
        if free_focal:
            pattern[row, self.focal_col] = 1
        self.pattern = pattern.tocsr()

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of the parameters (`Priors`: the worst case stays safe)."""
        low = [ch.nominal[ch.first :] - ch.bound for ch in self.channels]
        high = [ch.nominal[ch.first :] + ch.bound for ch in self.channels]
        if self.free_focal:
            low.append([-self.priors.lens_bound])
            high.append([self.priors.lens_bound])
        unbounded = np.full(3 * self.t + self.n_coefficients, np.inf)  # the path's coefficients, the points
        return np.concatenate([*low, -unbounded]), np.concatenate([*high, unbounded])

    def unpack(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], float, np.ndarray]:
        """Every channel's values [N], the focal length (px), the points [T, 3]."""
        values, col = {}, 0
        for ch in self.channels:
            free = self.n - ch.first
            values[ch.name] = np.concatenate([ch.nominal[: ch.first], x[col : col + free]])
            col += free
        focal = self.focal * (math.exp(x[self.focal_col]) if self.free_focal else 1.0)
        return values, focal, x[self.n_cam :].reshape(-1, 3)

    @property
    def n_coefficients(self) -> int:
        return sum(len(c) for c in self.path_columns.values())

    def path(self, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Azimuths, elevations (radians) and distances [N] of `unpack`'s channel values."""
        el = values.get("elevation", np.full(self.n, self.nominal_el))
        radius = np.exp(values["distance"]) if "distance" in values else np.full(self.n, self.radius)
        return values["azimuth"], el, radius

    def pack(self, path: OrbitPath, points: np.ndarray) -> np.ndarray:
        """The parameter vector of a path and points, clipped just inside the bounds (the solver's start
        must be feasible)."""
        given = {"azimuth": path.az, "elevation": path.el, "distance": np.log(path.radius)}
        parts = [given[ch.name][ch.first :] for ch in self.channels]
        if self.free_focal:
            parts.append([path.log_focal])
        for ch in self.channels:  # the path through the start's offsets
            if ch.name in self.path_columns:
                parts.append(np.linalg.lstsq(self.basis, given[ch.name] - ch.nominal, rcond=None)[0])
        x = np.concatenate([*parts, points.ravel()])
        low, high = self.bounds()
        margin = 1e-9
        return np.clip(x, low + margin, high - margin)

    def reprojection(self, x: np.ndarray) -> np.ndarray:
        """Reprojection error [k, 2] of every observation, pixels."""
        values, focal, points = self.unpack(x)
        az, el, radius = self.path(values)
        f = self.obs_frame
        return project(points[self.obs_track], az[f], el[f], radius[f], focal, self.centre) - self.obs_uv

    def residuals(self, x: np.ndarray) -> np.ndarray:
        values, focal, _ = self.unpack(x)
        w = self.noise
        rows = [self.reprojection(x).ravel()]
        for ch in self.channels:
            offset = values[ch.name] - ch.nominal
            rows += [offset[ch.first :] * (w / ch.circle), np.diff(offset, 2) * (w / ch.smooth)]
            if ch.name in self.path_columns:
                rows.append((offset - self.basis @ x[self.path_columns[ch.name]]) * (w / ch.path))
        if self.free_focal:
            rows.append([math.log(focal / self.focal) * (w / self.priors.lens)])
        return np.concatenate(rows)

    def track_rms(self, x: np.ndarray) -> np.ndarray:
        """Per-track RMS reprojection error [T], pixels."""
        sq = (self.reprojection(x) ** 2).sum(-1)
        total = np.bincount(self.obs_track, sq, minlength=self.t)
        count = np.bincount(self.obs_track, minlength=self.t)
        return np.sqrt(total / np.maximum(count, 1))


def smooth_path_basis(n: int, harmonics: int) -> np.ndarray:
    """[n, m]: the low-order paths a frame's offset may follow: a constant, a linear drift over the video
    and `harmonics` cosines and sines over its frames (per turn, for a full orbit; m = 2 + 2 * harmonics,
    at most n - 1 columns)."""
    t = np.arange(n) / n
    columns = [np.ones(n), t - 0.5]
    for k in range(1, harmonics + 1):
        columns += [np.cos(2 * np.pi * k * t), np.sin(2 * np.pi * k * t)]
    return np.stack(columns[: max(1, n - 1)], 1)


def trimmed(tracks: Tracks, errors: np.ndarray, cfg: BundleConfig) -> Tracks:
    """`tracks` without the observations whose reprojection error (`errors` [k], one per valid entry in
    row-major order) is above `cfg.outlier_factor` times the median, and without the tracks that leaves
    shorter than `MIN_OBSERVED_FRAMES`."""
    frames = tracks.frames.copy()
    rows, cols = np.nonzero(tracks.valid)
    far = errors > cfg.outlier_factor * np.median(errors)
    frames[rows[far], cols[far]] = -1
    kept = Tracks(frames, tracks.uv, tracks.width, tracks.height)
    return subset(kept, np.flatnonzero(kept.valid.sum(1) >= MIN_OBSERVED_FRAMES))


def covering(tracks: Tracks, order: np.ndarray, n: int, cfg: BundleConfig) -> np.ndarray:
    """At most `cfg.max_tracks` indices of `tracks` from `order` (a random order): first every track that
    sees a frame still short of `cfg.min_frame_observations`, then the rest in order (see the config)."""
    seen = np.zeros(n, dtype=int)
    first: list[int] = []
    for i in order:
        frames = tracks.frames[i][tracks.valid[i]]
        if len(first) < cfg.max_tracks and (seen[frames] < cfg.min_frame_observations).any():
            first.append(int(i))
            seen[frames] += 1
    taken = np.zeros(len(tracks), dtype=bool)
    taken[first] = True
    rest = order[~taken[order]]
    return np.concatenate([np.asarray(first, dtype=int), rest[: cfg.max_tracks - len(first)]])


def subset(tracks: Tracks, keep: np.ndarray) -> Tracks:
    return Tracks(tracks.frames[keep], tracks.uv[keep], tracks.width, tracks.height)


@dataclass
class OrbitPath:
    """Every frame's camera on the orbit: azimuth and elevation (radians), distance; the log focal scale."""

    az: np.ndarray
    el: np.ndarray
    radius: np.ndarray
    log_focal: float = 0.0

    @classmethod
    def circle(cls, nominal_az: np.ndarray, orbit: OrbitConfig) -> OrbitPath:
        n = len(nominal_az)
        return cls(
            np.radians(nominal_az), np.full(n, math.radians(orbit.elevation)), np.full(n, orbit.radius)
        )

    def c2w(self) -> np.ndarray:
        """Look-at cameras [N, 4, 4] (OpenGL axes)."""
        return look_at_c2w(positions(self.az, self.el, self.radius))


@dataclass
class Solution:
    """One solve's path, and the tracks its last pass kept with their RMS error."""

    path: OrbitPath
    kept: Tracks
    rms_px: float


def solve(
    tracks: Tracks, nominal_az: np.ndarray, orbit: OrbitConfig, free_el: bool, free_focal: bool,
    cfg: BundleConfig, priors: Priors,
) -> Solution:  # fmt: skip
    """Passes of the robust solve, each after the first without the last one's outlier observations."""
    from scipy.optimize import least_squares

    path = OrbitPath.circle(nominal_az, orbit)
    current, far_off, errors = tracks, np.zeros(0), np.zeros(0)
    for k in range(cfg.passes):
        if k:  # drop the observations the last pass left far off
            current = trimmed(current, far_off, cfg)
        problem = Problem(current, nominal_az, orbit, free_el, free_focal, cfg, priors)
        points = triangulate(current, path.c2w(), problem.focal * math.exp(path.log_focal))
        solution = least_squares(
            problem.residuals, problem.pack(path, points), jac_sparsity=problem.pattern,
            bounds=problem.bounds(), method="trf", tr_solver="lsmr", tr_options=LSMR_TOLERANCES,
            loss=cfg.loss, f_scale=cfg.robust_px, x_scale="jac", max_nfev=cfg.max_evaluations,
            ftol=cfg.tolerance, xtol=cfg.tolerance,
        )  # fmt: skip
        values, focal, _ = problem.unpack(solution.x)
        path = OrbitPath(*problem.path(values), math.log(focal / problem.focal))
        errors = problem.track_rms(solution.x)
        far_off = np.linalg.norm(problem.reprojection(solution.x), axis=-1)
    return Solution(path, current, float(np.sqrt(np.mean(errors**2))))


def positions(az: np.ndarray, el: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Camera centres [N, 3] at azimuths and elevations [N] (radians) and distances [N]: `orbit_positions`
    on the unit sphere, each frame scaled by its own distance."""
    return radius[:, None] * orbit_positions(np.degrees(az), np.degrees(el), 1.0)
