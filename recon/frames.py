"""The asset frame: the one coordinate frame every exported file uses.

Fitting and meshing work in the orbit's world frame (+Z up, first camera at the start azimuth, see
`recon.poses`). Users, though, open our files side by side in Blender, three.js or a splat viewer, and
glTF fixes +Y as up. So at export one rigid rotation ``A`` takes world coordinates to the **asset
frame**:

* +Y is the world's up (+Z),
* +Z is the horizontal direction from the object toward the first camera (the side frame 0 shows
  faces a default glTF viewer's camera),
* +X completes a right-handed frame (``+Y x +Z``).

``A`` is a rotation (no scale, no translation: the object stays at the origin, units stay world
units), applied to the mesh vertices, the splats (means, orientations and view-dependent colour) and
the camera-to-world matrices of ``transforms.json``, so mesh, splats and cameras overlay exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from recon.fit import Splats
from recon.poses import Cameras
from recon.raster_torch import eval_sh

WORLD_UP = np.array([0.0, 0.0, 1.0])
# Directions used to fit each SH rotation by least squares; any set that spans the degree-3 basis
# (16 functions) works, many more make the solve well conditioned.
SH_FIT_DIRECTIONS = 256


def front_direction(cameras: Cameras) -> np.ndarray:
    """Horizontal unit direction from the object toward the first camera: the side frame 0 shows."""
    p = cameras.c2w[0, :3, 3]
    return np.array([p[0], p[1], 0.0]) / max(1e-9, float(np.hypot(p[0], p[1])))


def asset_transform(front: np.ndarray) -> np.ndarray:
    """4x4 rotation taking world points (+Z up) to the asset frame (+Y up, `front` onto +Z)."""
    f = np.array([front[0], front[1], 0.0], dtype=np.float64)
    f /= np.linalg.norm(f)
    m = np.eye(4)
    m[:3, :3] = np.stack([np.cross(WORLD_UP, f), WORLD_UP, f])  # rows: asset x, y, z in world coordinates
    return m


def cameras_to_asset(cameras: Cameras, transform: np.ndarray) -> Cameras:
    """The same cameras with camera-to-world matrices in the asset frame (camera axes unchanged)."""
    return Cameras(
        transform @ cameras.c2w, cameras.fx, cameras.fy, cameras.cx, cameras.cy, cameras.width, cameras.height
    )


def rotation_to_quaternion(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a 3x3 rotation matrix (Shepperd's method: stable for any angle)."""
    trace = np.trace(r)
    if trace > 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k])
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (r[k, j] - r[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (r[j, i] + r[i, j]) / s
        q[1 + k] = (r[k, i] + r[i, k]) / s
    q = np.asarray(q)
    return q / np.linalg.norm(q)


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of wxyz quaternions (broadcasting): the rotation `b` followed by `a`."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def sh_basis(degree: int, dirs: np.ndarray) -> np.ndarray:
    """The real SH basis of our rasterisers (3DGS's) at unit directions [n, 3] -> [n, (degree+1)^2]."""
    k = (degree + 1) ** 2
    eye = torch.eye(k, dtype=torch.float64)[None, :, :, None].expand(1, k, k, 3)
    d = torch.as_tensor(dirs, dtype=torch.float64)[:, None, :]
    return eval_sh(degree, eye, d)[..., 0].numpy()


def sh_rotation(rotation: np.ndarray, degree: int) -> np.ndarray:
    """Matrix M [K, K] with ``coeffs' = M @ coeffs`` for colour seen along ``rotation @ d``.

    A rotated splat must show along the rotated direction ``R d`` the colour it showed along ``d``:
    ``Y(d') . c' = Y(R^T d') . c`` for all ``d'``. Each SH band is closed under rotation, so the least
    squares solution over many directions is exact (to float precision) for every degree.
    """
    rng = np.random.default_rng(0)
    d = rng.normal(size=(SH_FIT_DIRECTIONS, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    target = sh_basis(degree, d @ rotation)  # rows: Y(R^T d) (d @ R == (R^T d)^T)
    m, *_ = np.linalg.lstsq(sh_basis(degree, d), target, rcond=None)
    return m


def splats_to_asset(splats: Splats, transform: np.ndarray) -> Splats:
    """The splats rotated into the asset frame: means, orientations and all SH degrees.

    Scales and opacities do not change under a rotation; the DC colour term is view-independent.
    """
    rot = transform[:3, :3]
    dev = splats.means.device
    r = torch.tensor(rot, dtype=torch.float32, device=dev)
    q = torch.tensor(rotation_to_quaternion(rot), dtype=torch.float32, device=dev)
    quats = quaternion_multiply(q[None], splats.quats)
    sh_n = splats.shN
    if sh_n.shape[1] > 0:
        full = torch.tensor(sh_rotation(rot, splats.sh_degree), dtype=torch.float32, device=dev)
        sh_n = torch.einsum("ij,njc->nic", full[1:, 1:], splats.shN)  # DC row/column is the identity
    return Splats(
        means=splats.means @ r.T, scales=splats.scales, quats=quats, opacities=splats.opacities,
        sh0=splats.sh0, shN=sh_n, sh_degree=splats.sh_degree, background=splats.background,
    )  # fmt: skip
