"""The bundle adjustment's settings (`recon.bundle`): how it weighs, bounds, stops and checks itself.

Plain data, apart from the solve (`recon.bundle_solve`) and the check (`recon.bundle`) that read it, so
both take one definition of every value.
"""

from __future__ import annotations

from dataclasses import dataclass

LOSSES = ("linear", "huber", "soft_l1", "cauchy")  # scipy's robust losses that suit a reprojection error
MIN_CHECK_TRACKS = 8  # fewer held-out tracks than this cannot judge an adjustment: the circle is kept


@dataclass
@dataclass
class BundleConfig:
    """How the bundle adjustment weighs, bounds, stops and checks itself (pixels are tracking pixels)."""

    loss: str = "soft_l1"
    """Robust loss of `scipy.optimize.least_squares` (one of `LOSSES`); see the module docstring."""
    robust_px: float = 0.5
    """Residuals beyond this many pixels count linearly, not squared (the tracker's noise is ~0.2 px)."""
    noise_px: float = 0.2
    """The tracker's noise per coordinate, pixels (measured against ray-cast depth): the unit in which the
    priors below are weighed against the tracks."""
    prior_deg: float = 10.0
    """Each frame's azimuth and elevation are held near the estimated circle with this spread, degrees. Wide:
    a video model turns at an uneven speed, its frames 5-9 degrees off the uniform circle, and the smoothness
    prior below already holds the jumps; this one holds only the slow modes the tracks barely see (in an
    open orbit nothing links the last frame back to the first, so a ramp in azimuth along the orbit, with
    the focal length and the points' depths, or a tilt of the whole orbit costs the tracks almost nothing).
    Measured on a 21-frame uneven turn: worst frame 5.2 degrees off at a spread of 1, 2.4 at 5, 1.8 at 20;
    on the +-1 degree jitter, 0.59-0.62 at 1 and 0.57-0.62 at 10."""
    smooth_deg: float = 0.5
    """Spread of the second difference of each frame's offset from the circle, degrees: a frame may
    leave the line through its neighbours' offsets by about this much before the tracks must pay."""
    path_deg: float = 0.05
    """Spread of each frame's azimuth and elevation offset from a low-order smooth path through all of them
    (a constant, a linear drift and `path_harmonics` cosines and sines over the video's frames: per turn,
    for a full orbit), degrees. A video model's
    uneven speed and drifting elevation are slow over a turn; the second-difference prior above only holds
    frames to their neighbours, so where the tracks thin out (the back of a generated orbit, whose detail
    changes from frame to frame) the frames there wandered together, and the lens with them. This prior ties
    them to the path the whole orbit draws. Measured (`bench_generated.py`, 85 frames at 256 px, worst
    frame / fov error, degrees, off -> 0.05): every degradation on 1.85 / +0.83 -> 1.50 / +0.99; the
    texture-poor scene with every degradation 5.84 / +5.15 -> 2.90 / +2.50; speed alone 0.27 -> 0.18; zoom
    alone 0.33 -> 0.28. 0.02 and 0.2 were no better. 0 turns the prior off."""
    path_harmonics: int = 3
    """Harmonics of that smooth path over the video's frames (2 would be the benchmark's own uneven speed:
    no more than 0.2 degree better there, so the path is given room). 4 let the texture-poor scene's back
    wander again (worst frame 4.9 degrees)."""
    free_distance: bool = True
    """Each frame's distance from the centre moves too (frame 0's is held: the scale gauge). A video model's
    camera drifts in and out a little; on a circle of fixed radius that drift must be explained by wrong
    angles and a wrong lens."""
    distance_prior: float = 0.05
    """Spread of each frame's log distance from the circle's radius (5%)."""
    distance_smooth: float = 0.005
    """Spread of the second difference of the log distance (0.5% per frame)."""
    max_distance: float = 0.15
    """No frame's log distance leaves the circle's radius by more than this (about 15%)."""
    lens_floor_deg: float = 2.0
    """The lens prior's spread is the estimate's fov uncertainty, but never below this, degrees. The
    bootstrap spread measures the circle's fit, not the circle's error: on an uneven turn (speed +-7%) the
    estimate said 34.1 +- 0.3 for a true 36, and at a 0.25 floor the bound held the lens at 34.8. With
    every degradation of the generated-like benchmark on, the estimate said 45.4 +- 1.2 for a true 40; at a
    floor of 1 the bound (3 spreads) held the lens at 41.8, at 2 the tracks took it to 40.8 (floor 3: the
    same); the single-degradation cases moved by at most 0.02 degree of fov."""
    lens_widen: float = 2.5
    """Where the free lens ends at its bound, the tracks demand more than the estimate's spread allows:
    that candidate is solved again once with the lens prior's spread and bound this many times wider, and
    replaced by it only where the wider lens explains the held-out tracks better (the check below then
    judges it as any candidate). The estimate fits one circle, so an uneven turn biases its lens: with
    every degradation of the generated-like benchmark on (85 frames, 256 px, seed 1), it said 52.6 +- 2.0
    for a true 40, and the bound held the adjusted lens at 46.9 (worst frame 4.89 degrees); widened 2.5
    times, 40.5 (1.18 degrees). 1 turns it off."""
    lens_default_deg: float = 2.0
    """The lens prior's spread when the estimate gave no uncertainty, degrees."""
    lens_bound: float = 3.0
    """The fov never leaves the estimate by more than this many of the lens prior's spreads."""
    max_azimuth_deg: float = 20.0
    """No frame's azimuth leaves the circle by more than this, degrees (a video model's speed varies by
    +-15% at most over a turn: about 9 degrees of accumulated offset)."""
    max_elevation_deg: float = 10.0
    """No frame's elevation leaves the circle by more than this, degrees."""
    max_tracks: int = 1000
    """The solves use at most this many tracks (a random subset). 2N + 1 camera values need far fewer:
    measured on 85 frames at 256 px (3,650 tracks), all of them took 60 s for the two solves; on the
    +-1 degree jitter (36 frames, ~850 tracks) 600 left the worst frame 0.57-0.62 degree off, all 0.45-0.58.
    """
    min_frame_observations: int = 40
    """The solves' subset first takes, in random order, every track that sees a frame the tracks taken so
    far see fewer than this many times; random tracks fill the rest up to `max_tracks`. A purely random
    subset starves the frames that have few tracks: on the generated-like benchmark with every degradation
    on (85 frames, 256 px), the back's view-inconsistent detail left 4-5 observations on a back frame of
    1,000 random tracks, and the back's azimuths drifted 6 degrees; covered, 2.4."""
    holdout_every: int = 5
    """One track in this many is held out of the solve to check it (see the module docstring)."""
    check_margin: float = 0.1
    """The adjusted poses replace the circle only where they lower the held-out tracks' median error by
    at least this share: with a few noisy tracks, a hair's advantage is noise, and the circle is safe."""
    lens_margin: float = 0.02
    """The adjusted poses keep their adjusted lens unless it raises that error by more than this share."""
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
        spreads = (self.robust_px, self.noise_px, self.prior_deg, self.smooth_deg, self.lens_floor_deg,
                   self.distance_prior, self.distance_smooth, self.max_distance)  # fmt: skip
        path_ok = self.path_deg >= 0 and self.path_harmonics >= 0
        bounds = (self.lens_default_deg, self.lens_bound, self.max_azimuth_deg, self.max_elevation_deg)
        margins = 0 <= self.check_margin < 1 and 0 <= self.lens_margin < 1
        counts_ok = (
            self.passes >= 1
            and self.holdout_every >= 2
            and self.max_tracks >= MIN_CHECK_TRACKS
            and self.min_frame_observations >= 0
        )
        ok = counts_ok and margins and path_ok and self.lens_widen >= 1
        if min(*spreads, *bounds) <= 0 or self.outlier_factor <= 1 or not ok:
            raise ValueError(
                "bundle spreads and bounds must be > 0, outlier_factor > 1, passes >= 1, "
                "holdout_every >= 2, min_frame_observations >= 0, margins in [0, 1), "
                "path_deg and path_harmonics >= 0, lens_widen >= 1"
            )
        return self
