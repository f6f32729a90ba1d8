"""Meshes from fitted splats: rendered depth + colour fused in a TSDF, cleaned, and exported.

The splats are rendered (first-surface depth, colour, alpha) from the training cameras (optionally
plus a ring beyond the orbit, on the side it looks from) and fused into an open3d TSDF volume. Space no camera
observed (the underside of an object an orbit sees from above) is closed by the visual hull, cut flat
at the lowest and highest observed surface, so the mesh is watertight without inventing a cone of
hidden space. The extracted surface is cleaned with trimesh: faces outside the silhouette visual hull
go, and of the connected components only the large ones and those the splats show stay (a leg cut off
by a gap is kept, a floater the views carved away is not); before that, every face no ray from outside
reaches goes (inner sheets no viewer can see). Background pixels (alpha < 0.5) are integrated as
infinitely far, so their rays carve free space; soft outline pixels of thick parts (alpha < 0.95) are
left out; thin parts (a leg one or two pixels wide is all outline) always fuse (`fusion_depth`).

The mesh stays in the fitting world frame (+Z up); `recon.asset` smooths, decimates, textures and
writes it in the asset frame of `recon.frames`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recon.errors import ReconError
from recon.fit import Splats
from recon.hull import VisualHull, pixel_index, project_points
from recon.overrides import bounded, check_bounds, with_overrides
from recon.pose_refine import orbit_angles
from recon.poses import Cameras, look_at_c2w, orbit_positions
from recon.surface import nearest_index

# The TSDF follows a finer fit up to this many voxels per side: the quality preset's own 256 (its 512 px fit
# meshes at 256 voxels and 512 px renders); 512^3 would take gigabytes on a CPU.
MAX_FOLLOWED_VOXELS = 256


@dataclass
class MeshConfig:
    # TSDF voxels across the object's largest extent, and the side of the depth renders. The presets'
    # values are floors: a finer fit meshes finer (`following`); a config file's are kept as given.
    voxels: int = bounded(160, 8, 1024)
    trunc_voxels: float = bounded(4.0, 0.5, 64)  # TSDF truncation, in voxels
    render_size: int = bounded(160, 16, 4096)
    # Views in an extra ring beyond the orbit, on the side it looks from. Off by default: where the fit
    # left a surface the orbit saw only at a grazing angle (a box's top) half-transparent, those renders
    # see through it and carve the object's inside (the far-vertex share of the tall benchmark scene
    # went from 13% to 47% with 24 of them); unseen space is closed from the hull instead.
    extra_views: int = bounded(0, 0, 360)
    alpha_min: float = bounded(0.5, 0.0, 1.0)  # pixels with less coverage are treated as background
    # Background pixels carve free space only under this coverage; between it and `alpha_min` they abstain
    # (at or above `alpha_min`: every background pixel carves, the default). A thin part's partly covered edge
    # pixels carve it from both sides. On a fit at 256 px (bench_thin_parts, 1% spider, 256 voxels and
    # renders; glb silhouette IoU, worst view between / above / below, and glb dB) 0.35 gave 0.954 / 0.941 /
    # 0.950 and 30.1 / 28.9 / 29.0 dB against 0.942 / 0.943 / 0.938 and 29.4 / 28.6 / 28.4 dB. But at the CPU
    # preset's 128 px fit, where a 1% leg is under a pixel wide, it fattened the legs (IoU 0.849 -> 0.827,
    # 24.9 -> 24.2 dB between), and the every-side dark scene's far vertices went 1.46% -> 1.62%; so it is
    # a setting for finer fits of thin objects ("mesh": {"alpha_carve": 0.35}), not a default.
    alpha_carve: float = bounded(0.5, 0.0, 1.0)
    # Outline pixels (within `outline_px` of the background) with coverage between `alpha_min` and this
    # abstain: neither surface nor free space. There the first-surface depth of a soft edge can fall
    # anywhere in the space behind it (under a box's bottom edge: the hull's hidden cone); fusing them put
    # the closed underside of the panda benchmark scene 0.09 too low (6.7% far vertices; 0.6% when they
    # abstain). Inside the silhouette such pixels still fuse: their rays carve the object's inside free of
    # inner walls.
    alpha_solid: float = bounded(0.95, 0.0, 1.0)
    outline_px: int = bounded(2, 0, 64)
    # Thin parts (foreground that an opening of this many pixels removes: legs, handles, antennae) are
    # all outline, so the rule above would leave them no surface votes while the background beside them
    # carves them; they always fuse (0: off). Measured with `support_share` (bench_thin_parts, legs 1%
    # of the object wide, CPU preset fit): 8 of 8 legs kept and the glb 24.8 dB between the views,
    # against 2 of 8 and 19.9 dB without; legs 1.8% wide and bench_every_side unchanged.
    thin_px: int = bounded(1, 0, 16)
    # Gaussians whose centre lies farther than this many voxels outside the fused, closed surface are
    # removed from the splats. The views see the hull's hidden cone under an object only through its
    # outline, so the fit parks edge gaussians there; from below they hang under the object as a haze
    # (bench_every_side 'below': tall 22.8 -> 23.5 dB, dark 21.9 -> 23.0, panda unchanged; 1 voxel gains
    # more below but costs the dark scene 0.8 dB from above). 0 keeps every gaussian; it must stay under
    # `trunc_voxels`, beyond which the fused distance is clipped.
    carve_voxels: float = bounded(2.0, 0.0, 64)
    # Space no view observed (the hull's hidden cone under an object) is empty: a gaussian centred there
    # outside the surface is removed at any distance, and every gaussian's axes are shortened until its
    # `clip_sigmas` extent no longer reaches into that space outside the surface. In observed space the
    # fit answered to the views, so `carve_voxels` alone applies there. Measured on saved 96 px fits
    # (bench_every_side 'below', between and above unchanged within 0.05 dB): tall 23.9 -> 25.5 dB, dark
    # 23.2 -> 25.0, panda 25.2 -> 25.3; clipping in observed space too cost dark 0.4-2.7 dB between
    # the training views. 0 turns the clip off (the carve of unobserved space stays).
    clip_sigmas: float = bounded(3.0, 0.0, 6.0)
    keep_fraction: float = bounded(0.1, 0.0, 1.0)  # keep components with >= this share of the largest's faces
    # A smaller component stays too when at least this share of its faces lie on the surface the splats
    # show (within `support_voxels` of a fused first-surface depth): a leg cut off from the body by a gap
    # is still a leg, a floater the views carved is not (0: only the size rule).
    support_share: float = bounded(0.5, 0.0, 1.0)
    support_voxels: float = bounded(2.0, 0.0, 64)
    # Faces that no ray from this many directions around the object reaches are removed (0 keeps them).
    # A surface the orbit saw only at a grazing angle (a box's top) can be half-transparent in the fit;
    # a view's rays then pass it and carve thin slits into the object, whose walls mesh as inner sheets
    # nobody can see: 11% of the surface area of the export benchmark's quality-preset mesh, all of it
    # spent from the face budget and shipped to the DCC tool as hidden junk.
    hidden_views: int = bounded(100, 0, 10_000)
    # Depth is read where a pixel's accumulated alpha first reaches this: the first surface. At the
    # median (0.5) a surface the fit left half-transparent gives the depth of the object's far side,
    # and the TSDF then carves the object's inside and fuses inner walls.
    depth_alpha: float = bounded(0.25, 0.01, 0.99)

    def validate(self) -> MeshConfig:
        """Raise ReconError for a field outside its bounds, or settings that do not fit together."""
        check_bounds(self, "mesh")
        if self.carve_voxels > 0 and self.carve_voxels >= self.trunc_voxels:
            raise ReconError(
                f"mesh carve_voxels ({self.carve_voxels:g}) must be below "
                f"trunc_voxels ({self.trunc_voxels:g})"
            )
        return self

    def following(self, train_side: int, given: frozenset[str] = frozenset()) -> MeshConfig:
        """This config for a fit trained at `train_side` px (its frames' longest side): the depth renders at
        least that size and the TSDF at least that many voxels, up to `MAX_FOLLOWED_VOXELS`, except where
        a config file gave the value (`given`). A mesh coarser than its fit loses what the fit resolved:
        the spider's 1% legs, fitted at 256 px, kept silhouette IoU 0.89 and 24-25 dB at 160 voxels and
        160 px renders, 0.94 and 28-29 dB at 256 and 256."""
        followed = {"voxels": max(self.voxels, min(train_side, MAX_FOLLOWED_VOXELS)),
                    "render_size": max(self.render_size, train_side)}  # fmt: skip
        return dataclasses.replace(self, **{k: v for k, v in followed.items() if k not in given})

    def updated(self, data: dict[str, Any], where: str = "mesh") -> MeshConfig:
        """A copy with the keys of `data` replaced; unknown keys are an error (typos must not pass)."""
        return with_overrides(self, data, where)


# The extra meshing ring sits this many degrees farther from the equator than the orbit, on the side the
# orbit looks from (above an orbit that looks down): there the splats interpolate what the orbit saw.
# Never on the other side: an orbit that looks down never sees the underside, the splats there are open,
# and their renders from below would fuse the inner faces of the far walls as an inward-facing layer.
EXTRA_RING_OFFSET = 30.0
MAX_RING_ELEVATION = 70.0
EXTRA_RING_AZIMUTH = 7.5  # degrees: halfway between the views of a 24-view ring
FILL_WEIGHT = 1.0  # TSDF weight given to voxels closed from the hull (any weight > 0 lets them mesh)


def meshing_cameras(cameras: Cameras, size: int, extra_views: int) -> Cameras:
    """The training cameras plus one ring beyond the orbit on the side it looks from, at `size` px."""
    c = cameras.scaled(size, round(size * cameras.height / cameras.width))
    if extra_views <= 0:
        return c
    radius = float(np.linalg.norm(c.centers(), axis=1).mean())
    orbit_elevation = float(orbit_angles(c.c2w)[1].mean())
    side = 1.0 if orbit_elevation >= 0 else -1.0
    ring = float(np.clip(orbit_elevation + side * EXTRA_RING_OFFSET, -MAX_RING_ELEVATION, MAX_RING_ELEVATION))
    az = np.arange(extra_views) * 360.0 / extra_views + EXTRA_RING_AZIMUTH
    c2w = np.concatenate([c.c2w, look_at_c2w(orbit_positions(az, ring, radius))])
    return Cameras(c2w, c.fx, c.fy, c.cx, c.cy, c.width, c.height)


@dataclass
class Grid:
    """The TSDF's uniform voxel grid: a cube of `length` at `origin` with `resolution` voxels per side."""

    origin: np.ndarray  # [3] corner of the cube
    length: float
    resolution: int
    trunc: float  # truncation distance, world units

    @property
    def voxel(self) -> float:
        return self.length / self.resolution

    def centers(self) -> np.ndarray:
        """Voxel centres [R^3, 3] in open3d's order (x slowest, z fastest)."""
        r = np.arange(self.resolution)
        ix, iy, iz = np.meshgrid(r, r, r, indexing="ij")
        index = np.stack([ix.ravel(), iy.ravel(), iz.ravel()], axis=1)
        return self.origin + (index + 0.5) * self.voxel


def tsdf_grid(hull: VisualHull, cfg: MeshConfig) -> Grid:
    """A cube around the hull with room for the truncation band on every side."""
    lo, hi = hull.bounds()
    voxel = float((hi - lo).max() + hull.voxel) / cfg.voxels
    margin = (cfg.trunc_voxels + 2) * voxel
    length = float((hi - lo).max()) + hull.voxel + 2 * margin
    resolution = int(np.ceil(length / voxel))
    return Grid(0.5 * (lo + hi) - length / 2, resolution * voxel, resolution, cfg.trunc_voxels * voxel)


def fusion_depth(depth: np.ndarray, alpha: np.ndarray, far: float, cfg: MeshConfig) -> np.ndarray:
    """The depth map [H, W] float32 one view fuses: `far` where its ray carves free space, 0 where the
    pixel abstains (open3d skips it), else the splats' first-surface depth.

    * Background (coverage under `alpha_min`) carves where its coverage is also under `alpha_carve`, and
      abstains between the two (a thin part's partly covered edge).
    * Soft outline pixels of a thick part (coverage under `alpha_solid` within `outline_px` of the
      background) abstain.
    * Thin parts (foreground that an opening of `thin_px` removes) always fuse.
    """
    from scipy import ndimage

    depth = depth.astype(np.float32).copy()
    background = alpha < cfg.alpha_min
    depth[background] = far
    outline = ndimage.binary_dilation(background, iterations=cfg.outline_px) & ~background
    if cfg.thin_px > 0:
        outline &= ndimage.binary_opening(~background, iterations=cfg.thin_px)
    depth[outline & (alpha < cfg.alpha_solid)] = 0.0
    depth[background & (alpha >= cfg.alpha_carve)] = 0.0
    return depth


# A supported component must have at least this many faces: scraps of a few faces are noise to a DCC user.
MIN_SUPPORTED_FACES = 20


@dataclass
class FusedViews:
    """The depth maps the TSDF fused, kept to ask afterwards where the splats show a surface."""

    cameras: Cameras
    depth: np.ndarray  # [C, H, W] float32, as `fusion_depth` returns them
    far: float

    def points(self) -> np.ndarray:
        """Every fused first-surface pixel back-projected to the world [n, 3] (OpenGL camera axes)."""
        cams, out = self.cameras, []
        for c, depth in enumerate(self.depth):
            v, u = np.nonzero((depth > 0) & (depth < self.far))
            z = depth[v, u]
            x, y = (u + 0.5 - cams.cx) / cams.fx * z, -(v + 0.5 - cams.cy) / cams.fy * z
            out.append(np.stack([x, y, -z], 1) @ cams.c2w[c, :3, :3].T + cams.c2w[c, :3, 3])
        return np.concatenate(out)

    def supported(self, points: np.ndarray, tolerance: float) -> np.ndarray:
        """Whether some view's fused first surface lies within `tolerance` of each point [n, 3], [n]."""
        uv, z = project_points(points, self.cameras)
        out = np.zeros(len(points), dtype=bool)
        for c in range(len(self.cameras)):
            u, v, inside = pixel_index(uv[c], z[c], self.cameras.width, self.cameras.height)
            d = self.depth[c, v[inside], u[inside]]
            out[inside] |= (d > 0) & (d < self.far) & (np.abs(d - z[c, inside]) < tolerance)
        return out


def integrate_splats(splats: Splats, cams: Cameras, grid: Grid, cfg: MeshConfig) -> tuple[Any, FusedViews]:
    """An open3d UniformTSDFVolume holding the splats' first-surface depth and colour from every camera,
    and the depth maps it fused."""
    import open3d as o3d

    # A uniform grid (open3d 0.20's ScalableTSDFVolume extracts nothing on some builds).
    volume = o3d.pipelines.integration.UniformTSDFVolume(
        length=grid.length, resolution=grid.resolution, sdf_trunc=grid.trunc,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8, origin=grid.origin.reshape(3, 1),
    )  # fmt: skip
    # open3d puts pixel centres at integers; ours (gsplat, nerfstudio) at +0.5.
    intrinsic = o3d.camera.PinholeCameraIntrinsic(
        cams.width, cams.height, cams.fx, cams.fy, cams.cx - 0.5, cams.cy - 0.5
    )
    viewmats = cams.viewmats()
    far = float(np.linalg.norm(cams.centers(), axis=1).max()) + 2.0 * grid.length
    fused = np.zeros((len(cams), cams.height, cams.width), dtype=np.float32)
    for s in range(0, len(cams), 8):
        sub = cams.subset(np.arange(s, min(s + 8, len(cams))))
        # First-surface depth (torch rasteriser on any device): expected depth sits behind the surface.
        renders, alphas = splats.render(
            sub, render_mode="RGB+MD", batch=8, backend="torch", depth_alpha=cfg.depth_alpha
        )
        for j in range(len(sub)):
            rgb = (renders[j, ..., :3].clamp(0, 1) * 255).round().byte().cpu().numpy()
            alpha = alphas[j, ..., 0].cpu().numpy()
            depth = fusion_depth(renders[j, ..., 3].cpu().numpy(), alpha, far, cfg)
            fused[s + j] = depth
            rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
                o3d.geometry.Image(np.ascontiguousarray(rgb)), o3d.geometry.Image(depth),
                depth_scale=1.0, depth_trunc=1e6, convert_rgb_to_intensity=False,
            )  # fmt: skip
            volume.integrate(rgbd, intrinsic, viewmats[s + j])
    return volume, FusedViews(cams, fused, far)


