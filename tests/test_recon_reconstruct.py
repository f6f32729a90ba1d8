"""Stage 3 against ground truth: an analytic object ray-cast on an orbit (independent of the rasteriser).

One small fit (session fixture) is checked for: held-out PSNR at unseen azimuths and from higher up,
a mesh close to the true surface, a 3DGS .ply that an independent reader parses back to the same
gaussians, and a .glb that is upright with the first frame's side facing +Z.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recon_helpers import chamfer_l1, orbit_frames, read_binary_ply

from recon import synthetic
from recon.asset import ExportConfig, write_asset
from recon.export import splat_ply_fields, write_splats_ply
from recon.fit import FitConfig, fit, psnr
from recon.frames import asset_transform, front_direction
from recon.mesh import MeshConfig, tsdf_mesh
from recon.poses import Cameras, OrbitConfig, orbit_cameras

SIZE, VIEWS = 64, 24


@pytest.fixture(scope="session")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    frames = orbit_frames(VIEWS, SIZE)
    cams = orbit_cameras(VIEWS, OrbitConfig(), SIZE, SIZE)
    train = [i for i in range(VIEWS) if i % 4 != 1]  # every 4th view held out
    cfg = FitConfig(iterations=500, resolution=SIZE, sh_degree=1, device="cpu", seed=0)
    result = fit(frames, cams, cfg, progress=False, train_index=train)
    mesh = tsdf_mesh(result.splats, result.cameras, result.hull, MeshConfig(voxels=128, render_size=96))
    out = tmp_path_factory.mktemp("fit")
    small = ExportConfig(faces=20_000, vertex_colors=True, bake_size=96, bake_ring_views=4)
    write_asset(out, mesh, result.splats, result.cameras, small, asset_transform(front_direction(cams)))
    # The writer itself, on the raw (world-frame) splats, for the round-trip test below.
    write_splats_ply(out / "splats.ply", result.splats)
    return {"frames": frames, "cams": cams, "train": train, "result": result, "mesh": mesh, "out": out}


def held_out_psnr(splats, c2w: np.ndarray, fov: float = 45.0) -> list[float]:
    truth, _ = synthetic.render(c2w, fov, SIZE, supersample=2)
    base = orbit_cameras(1, OrbitConfig(fov=fov), SIZE, SIZE)
    cams = Cameras(c2w, base.fx, base.fy, base.cx, base.cy, SIZE, SIZE)
    renders, _ = splats.render(cams)
    gt = torch.tensor(truth, dtype=torch.float32) / 255.0
    return [psnr(renders[i : i + 1], gt[i : i + 1]) for i in range(len(c2w))]


def test_psnr_at_views_not_used_for_training(fitted) -> None:
    splats = fitted["result"].splats
    held = [i for i in range(VIEWS) if i not in fitted["train"]]
    unseen_orbit = held_out_psnr(splats, fitted["cams"].c2w[held])
    between = held_out_psnr(splats, synthetic.orbit_c2w(np.arange(6) * 60.0 + 7.5, 15.0, 2.0))
    higher = held_out_psnr(splats, synthetic.orbit_c2w(np.arange(6) * 60.0 + 20.0, 35.0, 2.0))
    print(f"unseen orbit views {np.mean(unseen_orbit):.2f} dB, between views {np.mean(between):.2f}, "
          f"+20 deg {np.mean(higher):.2f}")  # fmt: skip
    # A small, short fit (64 px, 18 views with 30-degree gaps, 500 steps) measures about 27 / 26.2 / 24.6 dB
    # (worst view between 20.3); wrong poses or a broken rasteriser give 12-16 dB. The coverage term
    # (`solid_lambda`) costs this fit about 1 dB between views (27.2 without it) and buys a solid surface:
    # without it a 24-view fit's mesh had 26% of its area as walls inside the object. The benchmark
    # checks the full-size targets.
    assert np.mean(unseen_orbit) >= 25.5 and min(unseen_orbit) >= 22.0
    assert np.mean(between) >= 25.5 and min(between) >= 20.0
    assert np.mean(higher) >= 21.0
    assert np.mean(fitted["result"].psnr) >= 27.0  # training views


def test_mesh_is_close_to_the_true_surface(fitted) -> None:
    mesh = fitted["mesh"]
    truth = synthetic.sample_surface(n=60_000)
    points = (
        mesh.sample(60_000, seed=0) if "seed" in mesh.sample.__code__.co_varnames else mesh.sample(60_000)
    )
    chamfer = chamfer_l1(np.asarray(points), truth)
    print(f"Chamfer-L1 {chamfer:.4f}")
    assert chamfer <= 0.03
    # No background shell: everything lies near the object (about one unit across).
    assert np.abs(mesh.vertices).max() < 0.75
    assert mesh.visual.vertex_colors.shape[0] == len(mesh.vertices)


def test_splat_ply_round_trips_through_an_independent_reader(fitted) -> None:
    splats = fitted["result"].splats
    data = read_binary_ply(fitted["out"] / "splats.ply")
    assert list(data) == splat_ply_fields(1)
    assert list(data)[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert len(data["x"]) == len(splats)
    np.testing.assert_allclose(np.stack([data["x"], data["y"], data["z"]], 1), splats.means.numpy())
    np.testing.assert_allclose(data["opacity"], splats.opacities.numpy())  # raw logit
    np.testing.assert_allclose(np.stack([data[f"scale_{i}"] for i in range(3)], 1), splats.scales.numpy())
    np.testing.assert_allclose(
        np.stack([data[f"rot_{i}"] for i in range(4)], 1), splats.quats.numpy()
    )  # wxyz
    # f_rest is channel-major: f_rest_0..2 are the red channel's 3 degree-1 coefficients.
    np.testing.assert_allclose([data[f"f_rest_{i}"] for i in range(3)], splats.shN[:, :, 0].numpy().T)
    # open3d reads the same file as a point cloud with the same positions.
    import open3d as o3d

    cloud = o3d.io.read_point_cloud(str(fitted["out"] / "splats.ply"))
    np.testing.assert_allclose(np.asarray(cloud.points), splats.means.numpy(), atol=1e-6)


def test_glb_is_upright_and_faces_plus_z(fitted) -> None:
    import trimesh

    scene = trimesh.load(fitted["out"] / "mesh.glb")
    mesh = scene.to_geometry() if hasattr(scene, "to_geometry") else scene.dump(concatenate=True)
    v = np.asarray(mesh.vertices)
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(float)  # COLOR_0: linear
    red = (colors[:, 0] > colors[:, 1] + 40) & (colors[:, 0] > colors[:, 2] + 40)  # the head, on top
    blue = (colors[:, 2] > colors[:, 0] + 40) & (colors[:, 2] > colors[:, 1] + 10)  # the body
    green = (colors[:, 1] > colors[:, 0] + 40) & (colors[:, 1] > colors[:, 2] + 20)  # the nose, at the front
    assert red.sum() > 50 and blue.sum() > 50 and green.sum() > 20
    assert v[red, 1].mean() > v[blue, 1].mean() + 0.2, "the head must be up (+Y in glTF)"
    assert v[green, 2].mean() > 0.3, "the nose (seen in frame 0) must face +Z"
    assert abs(v[green, 0].mean()) < 0.1
    # mesh.ply is in the same asset frame: +Y up, the nose (toward the first camera) on +Z.
    import trimesh as tm

    ply = tm.load(fitted["out"] / "mesh.ply")
    assert ply.bounds[1][1] > 0.4 and ply.bounds[1][2] > 0.4
