"""Silhouette coherence: how well one orbit's cameras explain every frame's outline at once.

Point tracks fix an orbit's elevation and lens only where the object has texture to track. On a smooth,
flat-coloured object the few corners are mostly T-junctions (one part passing in front of another), which
slide, and the estimate's lens went 4.5 degrees wide on the tree's smooth scene (85 clean frames, 256 px),
costing 1.4-2 dB at held-out views even through the fit's own lens. Outlines are there whatever the
texture.

**The measure** (Hernandez, Schmitt and Cipolla, "Silhouette coherence for camera calibration under
circular motion", PAMI 2007). Carve the visual hull with a candidate orbit's cameras, project it back
into every frame, and count the share of each silhouette it covers. With the true cameras the hull
reprojects onto every silhouette; with a wrong elevation or lens the silhouettes' cones disagree, the
hull shrinks, and its reprojection leaves part of some silhouettes bare.

**How.** The hull is carved coarse to fine: a 32^3 grid whose voxels are kept when their bounding sphere
reaches every silhouette (distance transforms of each mask, computed once for all candidates). Coarse
voxels wholly inside every silhouette are skipped: every ray through a solid crosses its shell, so the
shell alone decides what the hull covers. The others' 4^3 children are tested at their centres, which is a
128^3 grid's shell at a fraction of its cost. A voxel is outside when `CARVE_TOLERANCE` of the views that
see it show background there (a few wrong mask pixels must not carve). The reprojection marks each
child's pixel in every view. Not `recon.hull.carve_visual_hull`, which carves the fit's whole dense grid
once: a sweep carves some 27 candidates, and a dense 128^3 carving took 7 s each (0.5-0.7 s here).

Voxels and pixels are discrete, so the measure is noisy at the scale of a voxel (measured on the smooth
scene: +-0.002 around a peak 0.005-0.01 above its surroundings); `refine_with_silhouettes` therefore sweeps
each value and fits a parabola around the sweep's best samples rather than chasing the noisy maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from recon.poses import GL_TO_CV, OrbitConfig, orbit_cameras

COHERENCE_SIDE = 128  # px: the masks' longest side for the coherence (64 was too coarse for a degree)
COARSE = 32  # voxels per side of the first carving grid
SUBDIVIDE = 4  # children per side of each kept coarse voxel: a 128^3 grid where the hull is
CARVE_TOLERANCE = 0.03  # share of the seeing views that may show background before a voxel is carved
CUBE_SHARE = 0.45  # half-side of the carving cube, as a share of the orbit's radius (the object's box)


@dataclass
class Outlines:
    """The silhouettes [N, S, S] and, per pixel, the distance to the nearest object pixel (`outside`) and
    to the nearest background pixel (`inside`): computed once for every candidate orbit."""

    masks: np.ndarray
    outside: np.ndarray
    inside: np.ndarray

    @classmethod
    def of(cls, masks: np.ndarray) -> Outlines:
        from scipy import ndimage

        masks = np.asarray(masks, dtype=bool)
        outside = np.stack([ndimage.distance_transform_edt(~m) for m in masks]).astype(np.float32)
        inside = np.stack([ndimage.distance_transform_edt(m) for m in masks]).astype(np.float32)
        return cls(masks, outside, inside)


def coherence(outlines: Outlines, orbit: OrbitConfig) -> float:
    """Mean share of each silhouette covered by the visual hull of `orbit`'s cameras, reprojected."""
    import torch

    masks = outlines.masks
    n, size = masks.shape[0], masks.shape[1]
    cams = orbit_cameras(n, orbit, size, size)
    view = torch.tensor(np.linalg.inv(cams.c2w @ GL_TO_CV), dtype=torch.float32)  # world -> OpenCV camera
    focal = float(cams.fy)
    masks_t = torch.as_tensor(masks)
    half = CUBE_SHARE * orbit.radius

    def project(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat pixel index [N, P] (0 outside the frame), whether in the frame [N, P], and depth [N, P] of
        world points [P, 3] in every view."""
        cam = points[None] @ view[:, :3, :3].transpose(1, 2) + view[:, None, :3, 3]
        z = cam[..., 2].clamp_min(1e-6)
        u = (focal * cam[..., 0] / z + size / 2.0).floor_()
        v = (focal * cam[..., 1] / z + size / 2.0).floor_()
        inside = (u >= 0) & (u < size) & (v >= 0) & (v < size)
        return (v * size + u).long().masked_fill_(~inside, 0), inside, z

    frames = torch.arange(n)[:, None] * (size * size)
    to_object = torch.as_tensor(outlines.outside).reshape(-1)
    to_background = torch.as_tensor(outlines.inside).reshape(-1)

    def classify(points: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether each point's ball of `radius` (world units) meets the object in nearly every view that
        sees it (kept), and whether it lies wholly inside every silhouette (interior)."""
        index, seen, z = project(points)
        reach = radius * focal / z + (0.75 if radius else 0.0)  # a pixel's half-diagonal
        at = frames + index
        carving = ((to_object[at] > reach) & seen).sum(0)
        interior = ((to_background[at] > reach) | ~seen).all(0)
        return carving <= CARVE_TOLERANCE * seen.sum(0).clamp_min(1), interior

    # 1. Coarse voxels whose bounding sphere reaches every silhouette (its reach in pixels, per view).
    step = 2.0 * half / COARSE
    axis = -half + (torch.arange(COARSE, dtype=torch.float32) + 0.5) * step
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    kept, interior = classify(grid, math.sqrt(3.0) * step / 2.0)
    # Only the shell decides what the hull covers (module docstring): interior voxels go no further.
    coarse = grid[kept & ~interior]
    # 2. The children of the others, tested at their centres.
    fine_step = step / SUBDIVIDE
    offsets = (torch.arange(SUBDIVIDE, dtype=torch.float32) + 0.5) * fine_step - step / 2.0
    children = torch.stack(torch.meshgrid(offsets, offsets, offsets, indexing="ij"), -1).reshape(-1, 3)
    fine = (coarse[:, None] + children[None]).reshape(-1, 3)
    hull = fine[classify(fine, 0.0)[0]]
    if len(hull) == 0:
        return 0.0
    # 3. The hull's reprojection against every silhouette.
    index, inside, _ = project(hull)
    covered = torch.zeros(n, size * size, dtype=torch.bool)
    covered.scatter_(1, index, inside)
    # A closing (3x3) fills the pinholes between neighbouring voxels' pixels: without it a hull of more,
    # smaller voxels (a wider lens makes the object larger at the fixed radius) covered more, which biased
    # the measure toward wide lenses.
    closed = covered.reshape(n, 1, size, size).float()
    closed = torch.nn.functional.max_pool2d(closed, 3, 1, 1)
    closed = -torch.nn.functional.max_pool2d(-closed, 3, 1, 1)
    covered = (closed[:, 0] > 0.5) & masks_t
    area = masks_t.reshape(n, -1).sum(1).clamp_min(1)
    return float((covered.reshape(n, -1).sum(1) / area).mean())


PEAK_NEIGHBOURS = 2  # samples either side of the best that the peak's parabola goes through


def _peak(xs: np.ndarray, ys: np.ndarray) -> float:
    """Where the sweep (xs ascending, ys) peaks: the vertex of a parabola through the best sample and its
    `PEAK_NEIGHBOURS` either side, kept between them (a parabola over the whole sweep misplaced the sharp,
    asymmetric peak, or found none); the best sample itself where the fit has no maximum."""
    best = int(np.argmax(ys))
    lo, hi = max(0, best - PEAK_NEIGHBOURS), min(len(xs), best + PEAK_NEIGHBOURS + 1)
    a, b, _ = np.polyfit(xs[lo:hi], ys[lo:hi], 2)
    if a >= 0:
        return float(xs[best])
    return float(np.clip(-b / (2.0 * a), xs[lo], xs[hi - 1]))


SWEEP_SAMPLES = 9
# The sweeps, in order: the elevation first (the tracks' is nearer), then the lens, then the elevation again
# at the new lens. A further pair of narrower sweeps (1 and 1.5 degrees) was tried and fitted the noise:
# the smooth scene's lens went from +1.9 to +3.1 degrees off.
SWEEPS = ("elevation", "fov", "elevation")


def refine_with_silhouettes(
    masks: np.ndarray, orbit: OrbitConfig, spans: dict[str, float]
) -> tuple[OrbitConfig, dict[str, float]]:
    """`orbit` with its values moved, one sweep at a time (`SWEEPS`), to the peak of the silhouette
    coherence over `spans` (degrees either side, per value). Returns the orbit and the coherence at the
    start and at the end."""
    outlines = Outlines.of(masks)
    start = coherence(outlines, orbit)
    for name in SWEEPS:
        if name not in spans:
            continue
        centre = float(getattr(orbit, name))
        xs = centre + np.linspace(-spans[name], spans[name], SWEEP_SAMPLES)
        ys = np.array([coherence(outlines, replace(orbit, **{name: float(x)})) for x in xs])
        orbit = replace(orbit, **{name: round(_peak(xs, ys), 3)})
    return orbit, {"before": start, "after": coherence(outlines, orbit)}
