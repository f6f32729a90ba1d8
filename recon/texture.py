"""UV texture baking: an xatlas atlas for the mesh and a base-colour image projected from the splats.

Per-vertex colour can only hold as much detail as the mesh has vertices, so a 50k-face mesh blurs eyes,
stripes and print. A texture decouples colour detail from geometry: xatlas cuts the surface into
charts and packs them into the unit square; every texel inside a chart is a point on the surface.
Its colour comes from the fitted splats, not from the TSDF's vertex colours: the splats are rendered
(colour, alpha, median depth) from many views around the object, and each texel takes a blend of the
views that see it unoccluded, weighted by how frontally they see it (``cos^sharpness``: a high power
approaches "the most frontal view" while still blending smoothly where two views are equally good,
so no seam appears where the best view changes). Texels no view sees and the gutter between charts
take the colour of the nearest baked texel, so bilinear filtering and mip-mapping across a chart's
edge never fetch an unrelated colour.

UV convention: ``uv`` here is glTF's (u right, v down: texel row ``v * size``). trimesh (and OBJ)
use v up, so `gltf.py` hands trimesh ``(u, 1 - v)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from recon.errors import ReconError
from recon.fit import Splats
from recon.poses import Cameras, look_at_c2w, orbit_positions
from recon.surface import nearest_index

# Candidate texels tested per rasterisation chunk: bounds memory (about 40 bytes per candidate).
RASTER_BUDGET = 1 << 22
# Extra bake rings: (elevation in degrees, azimuth offset) above and below the orbit, so tops and
# undersides the training orbit barely sees still get a frontal view.
BAKE_RINGS = ((50.0, 7.5), (-35.0, 7.5))
# Views seeing a surface this obliquely (cosine below it, about 84 degrees) give no colour: at grazing
# angles one pixel smears over a long strip of surface and the depth test is unreliable.
MIN_FACING = 0.1
# Charts lose the outer texel to bilinear filtering; keep this many texels of gutter between them.
ATLAS_PADDING = 2


@dataclass
class Atlas:
    """A mesh cut along UV seams: vertices duplicated where charts meet."""

    vertices: np.ndarray  # [V, 3] float
    faces: np.ndarray  # [F, 3] int, same order as the input faces
    uv: np.ndarray  # [V, 2] in [0, 1], glTF convention (v down)
    source: np.ndarray  # [V] index of each vertex in the input mesh


def uv_atlas(vertices: np.ndarray, faces: np.ndarray, size: int) -> Atlas:
    """Charts and packing by xatlas for a `size` x `size` texture."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(
        np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32)
    )
    pack = xatlas.PackOptions()
    pack.resolution = size
    pack.padding = ATLAS_PADDING
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:
        raise ReconError(f"xatlas packed the mesh into {atlas.atlas_count} textures; expected one")
    source, new_faces, uv = atlas[0]
    return Atlas(np.asarray(vertices)[source], new_faces.astype(np.int64), uv.astype(np.float64), source)


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which face covers each texel centre, [size, size] (-1 = none), and its barycentrics [size, size, 3].

    Faces are processed in chunks of similar bounding-box size, each chunk testing every texel of its
    boxes at once (numpy), so a 50k-face atlas at 2048^2 takes seconds without a GPU.
    """
    tri = uv[faces] * size  # [F, 3, 2] texel coordinates; texel centres sit at +0.5
    lo = np.clip(np.ceil(tri.min(1) - 0.5), 0, size - 1).astype(np.int64)
    hi = np.clip(np.floor(tri.max(1) - 0.5), 0, size - 1).astype(np.int64)
    extent = np.maximum(hi - lo + 1, 1).max(1)
    order = np.argsort(extent, kind="stable")
    face_index = np.full((size, size), -1, dtype=np.int64)
    bary = np.zeros((size, size, 3), dtype=np.float32)
    start = 0
    while start < len(order):
        end = min(len(order), start + max(1, RASTER_BUDGET // int(extent[order[start]]) ** 2))
        m = int(extent[order[end - 1]])
        end = min(end, start + max(1, RASTER_BUDGET // (m * m)))
        chunk = order[start:end]
        m = int(extent[chunk].max())
        start = end
        gy, gx = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
        px = lo[chunk, 0, None, None] + gx  # [n, m, m]
        py = lo[chunk, 1, None, None] + gy
        a, b, c = (tri[chunk, k, :, None, None] for k in range(3))  # [n, 2, 1, 1]
        x, y = px + 0.5, py + 0.5
        det = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            l1 = ((b[:, 1] - c[:, 1]) * (x - c[:, 0]) + (c[:, 0] - b[:, 0]) * (y - c[:, 1])) / det
            l2 = ((c[:, 1] - a[:, 1]) * (x - c[:, 0]) + (a[:, 0] - c[:, 0]) * (y - c[:, 1])) / det
        l3 = 1.0 - l1 - l2
        eps = -1e-6
        inside = (l1 >= eps) & (l2 >= eps) & (l3 >= eps) & (px <= hi[chunk, 0, None, None])
        inside &= (py <= hi[chunk, 1, None, None]) & (np.abs(det) > 0)
        n_idx = np.broadcast_to(np.arange(len(chunk))[:, None, None], inside.shape)[inside]
        rows, cols = py[inside], px[inside]
        face_index[rows, cols] = chunk[n_idx]
        bary[rows, cols] = np.stack([l1[inside], l2[inside], l3[inside]], -1)
    return face_index, bary


def bake_cameras(
    cameras: Cameras, size: int, ring_views: int, orbit_views: int
) -> tuple[Cameras, np.ndarray]:
    """At most `orbit_views` of the training cameras (evenly spread) plus rings above and below
    (`BAKE_RINGS`), rendered at `size` px wide; and which training views were taken (they come first).

    An 85-frame orbit's neighbouring views see the same texels almost equally frontally; rendering
    all of them would cost more than it adds.
    """
    taken = np.arange(len(cameras))
    if len(cameras) > orbit_views:
        taken = np.unique(np.linspace(0, len(cameras) - 1, orbit_views).round().astype(int))
        cameras = cameras.subset(taken)
    c = cameras.scaled(size, max(1, round(size * cameras.height / cameras.width)))
    radius = float(np.linalg.norm(c.centers(), axis=1).mean())
    extra = [c.c2w]
    if ring_views > 0:
        az = np.arange(ring_views) * 360.0 / ring_views
        extra += [look_at_c2w(orbit_positions(az + offset, el, radius)) for el, offset in BAKE_RINGS]
    return Cameras(np.concatenate(extra), c.fx, c.fy, c.cx, c.cy, c.width, c.height), taken


def project_colors(
    points: np.ndarray, normals: np.ndarray, splats: Splats, cameras: Cameras, alpha_min: float,
    depth_tolerance: float, sharpness: float, images: np.ndarray | None = None, batch: int = 4,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Colour [n, 3] in 0..1 (sRGB, as the frames) of surface points, and whether any view saw them.

    A view counts for a point when the point is in the image, faces the camera, lies on the rendered
    surface (within `depth_tolerance` of the splats' median depth: not occluded) and the splats cover
    that pixel (alpha >= `alpha_min`). The background blended into edge pixels is removed by
    un-premultiplying with the alpha.

    `images` [V, H, W, 3] uint8, when given, are the source frames of the first V `cameras` (any size of
    the same aspect): their colour is sampled instead of the render's. Visibility still comes from the
    splats (their depth and alpha), but the colour keeps the frames' full resolution, which a fit at a
    fraction of it (the CPU preset trains at 128 px on 512 px frames) has blurred.
    """
    device = splats.means.device
    p = torch.tensor(points, dtype=torch.float32, device=device)
    nrm = F.normalize(torch.tensor(normals, dtype=torch.float32, device=device), dim=-1)
    acc = torch.zeros(len(p), 3, device=device)
    wsum = torch.zeros(len(p), device=device)
    viewmats = torch.tensor(cameras.viewmats(), dtype=torch.float32, device=device)
    centers = torch.tensor(cameras.centers(), dtype=torch.float32, device=device)
    bg = splats.background.to(device)
    for s in range(0, len(cameras), batch):
        index = np.arange(s, min(s + batch, len(cameras)))
        renders, alphas = splats.render(
            cameras.subset(index), render_mode="RGB+MD", batch=batch, backend="torch"
        )
        for j, cam in enumerate(index):
            vm = viewmats[cam]
            pc = p @ vm[:3, :3].T + vm[:3, 3]
            z = pc[:, 2].clamp_min(1e-6)
            u = cameras.fx * pc[:, 0] / z + cameras.cx
            v = cameras.fy * pc[:, 1] / z + cameras.cy
            grid = torch.stack([u / cameras.width * 2 - 1, v / cameras.height * 2 - 1], -1)[None, None]
            image = torch.cat([renders[j, ..., :3], alphas[j]], -1).permute(2, 0, 1)[None]
            rgba = F.grid_sample(image, grid, mode="bilinear", align_corners=False)[0, :, 0].T  # [n, 4]
            if images is not None and cam < len(images):
                frame = torch.as_tensor(images[cam], device=device).permute(2, 0, 1)[None].float() / 255.0
                rgba[:, :3] = F.grid_sample(frame, grid, mode="bilinear", align_corners=False)[0, :, 0].T
            depth = F.grid_sample(
                renders[j, ..., 3][None, None], grid, mode="nearest", align_corners=False
            )[0, 0, 0]  # fmt: skip
            # |cos|: TSDF surfaces can carry inward-wound patches, so the normal's sign is not trusted;
            # the depth test alone decides which side of a thin part a view sees.
            facing = (nrm * F.normalize(centers[cam] - p, dim=-1)).sum(-1).abs()
            ok = (pc[:, 2] > 0) & (grid[0, 0].abs() <= 1).all(-1) & (facing >= MIN_FACING)
            ok &= (rgba[:, 3] >= alpha_min) & ((depth - pc[:, 2]).abs() <= depth_tolerance)
            alpha = rgba[:, 3:].clamp_min(1e-6)
            color = ((rgba[:, :3] - (1 - alpha) * bg) / alpha).clamp(0, 1)
            weight = facing.clamp_min(0) ** sharpness * ok
            acc += weight[:, None] * color
            wsum += weight
    valid = wsum > 0
    out = acc / torch.where(valid, wsum, torch.ones_like(wsum))[:, None]
    return out.cpu().numpy(), valid.cpu().numpy()