def close_unseen(volume: Any, grid: Grid, hull: VisualHull) -> tuple[np.ndarray, np.ndarray]:
    """Give every voxel no camera observed the visual hull's signed distance, cut to the observed height;
    return the volume's TSDF [R^3, 2] (distance / trunc, weight) as it then stands, and which voxels
    a camera did observe [R^3].

    An orbit that looks down never sees the object's underside: the TSDF holds no data there and its
    surface stays open, and the hull alone would close it with the cone of space hidden under the
    object (up to a tenth of a unit deep), all far from the true surface. Unobserved space is empty,
    so the hull is cut at the lowest (and highest) height where the views did see surface: the
    underside closes flat at the observed bottom rim, as the objects of an orbit usually stand.
    Colours of the closing voxels come from the nearest observed surface voxel.
    """
    import open3d as o3d

    tsdf = np.asarray(volume.extract_volume_tsdf())  # [R^3, 2]: tsdf / trunc, weight
    color = np.asarray(volume.extract_volume_color())  # [R^3, 3] in 0..255
    centers = grid.centers()
    seen = tsdf[:, 1] > 0
    # The band just behind an observed surface, inside the (slightly grown) hull: floaters don't count.
    band = seen & (tsdf[:, 0] < 0) & (tsdf[:, 0] > -1) & hull.contains(centers, dilate=2)
    if not band.any() or seen.all():
        return tsdf, seen
    lowest, highest = centers[band, 2].min(), centers[band, 2].max()
    unseen = np.flatnonzero(~seen)
    z = centers[unseen, 2]
    distance = np.maximum(hull.signed_distance(centers[unseen]), np.maximum(lowest - z, z - highest))
    tsdf[unseen, 0] = np.clip(distance / grid.trunc, -1.0, 1.0)
    tsdf[unseen, 1] = FILL_WEIGHT
    near = unseen[np.abs(distance) < grid.trunc]
    if len(near):
        color[near] = color[np.flatnonzero(band)[nearest_index(centers[band], centers[near])]]
    volume.inject_volume_tsdf(o3d.utility.Vector2dVector(tsdf))
    volume.inject_volume_color(o3d.utility.Vector3dVector(color))
    return tsdf, seen


