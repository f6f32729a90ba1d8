"""The visual hull: the space that the training views see and that falls inside their silhouettes.

The hull bounds everything downstream (the gaussians' initial positions, the pruning of floaters, the
alpha penalty and the mesh), so it encodes two rules:

* **Unobserved space is empty.** A voxel that too few training views see (outside the frame in the
  others: above the top edge of an orbit that looks down, say) is carved. Nothing in the frames could
  ever correct a gaussian there, so the fit must not be allowed to put one there.
* **No single view carves.** A voxel stays unless more than a small share (and at least two) of the views
  that see it show background there. A part of the object that matches the background colour in one
  view, or one frame whose silhouette is wrong, cannot delete what the other views support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recon.errors import ReconError
from recon.poses import Cameras

MIN_CARVING_VIEWS = 2  # a voxel is carved by at least this many views showing background there
VISIBLE_SLACK_VOXELS = 1.5  # a voxel this close behind the nearest one in its pixel still counts as seen


@dataclass
class VisualHull:
    """Occupancy of a voxel grid over the cube [-half, half]^3 carved by the silhouettes."""

    occupancy: np.ndarray  # [R, R, R] bool, indexed [ix, iy, iz]
    half: float

    @property
    def voxel(self) -> float:
        return 2.0 * self.half / self.occupancy.shape[0]

    def centers(self, index: np.ndarray) -> np.ndarray:
        return -self.half + (index + 0.5) * self.voxel

    def contains(self, points: np.ndarray, dilate: int = 1) -> np.ndarray:
        """Whether points [n, 3] fall in an occupied voxel (after `dilate` voxels of growth), [n]."""
        from scipy import ndimage

        occ = ndimage.binary_dilation(self.occupancy, iterations=dilate) if dilate > 0 else self.occupancy
        r = occ.shape[0]
        idx = np.floor((points + self.half) / self.voxel).astype(np.int64)
        ok = np.all((idx >= 0) & (idx < r), axis=1)
        out = np.zeros(len(points), dtype=bool)
        out[ok] = occ[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
        return out

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """Approximate signed distance [n] from points [n, 3] to the hull's boundary (negative inside).

        Euclidean distance transforms of the occupied and the empty voxels, each measured to the voxel
        boundary (half a voxel nearer than the centres), interpolated trilinearly: a smooth field whose
        zero level follows the hull, for closing surfaces that no view observed.
        """
        from scipy import ndimage

        outside = ndimage.distance_transform_edt(~self.occupancy) - 0.5
        inside = ndimage.distance_transform_edt(self.occupancy) - 0.5
        field = np.where(self.occupancy, -inside, outside) * self.voxel
        coords = ((points + self.half) / self.voxel - 0.5).T  # continuous voxel index, centres at integers
        return ndimage.map_coordinates(field, coords, order=1, mode="nearest")

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest occupied voxel centres, [3] each."""
        occupied = np.argwhere(self.occupancy)
        return self.centers(occupied.min(0)), self.centers(occupied.max(0))

    def visible(self, cameras: Cameras) -> np.ndarray:
        """[R, R, R] bool: occupied voxels that some camera sees in front of every other occupied voxel.

        The hull's underside (below an object seen only from above, say) is inside every silhouette but
        hidden from every view: a gaussian placed there would never be corrected, and would show as junk
        from below. Voxels are drawn as squares about their projected size into a per-view depth buffer.
        """
        from scipy import ndimage

        index = np.argwhere(self.occupancy)
        uv, z = project_points(self.centers(index), cameras)
        seen = np.zeros(len(index), dtype=bool)
        for c in range(len(cameras)):
            u, v, ok = pixel_index(uv[c], z[c], cameras.width, cameras.height)
            depth = np.full((cameras.height, cameras.width), np.inf)
            np.minimum.at(depth, (v[ok], u[ok]), z[c, ok])
            size = 2 * self._pixel_radius(cameras, z[c]) + 1
            depth = ndimage.grey_erosion(depth, size=(size, size))  # each voxel covers its footprint
            seen[ok] |= z[c, ok] <= depth[v[ok], u[ok]] + VISIBLE_SLACK_VOXELS * self.voxel
        out = np.zeros_like(self.occupancy)
        out[tuple(index[seen].T)] = True
        return out

    def _pixel_radius(self, cameras: Cameras, depths: np.ndarray) -> int:
        """About half a voxel's size in pixels at the typical depth of `depths`."""
        return math.ceil(0.5 * self.voxel * cameras.fy / max(float(np.median(depths)), 1e-6))

    def footprints(self, cameras: Cameras) -> np.ndarray:
        """[C, H, W] bool: the pixels each camera sees the hull's voxel centres through, gaps closed."""
        from scipy import ndimage

        points = self.centers(np.argwhere(self.occupancy))
        uv, z = project_points(points, cameras)
        out = np.zeros((len(cameras), cameras.height, cameras.width), dtype=bool)
        for c in range(len(cameras)):
            u, v, ok = pixel_index(uv[c], z[c], cameras.width, cameras.height)
            out[c, v[ok], u[ok]] = True
            # Close the gaps between the voxel centres' dots (a voxel spans about 2 * radius pixels)
            # without growing the footprint past the outermost centres: pixels just outside the object's
            # outline must stay free for the alpha penalty, or the surface swells by a voxel.
            radius = self._pixel_radius(cameras, z[c])
            if radius > 0:
                out[c] = ndimage.binary_closing(out[c], iterations=radius)
        return out


