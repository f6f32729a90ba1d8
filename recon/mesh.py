"""Meshes from fitted splats: rendered depth + colour fused in a TSDF, cleaned, and exported.

The splats are rendered (median depth, colour, alpha) from the training cameras plus two extra
rings above and below, fused into an open3d TSDF volume, and the extracted surface is cleaned
with trimesh: faces outside the silhouette visual hull go, and only the largest connected
component(s) stay, so no background shell or floater survives. Background pixels (alpha < 0.5) are
integrated as infinitely far, so their rays carve the space in front of them.

The mesh stays in the fitting world frame (+Z up); `recon.asset` smooths, decimates, textures and
writes it in the asset frame of `recon.frames`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recon.errors import ReconError
from recon.fit import Splats
from recon.hull import VisualHull
from recon.overrides import with_overrides
from recon.poses import Cameras, look_at_c2w, orbit_positions


@dataclass
class MeshConfig:
    voxels: int = 160  # TSDF voxels across the object's largest extent
    trunc_voxels: float = 4.0  # TSDF truncation, in voxels
    render_size: int = 160  # side of the depth renders
    extra_views: int = 24  # views per extra ring (elevation +50 and -35 degrees)
    alpha_min: float = 0.5  # pixels with less coverage are treated as background
    keep_fraction: float = 0.1  # keep components with at least this fraction of the largest's faces

    def updated(self, data: dict[str, Any], where: str = "mesh") -> MeshConfig:
        """A copy with the keys of `data` replaced; unknown keys are an error (typos must not pass)."""
        return with_overrides(self, data, where)


def meshing_cameras(cameras: Cameras, size: int, extra_views: int) -> Cameras:
    """The training cameras plus rings at +50 and -35 degrees elevation, rendered at `size` px."""
    c = cameras.scaled(size, round(size * cameras.height / cameras.width))
    radius = float(np.linalg.norm(cameras.centers(), axis=1).mean())
    extra = []
    if extra_views > 0:
        az = np.arange(extra_views) * 360.0 / extra_views
        for el in (50.0, -35.0):
            extra.append(look_at_c2w(orbit_positions(az + 7.5, el, radius)))
    c2w = np.concatenate([c.c2w, *extra]) if extra else c.c2w
    return Cameras(c2w, c.fx, c.fy, c.cx, c.cy, c.width, c.height)


def tsdf_mesh(splats: Splats, cameras: Cameras, hull: VisualHull, cfg: MeshConfig) -> Any:
    """A cleaned trimesh.Trimesh in world coordinates with vertex colours."""
    import open3d as o3d
    import trimesh

    cams = meshing_cameras(cameras, cfg.render_size, cfg.extra_views)
    lo, hi = hull.bounds()
    voxel = float((hi - lo).max() + hull.voxel) / cfg.voxels
    margin = (cfg.trunc_voxels + 2) * voxel
    length = float((hi - lo).max()) + hull.voxel + 2 * margin
    center = 0.5 * (lo + hi)
    # A uniform grid around the hull (open3d 0.20's ScalableTSDFVolume extracts nothing on some builds).
    volume = o3d.pipelines.integration.UniformTSDFVolume(
        length=length, resolution=int(np.ceil(length / voxel)), sdf_trunc=cfg.trunc_voxels * voxel,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8,
        origin=(center - length / 2).reshape(3, 1),
    )  # fmt: skip
    # open3d puts pixel centres at integers; ours (gsplat, nerfstudio) at +0.5.
    intrinsic = o3d.camera.PinholeCameraIntrinsic(
        cams.width, cams.height, cams.fx, cams.fy, cams.cx - 0.5, cams.cy - 0.5
    )
    viewmats = cams.viewmats()
    far = float(np.linalg.norm(cams.centers(), axis=1).max()) + 2.0 * length
    for s in range(0, len(cams), 8):
        sub = cams.subset(np.arange(s, min(s + 8, len(cams))))
        # Median depth (torch rasteriser on any device): expected depth sits behind the surface.
        renders, alphas = splats.render(sub, render_mode="RGB+MD", batch=8, backend="torch")
        for j in range(len(sub)):
            rgb = (renders[j, ..., :3].clamp(0, 1) * 255).round().byte().cpu().numpy()
            depth = renders[j, ..., 3].cpu().numpy().astype(np.float32)
            # Background pixels get a depth beyond the volume: their rays carve free space (no shell).
            depth[alphas[j, ..., 0].cpu().numpy() < cfg.alpha_min] = far
            rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
                o3d.geometry.Image(np.ascontiguousarray(rgb)), o3d.geometry.Image(depth),
                depth_scale=1.0, depth_trunc=1e6, convert_rgb_to_intensity=False,
            )  # fmt: skip
            volume.integrate(rgbd, intrinsic, viewmats[s + j])
    raw = volume.extract_triangle_mesh()
    vertices = np.asarray(raw.vertices)
    faces = np.asarray(raw.triangles)
    if len(faces) == 0:
        raise ReconError("meshing found no surface (the fitted splats render as background everywhere)")
    colors = (np.asarray(raw.vertex_colors) * 255).round().clip(0, 255).astype(np.uint8)
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=colors, process=True)
    return clean_mesh(mesh, hull, cfg.keep_fraction)


def clean_mesh(mesh: Any, hull: VisualHull, keep_fraction: float) -> Any:
    """Drop faces outside the (dilated) visual hull, then all but the largest component(s)."""
    import trimesh

    inside = hull.contains(mesh.triangles_center, dilate=2)
    mesh.update_faces(inside)
    mesh.remove_unreferenced_vertices()
    parts = mesh.split(only_watertight=False)
    if len(parts) == 0:
        raise ReconError("meshing left no surface inside the visual hull")
    sizes = np.array([len(p.faces) for p in parts])
    keep = [p for p, n in zip(parts, sizes, strict=True) if n >= keep_fraction * sizes.max()]
    return trimesh.util.concatenate(keep)