@dataclass
class Surface:
    """The fused, closed TSDF: its cleaned mesh, the signed distance (world units) of any point, and
    which space the views observed."""

    mesh: Any  # trimesh.Trimesh in world coordinates with vertex colours
    sdf: np.ndarray  # [R, R, R] signed distance, negative inside, clipped to +-grid.trunc
    grid: Grid
    observed: np.ndarray | None = None  # [R, R, R] bool: a view's ray reached the voxel (None: all)

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Signed distance [n] at points [n, 3] (nearest voxel); +trunc outside the grid."""
        return self._lookup(self.sdf, points, self.grid.trunc)

    def unobserved_outside(self, points: np.ndarray) -> np.ndarray:
        """Whether points [n, 3] lie outside the surface in space no view observed [n] (outside the grid
        counts as observed: the grid covers the whole visual hull)."""
        if self.observed is None:
            return np.zeros(len(points), dtype=bool)
        return ~self._lookup(self.observed, points, True) & (self.distance(points) > 0)

    def _lookup(self, volume: np.ndarray, points: np.ndarray, fill: Any) -> np.ndarray:
        """Nearest-voxel values of `volume` [R, R, R] at points [n, 3]; `fill` outside the grid."""
        ijk = np.floor((points - self.grid.origin) / self.grid.voxel).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < self.grid.resolution), axis=1)
        out = np.full(len(points), fill, dtype=volume.dtype)
        out[inside] = volume[ijk[inside, 0], ijk[inside, 1], ijk[inside, 2]]
        return out


def extract_mesh(volume: Any) -> Any:
    """The TSDF volume's zero level (marching cubes) as a trimesh.Trimesh with vertex colours."""
    import trimesh

    raw = volume.extract_triangle_mesh()
    vertices = np.asarray(raw.vertices)
    faces = np.asarray(raw.triangles)
    if len(faces) == 0:
        raise ReconError("meshing found no surface (the fitted splats render as background everywhere)")
    colors = (np.asarray(raw.vertex_colors) * 255).round().clip(0, 255).astype(np.uint8)
    return trimesh.Trimesh(vertices, faces, vertex_colors=colors, process=True)


