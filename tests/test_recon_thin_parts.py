"""Thin parts survive meshing: the mesh keeps what the splats show (legs, handles, antennae).

The scene is `recon.synthetic.spider_scene` with legs 1% of the object wide. Its splats are built the way
the CPU preset's 128 px fit leaves such a leg (`benchmarks/bench_thin_parts.py` measured it): round
gaussians a third of a pixel across strung along the leg, partly transparent (the leg's pixels peak
under the 0.95 that marks a solid pixel), on a body of flat gaussians on the true surface. Meshing them
with the old rules (thin parts abstained as outline, small components dropped) kept no leg whole.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from recon import synthetic
from recon.fit import Splats
from recon.hull import VisualHull, carve_visual_hull, working_half_size
from recon.mesh import FusedViews, MeshConfig, clean_mesh, fuse_surface
from recon.poses import Cameras, OrbitConfig, orbit_cameras
from recon.raster_torch import SH_C0

ELEVATION, RADIUS, FOV = 20.0, 2.0, 40.0
VIEWS, SIZE = 24, 128
LEG_HALF = 0.005  # legs 1% of the object wide: under one pixel at 128 px
LEG_SIGMA, LEG_OPACITY = 0.0035, 0.8  # a fitted leg: soft, and less than solid at its centre
LEG_SPACING = 2  # one gaussian every this many centreline samples (0.008 apart)
PRESENT = 0.9  # a leg is there when found along 90% of its length
OVERSHOOT = 0.1  # and reaches no farther than 10% of its length past its ends


def fitted_like_splats(scene: list) -> Splats:
    """The body as flat gaussians on its true surface, each leg as soft round gaussians on its centreline."""
    body = synthetic.surface_splats(count=8000, scale=0.012, scene=scene[:2])
    centres = np.concatenate([path[::LEG_SPACING] for path in synthetic.spider_leg_paths(LEG_HALF)])
    n = len(centres)
    legs = {
        "means": torch.tensor(centres, dtype=torch.float32),
        "scales": torch.full((n, 3), float(np.log(LEG_SIGMA))),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1),
        "opacities": torch.full((n,), float(np.log(LEG_OPACITY / (1 - LEG_OPACITY)))),
        "sh0": ((torch.tensor(synthetic.LEG_COLOR) - 0.5) / SH_C0).reshape(1, 1, 3).repeat(n, 1, 1),
        "shN": torch.zeros(n, 3, 3),
    }
    return dataclasses.replace(body, **{k: torch.cat([getattr(body, k), v]) for k, v in legs.items()})


def overshoot_points(path: np.ndarray) -> np.ndarray:
    """Points past the foot (downwards) of a leg's centreline [n, 3], beyond its length's 10%."""
    length = len(path) * synthetic.LEG_PATH_STEP
    start = path[-1] + np.array([0.0, 0.0, -(LEG_HALF + synthetic.LEG_FOUND_SLACK + 0.005)])
    steps = np.arange(0.0, OVERSHOOT * length, synthetic.LEG_PATH_STEP)
    return start - np.outer(steps, [0.0, 0.0, 1.0])


def test_the_mesh_keeps_every_thin_leg_the_splats_show() -> None:
    from scipy.spatial import cKDTree

    scene = synthetic.spider_scene(LEG_HALF)
    cams = orbit_cameras(VIEWS, OrbitConfig(ELEVATION, RADIUS, FOV), SIZE, SIZE)
    c2w = synthetic.orbit_c2w(np.arange(VIEWS) * 360.0 / VIEWS, ELEVATION, RADIUS)
    _, depth = synthetic.render(c2w, FOV, SIZE, scene, supersample=1)
    hull = carve_visual_hull(np.isfinite(depth), cams, working_half_size(cams), 64, 0.5, 0.1)

    mesh = fuse_surface(fitted_like_splats(scene), cams, hull, MeshConfig()).mesh

    points = np.concatenate([np.asarray(mesh.sample(100_000, seed=0)), np.asarray(mesh.vertices)])
    found = synthetic.spider_legs_found(points, LEG_HALF)
    assert len(found) == 8
    assert (found[:, 0] >= PRESENT).all(), f"legs lost or shortened: share of each leg kept {found[:, 0]}"
    assert (found[:, 1] >= PRESENT).all(), f"legs broken off the body: unbroken share {found[:, 1]}"
    tree = cKDTree(points)
    for path in synthetic.spider_leg_paths(LEG_HALF):
        beyond = overshoot_points(path)
        distance, _ = tree.query(beyond)
        assert distance.min() > LEG_HALF + synthetic.LEG_FOUND_SLACK, "a leg reaches past its foot"


def test_a_cut_off_piece_stays_when_the_splats_show_it_and_goes_when_they_do_not() -> None:
    """A big body, a small piece the fused depth shows (a leg cut off by a gap), and a small floater
    no view's depth shows: the size rule alone drops both, the support rule keeps the first."""
    import open3d as o3d
    import trimesh

    body = trimesh.creation.icosphere(subdivisions=4, radius=0.3)  # 5,120 faces
    piece, floater = (  # 192 faces each: above the supported minimum, under a tenth of the body
        trimesh.creation.box(extents=(0.03, 0.03, 0.2)).subdivide().subdivide() for _ in range(2)
    )
    piece.apply_translation((0.5, 0.0, 0.0))
    floater.apply_translation((-0.5, 0.0, 0.0))
    shown = trimesh.util.concatenate([body, piece])
    mesh = trimesh.util.concatenate([body, piece, floater])

    cams = orbit_cameras(12, OrbitConfig(ELEVATION, RADIUS, FOV), 96, 96)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(shown.vertices, np.float32)),
                        o3d.core.Tensor(np.asarray(shown.faces, np.uint32)))  # fmt: skip
    far = 100.0
    depth = np.stack([z_depth(scene, cams, i, far) for i in range(len(cams))])
    fused = FusedViews(cams, depth, far)
    hull = VisualHull(np.ones((8, 8, 8), dtype=bool), half=1.0)
    voxel = 0.01

    def pieces(cfg: MeshConfig) -> set[int]:
        kept = clean_mesh(mesh.copy(), hull, cfg, fused, voxel)
        return {int(np.sign(round(float(p.centroid[0]), 1))) for p in kept.split(only_watertight=False)}

    assert pieces(MeshConfig(support_share=0.0)) == {0}
    assert pieces(MeshConfig()) == {0, 1}


