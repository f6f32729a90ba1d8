"""The asset frame: rotating splats and cameras together must not change a single rendered pixel.

If the SH rotation, the quaternion product or the camera transform were wrong (or applied to only one
of them), the images would differ: view-dependent colour would shift, gaussians would stretch the
wrong way, or the object would leave the image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.fit import Splats
from recon.frames import (
    asset_transform,
    cameras_to_asset,
    front_direction,
    sh_rotation,
    splats_to_asset,
)
from recon.poses import OrbitConfig, orbit_cameras

SIZE, VIEWS, GAUSSIANS = 40, 5, 300


def random_splats(degree: int, seed: int = 0) -> Splats:
    """Anisotropic gaussians with strong view-dependent colour, so any rotation error shows."""
    g = torch.Generator().manual_seed(seed)
    n, k = GAUSSIANS, (degree + 1) ** 2
    return Splats(
        means=(torch.rand(n, 3, generator=g) - 0.5) * 0.8,
        scales=torch.log(torch.rand(n, 3, generator=g) * 0.06 + 0.01),
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g) * 0.5,
        shN=torch.randn(n, k - 1, 3, generator=g) * 0.4,
        sh_degree=degree,
        background=torch.tensor([0.9, 0.9, 0.9]),
    )


@pytest.mark.parametrize(("degree", "start_azimuth"), [(1, 0.0), (3, 37.0)])
def test_asset_frame_splats_and_cameras_render_the_same_images(degree: int, start_azimuth: float) -> None:
    cams = orbit_cameras(VIEWS, OrbitConfig(elevation=25.0, start_azimuth=start_azimuth), SIZE, SIZE)
    transform = asset_transform(front_direction(cams))
    splats = random_splats(degree)
    world, world_alpha = splats.render(cams, backend="torch")
    asset_splats, asset_cams = splats_to_asset(splats, transform), cameras_to_asset(cams, transform)
    moved, moved_alpha = asset_splats.render(asset_cams, backend="torch")
    assert world_alpha.mean() > 0.2  # the object is in view
    # float32 round-off can flip a gaussian across the 1/255 alpha cut-off in a rare pixel, so allow a
    # few tiny differences; a wrong rotation moves colours by tenths everywhere.
    for a, b in ((moved_alpha, world_alpha), (moved, world)):
        diff = (a - b).abs()
        assert diff.max() < 0.01 and (diff > 1e-4).float().mean() < 1e-3, float(diff.max())


def test_asset_frame_is_y_up_with_the_first_camera_on_plus_z() -> None:
    cams = orbit_cameras(8, OrbitConfig(elevation=15.0, start_azimuth=120.0), SIZE, SIZE)
    transform = asset_transform(front_direction(cams))
    np.testing.assert_allclose(np.linalg.det(transform[:3, :3]), 1.0)  # a rotation, no mirror
    np.testing.assert_allclose(transform[:3, :3] @ [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], atol=1e-12)
    first = cameras_to_asset(cams, transform).c2w[0, :3, 3]
    assert first[2] > 1.9 and abs(first[0]) < 1e-9 and first[1] > 0  # on +Z, above the object


def test_sh_rotation_is_orthogonal_block_diagonal_and_identity_for_no_rotation() -> None:
    angle = np.radians(30.0)
    r = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]])
    m = sh_rotation(r, 3)
    np.testing.assert_allclose(m @ m.T, np.eye(16), atol=1e-9)
    np.testing.assert_allclose(m[1:4, 4:], 0.0, atol=1e-9)  # bands do not mix
    np.testing.assert_allclose(sh_rotation(np.eye(3), 3), np.eye(16), atol=1e-9)