def fuse_surface(splats: Splats, cameras: Cameras, hull: VisualHull, cfg: MeshConfig) -> Surface:
    """Steps: render the splats, fuse them in a TSDF, close unseen space from the hull, extract, remove
    the faces no outside view sees, clean."""
    cams = meshing_cameras(cameras, cfg.render_size, cfg.extra_views)
    grid = tsdf_grid(hull, cfg)
    volume, fused = integrate_splats(splats, cams, grid, cfg)
    tsdf, observed = close_unseen(volume, grid, hull)
    mesh = extract_mesh(volume)
    if cfg.hidden_views > 0:  # first: the cleaning then drops the scraps of inner sheets it leaves
        mesh = remove_hidden_faces(mesh, cfg.hidden_views, grid.voxel)
    mesh = clean_mesh(mesh, hull, cfg, fused, grid.voxel)
    shape = (grid.resolution,) * 3
    sdf = tsdf[:, 0].reshape(shape) * grid.trunc
    return Surface(mesh, sdf, grid, observed.reshape(shape))


def tsdf_mesh(splats: Splats, cameras: Cameras, hull: VisualHull, cfg: MeshConfig) -> Any:
    """A cleaned trimesh.Trimesh in world coordinates with vertex colours."""
    return fuse_surface(splats, cameras, hull, cfg).mesh


