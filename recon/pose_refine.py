"""Refine every frame's camera and the focal length jointly with the splats.

A generated orbit is not a perfect circle: frames jitter by a degree or so, and the estimated lens is off
by a fraction of a degree. Fitting splats to slightly wrong cameras blurs the asset; letting each camera
move a little lets the photometric loss put it where its frame says it is.

Parametrisation, shaped by the orbit: each frame holds a rotation vector ``omega`` *in world axes about
the orbit's centre* (the origin, where every camera looks) and a small translation ``v`` in its own
camera's axes (OpenCV); its viewmat becomes ``T(v) @ viewmat @ R(omega)^T``, i.e. its camera-to-world
``R(omega) @ c2w`` moved by ``v``. One log-scale multiplies the shared focal length. Why not a free
SE(3) twist in camera axes (nerfstudio's SO3xR3)? Turning a camera about its own centre and sliding it
sideways shift the image alike (they differ only by the parallax of the object's depth, +-15% of the
radius), so a free twist splits a frame's azimuth error between the two at random and the camera centre,
hence the recorded azimuth and elevation, barely moves (measured: +-1 degree jitter stayed at about
1 degree). A rotation about the orbit's centre moves the view and the centre together, as an orbit's
jitter does; the camera-axis translation keeps a much smaller learning rate (`FitConfig`), so it only
takes what rotation about the centre cannot explain (an object off the centre, a wobble in distance).
Both rasterisers differentiate through `viewmats` and `Ks` (gsplat's kernels; `recon.raster_torch` by
autograd, checked against finite differences and gsplat in the tests).

Each frame is rendered only every N-th step, so its twist is its own tensor: Adam skips tensors without a
gradient, so a frame's correction moves only on the steps that saw it (a shared [N, 6] tensor would keep
drifting on stale momentum). Corrections start after the splats have settled (`start_fraction`) and
their learning rate decays like the means'.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon.poses import GL_TO_CV, Cameras

FINAL_LR_SHARE = 0.05  # the corrections' learning rate decays to this share by the end of the fit


# A photometric polish of bundle-adjusted poses (this module's corrections) at this share of their rates:
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


def rotation_about_centre(omega: Tensor) -> Tensor:
    """Homogeneous rotation [4, 4] by the rotation vector `omega` [3] about the world origin."""
    return twist_matrix(torch.cat([omega, omega.new_zeros(3)]))


def translation(v: Tensor) -> Tensor:
    """Homogeneous translation [4, 4] by `v` [3]."""
    return twist_matrix(torch.cat([v.new_zeros(3), v]))


def twist_matrix(xi: Tensor) -> Tensor:
    """SE(3) exponential [4, 4] of a twist [6] = (rotation vector, translation)."""
    w, v = xi[:3], xi[3:]
    zero = xi.new_zeros(())
    hat = torch.stack([
        torch.stack([zero, -w[2], w[1], v[0]]), torch.stack([w[2], zero, -w[0], v[1]]),
        torch.stack([-w[1], w[0], zero, v[2]]), torch.stack([zero, zero, zero, zero]),
    ])  # fmt: skip
    return torch.linalg.matrix_exp(hat)


def corrected_viewmat(xi: Tensor, viewmat: Tensor) -> Tensor:
    """`viewmat` [4, 4] (world-to-camera) with the correction `xi` = (omega, v) in metric units applied."""
    return translation(xi[3:]) @ viewmat @ rotation_about_centre(xi[:3]).T


class PoseRefiner:
    """Per-frame corrections (rotation about the orbit's centre, camera-axis translation) and a focal
    log-scale, with their own Adam and learning-rate schedule."""

    def __init__(
        self, n: int, device: torch.device, lr_rotation: float, lr_translation: float, lr_focal: float,
        start_step: int, total_steps: int,
    ) -> None:  # fmt: skip
        self.twists = [torch.zeros(6, device=device, requires_grad=True) for _ in range(n)]
        self.log_focal = torch.zeros(1, device=device, requires_grad=True)
        # twists[i] = (omega, v). Rotation and translation share each tensor, so their step sizes are set
        # by scaling the parameters' units (radians vs world units) with `unit`.
        self.unit = torch.tensor([1.0] * 3 + [lr_translation / lr_rotation] * 3, device=device)
        self.optimizer = torch.optim.Adam(
            [{"params": self.twists, "lr": lr_rotation}, {"params": [self.log_focal], "lr": lr_focal}],
            eps=1e-15,
        )
        steps = max(1, total_steps - start_step)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(
            self.optimizer, gamma=FINAL_LR_SHARE ** (1.0 / steps)
        )
        self.start_step = start_step

    def camera(self, i: int, viewmat: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
        """Frame `i`'s corrected viewmat [1, 4, 4] and intrinsics [1, 3, 3] (differentiable)."""
        corrected = self._delta(i, viewmat[0])
        scale = torch.exp(self.log_focal)[0]
        focal = torch.diag(torch.stack([scale, scale, scale.new_ones(())]))
        return corrected[None], (focal @ K[0])[None]  # scales fx, fy and keeps cx, cy

    def _delta(self, i: int, viewmat: Tensor) -> Tensor:
        """Frame `i`'s corrected world-to-camera matrix [4, 4]."""
        return corrected_viewmat(self.twists[i] * self.unit, viewmat)

    def step(self, step: int) -> None:
        """Apply the gradients of this step (none before `start_step`), then clear them."""
        if step >= self.start_step:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def focal_scale(self) -> float:
        return float(torch.exp(self.log_focal).item())

    def refined(self, cameras: Cameras) -> Cameras:
        """`cameras` with every correction applied (same resolution)."""
        with torch.no_grad():
            unit = self.unit.cpu().double()
            views = torch.tensor(cameras.viewmats(), dtype=torch.float64)
            pairs = zip(self.twists, views, strict=True)
            viewmats = torch.stack([corrected_viewmat(t.cpu().double() * unit, v) for t, v in pairs]).numpy()
        c2w = np.linalg.inv(viewmats) @ np.linalg.inv(GL_TO_CV)
        s = self.focal_scale
        return Cameras(c2w, cameras.fx * s, cameras.fy * s, cameras.cx, cameras.cy, cameras.width,
                       cameras.height)  # fmt: skip


def orbit_angles(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Azimuth and elevation of each camera centre, and its roll about its optical axis; degrees, [n] each."""
    centers = c2w[:, :3, 3]
    azimuth = np.degrees(np.arctan2(centers[:, 1], centers[:, 0]))
    elevation = np.degrees(np.arcsin(centers[:, 2] / np.linalg.norm(centers, axis=1)))
    # Rolled by r about its optical axis, the camera's x and y axes rise by cos(el) sin r and cos(el) cos r.
    roll = np.degrees(np.arctan2(c2w[:, 2, 0], c2w[:, 2, 1]))
    return azimuth, elevation, roll


def corrections(before: Cameras, after: Cameras) -> dict[str, Any]:
    """The per-frame corrections for report.json: azimuth, elevation, roll, centre shift; and the lens."""
    az0, el0, roll0 = orbit_angles(before.c2w)
    az1, el1, roll1 = orbit_angles(after.c2w)
    d_az = (az1 - az0 + 180.0) % 360.0 - 180.0
    shift = np.linalg.norm(after.c2w[:, :3, 3] - before.c2w[:, :3, 3], axis=1)
    fov = 2.0 * math.degrees(math.atan(0.5 * after.height / after.fy))
    return {
        "focal_scale": round(after.fy / before.fy, 6),
        "refined_fov": round(fov, 4),
        "azimuth_deg": [round(float(v), 4) for v in d_az],
        "elevation_deg": [round(float(v), 4) for v in el1 - el0],
        "roll_deg": [round(float(v), 4) for v in roll1 - roll0],
        "center_shift": [round(float(v), 5) for v in shift],
        "max_abs_deg": round(float(max(np.abs(d_az).max(), np.abs(el1 - el0).max())), 4),
        "mean_elevation": round(float(el1.mean()), 4),
    }