def fill_from_nearest(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """`image` [H, W, C] with every texel where `known` is False set to its nearest known texel's value."""
    from scipy import ndimage

    if not known.any():
        raise ReconError("texture baking found no texel on the mesh")
    _, (rows, cols) = ndimage.distance_transform_edt(~known, return_indices=True)
    return image[rows, cols]


def texel_points(
    atlas: Atlas, face_normals: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels covered by a chart [size, size] bool, their surface points [T, 3] and face normals [T, 3]."""
    face_index, bary = rasterize_uv(atlas.uv, atlas.faces, size)
    covered = face_index >= 0
    fids = face_index[covered]
    corners = atlas.vertices[atlas.faces[fids]]  # [T, 3, 3]
    return covered, np.einsum("tk,tkd->td", bary[covered], corners), face_normals[fids]


def texture_image(
    covered: np.ndarray, points: np.ndarray, colors: np.ndarray, seen: np.ndarray
) -> np.ndarray:
    """The texture [S, S, 3] uint8 from the covered texels' colours.

    A covered texel no view saw takes the colour of the nearest seen surface point in 3D (its
    neighbour in the atlas may belong to another chart, far away on the object); the gutter between
    charts then takes the nearest covered texel's colour in the atlas.
    """
    image = np.zeros((*covered.shape, 3), dtype=np.float32)
    image[covered] = to_float(fill_unseen_vertices(points, colors, seen))
    return to_uint8(fill_from_nearest(image, covered))


def fill_unseen_vertices(vertices: np.ndarray, colors: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Colours [V, 3] uint8 of surface points; points no view saw take their nearest seen point's colour."""
    if not seen.any():
        raise ReconError("colour baking found no vertex any view sees")
    colors = colors.copy()
    if not seen.all():
        colors[~seen] = colors[seen][nearest_index(vertices[seen], vertices[~seen])]
    return to_uint8(colors)


def to_float(colors: np.ndarray) -> np.ndarray:
    """0..255 bytes to 0..1 floats."""
    return np.asarray(colors, dtype=np.float32) / 255.0


def to_uint8(colors: np.ndarray) -> np.ndarray:
    """0..1 floats to 0..255 bytes (rounded, clipped)."""
    return np.round(np.asarray(colors) * 255).clip(0, 255).astype(np.uint8)
