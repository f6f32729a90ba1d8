"""Orbit cameras: known circular poses for a 360-degree orbit video, and nerfstudio transforms.json I/O.

Conventions (copied into the README):

* World frame: right-handed, **+Z up**, the object at the origin.
* Camera ``i`` of ``N`` sits at distance ``radius`` from the origin, at ``elevation`` degrees above the
  XY plane (positive = above the object, looking down), and at azimuth
  ``start_azimuth + s * i * 360 / N`` degrees, where the azimuth is measured in the XY plane from +X
  towards +Y and ``s = +1`` for ``ccw`` (the camera travels counter-clockwise seen from above, +Z
  looking down) and ``-1`` for ``cw``. ``N`` is the number of frames: the orbit does not repeat its
  first view. With ``full_turn`` the last frame *is* the first view again, so the step is
  ``360 / (N - 1)``.
* Every camera looks at the origin with world +Z as its up direction (no roll).
* ``fov`` is the full **vertical** field of view in degrees; pixels are square, the principal point is
  the image centre: ``fl_y = fl_x = 0.5 * H / tan(fov / 2)``, ``cx = W / 2``, ``cy = H / 2`` (pixel
  centres at half-integers, as in nerfstudio and gsplat).
* ``transforms.json`` stores camera-to-world matrices with **OpenGL camera axes** (x right, y up,
  camera looking down -z), as nerfstudio expects; gsplat wants world-to-camera matrices with OpenCV
  axes (x right, y down, looking down +z): ``Cameras.viewmats()`` converts.

Defaults (``recon/assets/orbit_droplet3d.json``, user-facing copy in ``configs/``): Droplet3D-4M renders an
85-frame 360-degree orbit of each Objaverse-XL object on a circular trajectory; the paper gives no
elevation, distance or lens, so we chose values matching common Objaverse orbit renderings of an object
normalised to about one unit: ``elevation = 15``, ``radius = 2.0``, ``fov = 45`` (vertical),
``start_azimuth = 0`` (first camera on +X), ``direction = ccw``, ``full_turn = false``. Override any of them
on the command line or with ``--config FILE``; a ``generate`` output's ``generation.json`` "orbit" object,
when present, takes precedence over the preset.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon.constants import MIN_RADIUS
from recon.errors import ReconError
from recon.overrides import with_overrides

# OpenGL camera axes (x right, y up, -z forward) <-> OpenCV (x right, y down, +z forward).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class OrbitConfig:
    """A circular orbit around the origin (see the module docstring for the conventions)."""

    elevation: float = 15.0  # degrees above the XY plane
    radius: float = 2.0  # distance from the origin, world units
    fov: float = 45.0  # full vertical field of view, degrees
    start_azimuth: float = 0.0  # azimuth of frame 0, degrees from +X towards +Y
    direction: str = "ccw"  # "ccw" (seen from above) or "cw"
    full_turn: bool = False  # the last frame repeats the first view

    def validate(self) -> OrbitConfig:
        """Reject values that cannot describe an orbit, with a message naming the option."""
        for name in ("elevation", "radius", "fov", "start_azimuth"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ReconError(f"orbit {name.replace('_', '-')} must be a finite number, got {value!r}")
        if self.radius < MIN_RADIUS:
            raise ReconError(f"orbit radius must be at least {MIN_RADIUS:g}, got {self.radius}")
        if abs(self.elevation) >= 90:
            raise ReconError(
                f"orbit elevation must be strictly between -90 and 90 degrees, got {self.elevation}"
            )
        if not 0 < self.fov < 180:
            raise ReconError(f"orbit fov must be strictly between 0 and 180 degrees, got {self.fov}")
        if self.direction not in ("ccw", "cw"):
            raise ReconError(f"orbit direction must be 'ccw' or 'cw', got {self.direction!r}")
        if not isinstance(self.full_turn, bool):
            raise ReconError(f"orbit full-turn must be true or false, got {self.full_turn!r}")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "orbit") -> OrbitConfig:
        return cls().updated(data, where)

    def updated(self, data: dict[str, Any], where: str = "orbit") -> OrbitConfig:
        """A copy with the keys of `data` replaced; unknown keys are an error (typos must not pass)."""
        return with_overrides(self, data, where)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def orbit_azimuths(n: int, orbit: OrbitConfig) -> np.ndarray:
    """Azimuth in degrees of each of the `n` frames, [n]."""
    step = 360.0 / (n - 1 if orbit.full_turn and n > 1 else n)
    sign = 1.0 if orbit.direction == "ccw" else -1.0
    return orbit.start_azimuth + sign * step * np.arange(n, dtype=np.float64)


def orbit_positions(azimuths_deg: np.ndarray, elevation_deg: float | np.ndarray, radius: float) -> np.ndarray:
    """Camera centres on the sphere of `radius`, [n, 3]."""
    az = np.radians(np.asarray(azimuths_deg, dtype=np.float64))
    el = np.radians(np.broadcast_to(np.asarray(elevation_deg, dtype=np.float64), az.shape))
    return radius * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1)


def look_at_c2w(positions: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
    """Camera-to-world (OpenGL axes) [n, 4, 4] looking from `positions` [n, 3] at `target`, +Z up."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    forward = target - positions
    forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
    up_world = np.array([0.0, 0.0, 1.0])
    right = np.cross(forward, up_world)
    norm = np.linalg.norm(right, axis=-1, keepdims=True)
    if np.any(norm < 1e-9):
        raise ReconError("a camera looks straight up or down: its up direction is undefined")
    right /= norm
    up = np.cross(right, forward)
    c2w = np.tile(np.eye(4), (len(positions), 1, 1))
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = positions
    return c2w