def carve_splats(splats: Splats, surface: Surface, cfg: MeshConfig) -> Splats:
    """The splats without the gaussians whose centres lie outside the closed surface (`carve_voxels` in
    observed space, any distance in unobserved space), then clipped to it (`clip_splats`)."""
    cfg.validate()
    means = splats.means.detach().cpu().numpy()
    keep = ~surface.unobserved_outside(means)
    if cfg.carve_voxels > 0:
        keep &= surface.distance(means) <= cfg.carve_voxels * surface.grid.voxel
    if not keep.all() and keep.any():
        splats = splats.subset(keep)
    return clip_splats(splats, surface, cfg.clip_sigmas)


# Fractions of an axis tried, longest first, when shortening it out of unobserved space; the last is the
# floor (a gaussian is never flattened to nothing: its colour still counts in the views that see it).
CLIP_STEPS = (1.0, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1)


def clip_splats(splats: Splats, surface: Surface, sigmas: float) -> Splats:
    """The splats with every principal axis shortened (to the longest of `CLIP_STEPS`) until both ends of
    its `sigmas`-sigma extent stay out of unobserved space outside the surface.

    Why only the axes, and only there: the training views see the hidden cone under an object only
    through its outline, so an edge gaussian there can reach into it unseen and, from below, hangs as
    a soft lip under the object. A centre can sit inside the surface while its 3-sigma tail leaves it.
    Where space was observed, a gaussian's reach was fitted against the views and stays.
    """
    if sigmas <= 0 or surface.observed is None or len(splats) == 0:
        return splats
    from recon.raster_torch import quat_to_rotmat

    means = splats.means.detach().cpu().numpy()
    rot = quat_to_rotmat(splats.quats.detach().cpu()).numpy()  # [N, 3, 3], columns are the axes
    scales = np.exp(splats.scales.detach().cpu().numpy())
    factor = np.ones_like(scales)
    for a in range(3):
        reach = rot[:, :, a] * (sigmas * scales[:, a : a + 1])  # [N, 3]
        pending = np.arange(len(means))  # gaussians whose axis still reaches into unobserved space
        for step in CLIP_STEPS:
            factor[pending, a] = step  # the last step tried is the floor for the ones never settled
            ends = step * reach[pending]
            out = surface.unobserved_outside(means[pending] + ends) | surface.unobserved_outside(
                means[pending] - ends
            )
            pending = pending[out]
            if len(pending) == 0:
                break
    if (factor == 1).all():
        return splats
    log_factor = torch.tensor(np.log(factor), dtype=splats.scales.dtype, device=splats.scales.device)
    return dataclasses.replace(splats, scales=splats.scales.detach() + log_factor)