def z_depth(scene, cams: Cameras, index: int, far: float) -> np.ndarray:
    """z-depth [H, W] float32 of the ray-cast scene from camera `index` (`far` where it is missed)."""
    import open3d as o3d

    v, u = np.mgrid[0 : cams.height, 0 : cams.width] + 0.5
    cam = np.stack([(u - cams.cx) / cams.fx, -(v - cams.cy) / cams.fy, -np.ones_like(u)], -1).reshape(-1, 3)
    c2w = cams.c2w[index]
    rays = np.concatenate([np.broadcast_to(c2w[:3, 3], cam.shape), cam @ c2w[:3, :3].T], 1)
    t = scene.cast_rays(o3d.core.Tensor(rays.astype(np.float32)))["t_hit"].numpy()  # along `cam`: z = t
    return np.where(np.isfinite(t), t, far).reshape(cams.height, cams.width).astype(np.float32)


def test_the_mesh_is_never_coarser_than_its_fit() -> None:
    """A 256 px fit meshed at the fast preset's 160 voxels and 160 px renders lost the spider's thin legs'
    width and 4 dB (benchmarks/RESULTS.md, stop 26): the presets' mesh sizes follow a finer fit, up to
    the voxel cap; a config file's values stay as given."""
    from recon.mesh import MAX_FOLLOWED_VOXELS, MeshConfig

    preset = MeshConfig(voxels=160, render_size=160)
    assert preset.following(128) == preset  # the fast preset's own 128 px fit: unchanged
    finer = preset.following(256)
    assert (finer.voxels, finer.render_size) == (256, 256)
    huge = preset.following(2048)
    assert (huge.voxels, huge.render_size) == (MAX_FOLLOWED_VOXELS, 2048)
    given = preset.following(256, frozenset({"voxels"}))
    assert (given.voxels, given.render_size) == (160, 256)


def test_the_face_budget_follows_small_frames_unless_given() -> None:
    """21 frames of 128 px showed the same held-out glb at 50k, 25k and 12k faces, and xatlas took twice as
    long at 50k (benchmarks/RESULTS.md, stop 27): the default budget is capped by the frames' pixels; a
    --faces flag or a config file's value stays as given, and 0 (no limit) stays 0."""
    from recon.asset import ExportConfig
    from recon.config import resolve_settings
    from recon.constants import FACES_PER_FRAME_PIXEL

    default = ExportConfig()
    assert default.following(128 * 128).faces == round(FACES_PER_FRAME_PIXEL * 128 * 128) < default.faces
    assert default.following(512 * 512) == default  # Droplet3D's 512 px frames keep the default
    assert ExportConfig(faces=0).following(128 * 128).faces == 0
    given = resolve_settings(None, export_cli={"faces": 80_000, "texture_size": None})
    assert given.export_given == {"faces"}
    assert given.export.following(128 * 128, given.export_given).faces == 80_000
    from_file = resolve_settings({"mesh": {"faces": 30_000, "voxels": 200}})
    assert from_file.export_given == {"faces"} and from_file.mesh_given == {"voxels"}
    assert from_file.export.following(128 * 128, from_file.export_given).faces == 30_000


def test_partly_covered_pixels_abstain_only_under_the_carve_threshold() -> None:
    """`alpha_carve`: background pixels whose coverage lies between it and `alpha_min` neither carve nor
    fuse (a finer fit's thin part keeps its partly covered edge); at its default every background pixel
    carves, as before, and so it does whenever `alpha_carve` is at or above `alpha_min` (a config that
    lowers `alpha_min` alone stays valid)."""
    from recon.mesh import MeshConfig, fusion_depth

    alpha = np.zeros((9, 9), dtype=np.float32)
    alpha[2:7, 2:7] = 0.4  # a partly covered band around ...
    alpha[3:6, 3:6] = 1.0  # ... a solid part
    depth = np.full((9, 9), 1.5, dtype=np.float32)
    far = 10.0
    default = fusion_depth(depth, alpha, far, MeshConfig())
    assert (default[alpha == 0.4] == far).all() and (default[alpha == 0.0] == far).all()
    finer = fusion_depth(depth, alpha, far, MeshConfig(alpha_carve=0.35))
    assert (finer[alpha == 0.4] == 0.0).all() and (finer[alpha == 0.0] == far).all()
    assert (finer[alpha == 1.0] == default[alpha == 1.0]).all()
    lowered = fusion_depth(depth, alpha, far, MeshConfig(alpha_min=0.3).validate())
    assert (lowered[alpha == 0.4] != far).all()  # foreground now (an outline that abstains), never carved