def project_points(points: np.ndarray, cameras: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [C, n, 2] and depths [C, n] of world points [n, 3] in every camera."""
    vm = cameras.viewmats()
    pc = np.einsum("cij,nj->cni", vm[:, :3, :3], points) + vm[:, None, :3, 3]
    z = pc[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack(
            [cameras.fx * pc[..., 0] / z + cameras.cx, cameras.fy * pc[..., 1] / z + cameras.cy], -1
        )
    return uv, z


def pixel_index(uv: np.ndarray, z: np.ndarray, width: int, height: int) -> tuple[np.ndarray, ...]:
    """Integer pixel (u, v) of projected points [n, 2] and whether each lands in the frame, in front."""
    with np.errstate(invalid="ignore"):
        u = np.floor(np.nan_to_num(uv[:, 0], nan=-1.0, posinf=-1.0, neginf=-1.0)).astype(np.int64)
        v = np.floor(np.nan_to_num(uv[:, 1], nan=-1.0, posinf=-1.0, neginf=-1.0)).astype(np.int64)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height) & (z > 0)
    return u, v, inside


def seen_counts(points: np.ndarray, cameras: Cameras) -> np.ndarray:
    """How many cameras have each point [n, 3] inside their frame, [n]."""
    uv, z = project_points(points, cameras)
    return sum(pixel_index(uv[c], z[c], cameras.width, cameras.height)[2].astype(np.int32)
               for c in range(len(cameras)))  # fmt: skip


def working_half_size(cameras: Cameras) -> float:
    """Half the side of the cube, centred on the orbit's target, that can hold what the cameras see."""
    distance = np.linalg.norm(cameras.centers(), axis=1)
    half_height = float(distance.max()) * (cameras.height / 2) / cameras.fy
    return min(0.95 * float(distance.min()), 1.05 * half_height)


def carve_visual_hull(
    masks: np.ndarray, cameras: Cameras, half: float, resolution: int, min_seen: float, tolerance: float
) -> VisualHull:
    """Carve the cube [-half, half]^3 at `resolution` voxels a side with silhouettes [C, H, W].

    The two rules of the module docstring: a voxel is kept when at least `min_seen` (a share) of the
    cameras have it in frame, and at most `tolerance` (a share, at least one view) of those show
    background at it.
    """
    from scipy import ndimage

    masks = np.stack([ndimage.binary_dilation(m, iterations=1) for m in masks])
    r = resolution
    grid = -half + (np.arange(r) + 0.5) * (2.0 * half / r)
    points = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
    uv, z = project_points(points, cameras)
    seen = np.zeros(len(points), dtype=np.int32)
    background = np.zeros(len(points), dtype=np.int32)
    for c in range(len(cameras)):
        u, v, inside = pixel_index(uv[c], z[c], cameras.width, cameras.height)
        seen += inside
        background[inside] += ~masks[c][v[inside], u[inside]]
    required = max(1, math.ceil(min_seen * len(cameras)))
    allowed = np.maximum(MIN_CARVING_VIEWS - 1, np.floor(tolerance * seen))
    occupancy = ((seen >= required) & (background <= allowed)).reshape(r, r, r)
    if not occupancy.any():
        raise ReconError(
            "the silhouettes carve away everything: the frames do not show one object on a plain "
            "background, or the orbit values (radius / elevation / fov / direction) do not match the video"
        )
    return VisualHull(occupancy, half)