def clean_mesh(mesh: Any, hull: VisualHull, cfg: MeshConfig, fused: FusedViews | None, voxel: float) -> Any:
    """Drop faces outside the (dilated) visual hull, then every component that is neither large
    (`keep_fraction` of the largest) nor shown by the splats (`support_share`, when `fused` is given)."""
    import trimesh

    inside = hull.contains(mesh.triangles_center, dilate=2)
    mesh.update_faces(inside)
    mesh.remove_unreferenced_vertices()
    parts = mesh.split(only_watertight=False)
    if len(parts) == 0:
        raise ReconError("meshing left no surface inside the visual hull")
    largest = max(len(p.faces) for p in parts)

    def keep(part: Any) -> bool:
        if len(part.faces) >= cfg.keep_fraction * largest:
            return True
        if fused is None or cfg.support_share <= 0 or len(part.faces) < MIN_SUPPORTED_FACES:
            return False
        on_surface = fused.supported(part.triangles_center, cfg.support_voxels * voxel)
        return bool(on_surface.mean() >= cfg.support_share)

    return trimesh.util.concatenate([p for p in parts if keep(p)])


def sphere_directions(count: int) -> np.ndarray:
    """`count` unit vectors [count, 3] spread evenly over the sphere (a Fibonacci lattice)."""
    i = np.arange(count) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / count)
    turn = np.pi * (1.0 + 5.0**0.5) * i  # the golden angle per point
    return np.stack([np.cos(turn) * np.sin(polar), np.sin(turn) * np.sin(polar), np.cos(polar)], axis=1)


