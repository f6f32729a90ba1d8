"""From the fitted splats and their TSDF mesh to the exported asset, in named steps.

1. `smooth_surface`: Taubin smoothing of the dense TSDF mesh (voxel lumps go, the shape stays).
2. `decimate`: quadric decimation to the face budget (`faces`).
3. `uv_atlas`: xatlas charts for a `texture_size` texture (skipped with `vertex_colors`).
4. Colour: the splats are rendered from the training views plus rings above and below, and every texel
   (or vertex) takes the frontal, unoccluded views' colour (`recon.texture`): sampled from the training
   frames themselves at their full size where a training view sees it (`bake_from_frames`), else from
   the renders.
5. Asset frame: one rotation (`recon.frames`) takes mesh, splats and cameras from the fitting world
   (+Z up) to glTF's convention (+Y up, first view toward +Z).
6. Files: mesh.glb, mesh.obj (+ mesh.mtl and the texture), mesh.ply (`recon.mesh_files`), and the
   splats in `splat_format` (`recon.export`).

The input mesh is whatever `recon.mesh.tsdf_mesh` returns (world frame, vertex colours); this module
never reaches into how it was made.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon.constants import (
    FACES_PER_FRAME_PIXEL,
    MAX_TEXTURE_SIZE,
    MIN_FACES,
    MIN_TEXTURE_SIZE,
    TEXELS_PER_FRAME_PIXEL,
)
from recon.errors import ReconError
from recon.export import SPLAT_FORMATS, write_splats
from recon.fit import Splats
from recon.frames import splats_to_asset
from recon.mesh_files import colored_mesh, textured_mesh, write_glb, write_obj, write_ply
from recon.overrides import bounded, check_bounds, with_overrides
from recon.poses import Cameras
from recon.surface import decimate, smooth_surface, unit_vertex_normals
from recon.texture import (
    bake_cameras,
    fill_unseen_vertices,
    project_colors,
    texel_points,
    texture_image,
    uv_atlas,
)


@dataclass
class ExportConfig:
    """How the mesh and splats are written. Keys live in a config file's "mesh" section."""

    # Face budget: quadric decimation down to at most this many faces (0 keeps every TSDF face). Unless
    # given, never more than `FACES_PER_FRAME_PIXEL` per pixel of a frame (`following`).
    faces: int = 50_000
    # Side of the square base-colour texture, in texels; never more than `TEXELS_PER_FRAME_PIXEL` times
    # the frames' longest side (more texels than the frames hold only cost time).
    texture_size: int = bounded(2048, MIN_TEXTURE_SIZE, MAX_TEXTURE_SIZE)
    # Per-vertex colour instead of a UV texture (smaller file, far less colour detail).
    vertex_colors: bool = False
    # Splat file: "ply" (standard 3DGS, most viewers), "splat" (antimatter15 viewer, SH degree 0),
    # "ply-compressed" (SuperSplat's compressed ply).
    splat_format: str = "ply"
    # Taubin smoothing passes on the TSDF surface (0 = off): removes voxel-scale lumps, keeps volume.
    smooth_iterations: int = bounded(10, 0, 1000)
    # Width of the splat renders colours are projected from; texture detail is capped by it. Never wider
    # than the frames: on 128 px frames renders at 128 and 512 px give the same glb (24.40 / 24.12 /
    # 23.25 / 21.51 dB at training views / between / above / below, benchmarks/RESULTS.md) in half the time.
    bake_size: int = bounded(512, 16, 4096)
    # Views in each of the two extra bake rings (above and below the orbit), on top of the training views.
    bake_ring_views: int = 12
    # At most this many training views (evenly spread over the orbit) are rendered for the bake.
    bake_orbit_views: int = bounded(36, 1, 1024)
    # Power of the cosine weighting of views: higher prefers the most frontal view more strictly. A wide
    # blend wins: each view's colour carries its own sub-pixel registration and anti-aliasing error,
    # and averaging more views cancels it. Measured (bench_export, quality-preset fit, 50k faces,
    # held-out PSNR of the textured glb): 32 -> 32.95 dB, 8 -> 33.15, 4 -> 33.27, 2 -> 33.42,
    # 1 -> 33.43; vertex colours 31.40 at 8, 31.51 at 2; on the CPU preset's fit 24.33 at 8 and at 2.
    bake_sharpness: float = 2.0
    # A view sees a surface point when the rendered median depth is within this fraction of the
    # object's size (bounding-box diagonal) of the point's depth; otherwise the point is occluded.
    bake_depth_tolerance: float = 0.02
    # Rendered pixels with less splat coverage are background and give no colour.
    bake_alpha_min: float = 0.5
    # Colour from the training frames at their full size where a training view sees the surface (the
    # splats only decide visibility), not from the splats' renders: a fit at a fraction of the frames'
    # size (the CPU preset trains 512 px frames at 128 px) blurs what the frames still hold. Measured
    # (bench_export, textured glb at 50k faces): CPU preset's fit 24.33 -> 24.55 dB; quality preset's
    # fit (trained at the frames' size) 33.15 -> 33.16.
    bake_from_frames: bool = True
    # glTF roughnessFactor (metallic is always 0): the baked colour already holds the lighting.
    roughness: float = bounded(0.9, 0.0, 1.0)

    def validate(self) -> ExportConfig:
        """Reject values no export can use, naming the option (the bounded fields: `check_bounds`)."""
        check_bounds(self, "mesh")
        if not isinstance(self.faces, int) or (self.faces != 0 and self.faces < MIN_FACES):
            raise ReconError(f"faces must be 0 (no limit) or an integer >= {MIN_FACES}, got {self.faces!r}")
        if self.splat_format not in SPLAT_FORMATS:
            raise ReconError(
                f"splat-format must be one of {', '.join(SPLAT_FORMATS)}, got {self.splat_format!r}"
            )
        for name in ("vertex_colors", "bake_from_frames"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ReconError(f"{name.replace('_', '-')} must be true or false, got {value!r}")
        return self

    def following(self, frame_pixels: int, given: frozenset[str] = frozenset()) -> ExportConfig:
        """This config for frames of `frame_pixels` pixels each: the face budget at most
        `FACES_PER_FRAME_PIXEL` per pixel (and at least `MIN_FACES`), unless `given` holds "faces" (a
        config file or the command line set it) or the budget is 0 (no limit). A 128 px orbit shows no more
        than 16k faces' worth of surface, and xatlas's time grows with the faces."""
        if "faces" in given or self.faces == 0:
            return self
        cap = max(MIN_FACES, round(FACES_PER_FRAME_PIXEL * frame_pixels))
        return dataclasses.replace(self, faces=min(self.faces, cap))

    def updated(self, data: dict[str, Any], where: str = "mesh") -> ExportConfig:
        """A copy with the keys of `data` replaced; unknown keys are an error (typos must not pass)."""
        return with_overrides(self, data, where)


@dataclass
class AssetMesh:
    """The exported mesh, in the asset frame, with what the report and the tests need."""

    mesh: Any  # trimesh.Trimesh, textured or vertex-coloured
    texture: np.ndarray | None  # [S, S, 3] uint8 sRGB, None with vertex colours
    vertex_colors: np.ndarray  # [V, 3] uint8 sRGB of the welded (pre-atlas) vertices
    welded: Any  # trimesh.Trimesh before the UV seams were cut, vertex-coloured


def texture_side(cfg: ExportConfig, frames: np.ndarray | None) -> int:
    """The texture's side: `cfg.texture_size`, capped by the frames' size (`TEXELS_PER_FRAME_PIXEL`)."""
    if frames is None:
        return cfg.texture_size
    return max(MIN_TEXTURE_SIZE, min(cfg.texture_size, TEXELS_PER_FRAME_PIXEL * max(frames.shape[1:3])))


def build_asset_mesh(
    mesh: Any, splats: Splats, cameras: Cameras, cfg: ExportConfig, transform: np.ndarray,
    frames: np.ndarray | None = None,
) -> AssetMesh:  # fmt: skip
    """Steps 1-5: smooth, decimate, atlas, bake colour, rotate into the asset frame (see the module doc).

    `mesh` and `splats` are in the fitting world frame, `cameras` the training cameras; `transform` is
    the 4x4 world-to-asset rotation. `frames` [N, H, W, 3] uint8, the training frames at their own size,
    give the colour where the bake sees the surface from a training view (`recon.texture.project_colors`);
    without them the colour comes from the splats' renders alone.
    """
    cfg.validate()
    surface = smooth_surface(mesh, cfg.smooth_iterations)
    if cfg.faces > 0:
        surface = decimate(surface, cfg.faces)
    vertices = np.asarray(surface.vertices)
    normals = unit_vertex_normals(surface)
    points, point_normals = [vertices], [normals]
    atlas = covered = None
    if not cfg.vertex_colors:
        texture_size = texture_side(cfg, frames)
        atlas = uv_atlas(vertices, np.asarray(surface.faces), texture_size)
        covered, texels, texel_normals = texel_points(atlas, np.asarray(surface.face_normals), texture_size)
        points.append(texels)
        point_normals.append(texel_normals)
    size = float(np.linalg.norm(np.ptp(vertices, axis=0)))
    # One projection pass for vertices and texels together: the splat renders are the slow part.
    bake_size = cfg.bake_size if frames is None else min(cfg.bake_size, frames.shape[2])
    views, taken = bake_cameras(cameras, bake_size, cfg.bake_ring_views, cfg.bake_orbit_views)
    colors, seen = project_colors(
        np.concatenate(points), np.concatenate(point_normals), splats, views, cfg.bake_alpha_min,
        cfg.bake_depth_tolerance * size, cfg.bake_sharpness,
        frames[taken] if frames is not None and cfg.bake_from_frames else None,
    )  # fmt: skip
    n = len(vertices)
    vertex_colors = fill_unseen_vertices(vertices, colors[:n], seen[:n])
    rot = transform[:3, :3]
    welded = colored_mesh(vertices @ rot.T, np.asarray(surface.faces), normals @ rot.T, vertex_colors)
    if atlas is None:
        return AssetMesh(welded, None, vertex_colors, welded)
    texture = texture_image(covered, points[1], colors[n:], seen[n:])
    out = textured_mesh(
        atlas.vertices @ rot.T, atlas.faces, atlas.uv, normals[atlas.source] @ rot.T, texture, cfg.roughness
    )
    return AssetMesh(out, texture, vertex_colors, welded)


def write_asset(
    out_dir: Path, mesh: Any, splats: Splats, cameras: Cameras, cfg: ExportConfig, transform: np.ndarray,
    frames: np.ndarray | None = None,
) -> tuple[dict[str, Any], AssetMesh]:  # fmt: skip
    """Steps 1-6: every mesh and splat file into `out_dir`; returns the report's "files" and the mesh."""
    out_dir = Path(out_dir)
    asset = build_asset_mesh(mesh, splats, cameras, cfg, transform, frames)
    write_glb(out_dir / "mesh.glb", asset.mesh)
    obj_files = write_obj(out_dir / "mesh.obj", asset.mesh)
    write_ply(out_dir / "mesh.ply", asset.welded)
    splat_name = write_splats(out_dir, splats_to_asset(splats, transform), cfg.splat_format)
    files: dict[str, Any] = {
        "splats": splat_name,
        "mesh": {"glb": "mesh.glb", "obj": obj_files, "ply": "mesh.ply"},
    }
    return files, asset