def focal_from_fov(fov_deg: float, height: int) -> float:
    """Focal length in pixels for a full vertical field of view."""
    return 0.5 * height / math.tan(math.radians(fov_deg) / 2.0)


@dataclass
class Cameras:
    """Pinhole cameras sharing one intrinsic matrix; `c2w` [n, 4, 4] uses OpenGL axes."""

    c2w: np.ndarray
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.c2w)

    def viewmats(self) -> np.ndarray:
        """World-to-camera matrices with OpenCV axes (gsplat's `viewmats`), [n, 4, 4]."""
        return np.linalg.inv(self.c2w @ GL_TO_CV)

    def K(self) -> np.ndarray:
        """Intrinsic matrix, [3, 3]."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def centers(self) -> np.ndarray:
        return self.c2w[:, :3, 3].copy()

    def scaled(self, width: int, height: int) -> Cameras:
        """The same cameras for images resized to `width` x `height`."""
        sx, sy = width / self.width, height / self.height
        return Cameras(self.c2w, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height)

    def subset(self, index: np.ndarray | list[int]) -> Cameras:
        return Cameras(
            self.c2w[np.asarray(index)], self.fx, self.fy, self.cx, self.cy, self.width, self.height
        )


def orbit_cameras(n: int, orbit: OrbitConfig, width: int, height: int) -> Cameras:
    """The `n` cameras of `orbit` for frames of `width` x `height` pixels."""
    orbit.validate()
    positions = orbit_positions(orbit_azimuths(n, orbit), orbit.elevation, orbit.radius)
    focal = focal_from_fov(orbit.fov, height)
    return Cameras(look_at_c2w(positions), focal, focal, width / 2.0, height / 2.0, width, height)


def write_transforms(
    path: Path, cameras: Cameras, file_paths: list[str], orbit: OrbitConfig | None = None
) -> dict[str, Any]:
    """Write a nerfstudio `transforms.json` (PINHOLE, camera-to-world, OpenGL axes); returns its content.

    `file_paths` are relative to the json's folder, as nerfstudio's NerfstudioDataParser resolves them.
    The extra "orbit" key records the orbit it came from; nerfstudio ignores unknown keys.
    """
    if len(file_paths) != len(cameras):
        raise ValueError("one file path per camera")
    meta: dict[str, Any] = {
        "camera_model": "PINHOLE",
        "fl_x": float(cameras.fx),
        "fl_y": float(cameras.fy),
        "cx": float(cameras.cx),
        "cy": float(cameras.cy),
        "w": int(cameras.width),
        "h": int(cameras.height),
        "frames": [
            {"file_path": fp, "transform_matrix": [[float(v) for v in row] for row in c2w]}
            for fp, c2w in zip(file_paths, cameras.c2w, strict=True)
        ],
    }
    if orbit is not None:
        meta["orbit"] = orbit.to_dict()
    Path(path).write_text(json.dumps(meta, indent=2))
    return meta


def read_transforms(path: Path) -> tuple[Cameras, list[str]]:
    """Read a transforms.json written by `write_transforms` (shared intrinsics)."""
    try:
        meta = json.loads(Path(path).read_text())
        c2w = np.array([f["transform_matrix"] for f in meta["frames"]], dtype=np.float64)
        cams = Cameras(
            c2w, meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"], int(meta["w"]), int(meta["h"])
        )
        return cams, [f["file_path"] for f in meta["frames"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReconError(f"cannot read {path}: {exc}") from exc