def remove_hidden_faces(mesh: Any, views: int, spacing: float) -> Any:
    """`mesh` without the faces that no ray reaches from outside: parallel rays `spacing` apart from each
    of `views` directions over the sphere, first hits only (open3d's ray casting, Embree).

    A ray grid samples a face only where a ray happens to land, so a sliver of a visible surface can
    be missed by every ray; a face therefore stays when any of its vertices belongs to a face a ray hit.
    Only whole hidden regions go (inner sheets, the insides of slits), never single faces of the
    visible skin.
    """
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(np.asarray(mesh.vertices, dtype=np.float32)),
        o3d.core.Tensor(np.asarray(mesh.faces, dtype=np.uint32)),
    )
    centre = mesh.bounds.mean(axis=0)
    radius = 0.5 * float(np.linalg.norm(mesh.extents)) + spacing  # the bounding sphere, with a ray to spare
    side = int(np.ceil(2.0 * radius / spacing))
    grid = (np.arange(side) + 0.5) * spacing - radius
    gu, gv = (g.reshape(-1, 1) for g in np.meshgrid(grid, grid))
    hit = np.zeros(len(mesh.faces), dtype=bool)
    for direction in sphere_directions(views):
        helper = np.array([0.0, 0.0, 1.0]) if abs(direction[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        u = np.cross(helper, direction)
        u /= np.linalg.norm(u)
        v = np.cross(direction, u)
        origins = centre + 2.0 * radius * direction + gu * u + gv * v
        rays = np.concatenate([origins, np.broadcast_to(-direction, origins.shape)], axis=1)
        ids = scene.cast_rays(o3d.core.Tensor(rays.astype(np.float32)))["primitive_ids"].numpy()
        hit[ids[ids != scene.INVALID_ID]] = True
    seen_vertex = np.zeros(len(mesh.vertices), dtype=bool)
    seen_vertex[np.asarray(mesh.faces)[hit].ravel()] = True
    keep = seen_vertex[np.asarray(mesh.faces)].any(axis=1)
    if keep.all():
        return mesh
    mesh = mesh.copy()
    mesh.update_faces(keep)
    mesh.remove_unreferenced_vertices()
    return mesh
