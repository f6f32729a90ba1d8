"""An analytic test object and a numpy ray caster: ground truth independent of the splat rasteriser.

Used by the tests, the benchmark and `scripts/make_demo_orbit.py`. The object is a union of a box (the
body), a sphere on top (the head, so "up" is visible) and a small green box on the body's +X face (the
"nose", facing the first orbit camera at azimuth 0, so "front" is visible). It is about one unit
across. Shading is Lambertian under a light fixed in the world, so every view agrees (no specular),
and a smooth colour pattern gives the fit something to match. Cameras here are built from the orbit
formulas directly, not from `recon.poses`, so the tests can check one against the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

BACKGROUND = np.array([0.96, 0.96, 0.96])  # a plain light background, like generated orbits


@dataclass
class Box:
    center: tuple[float, float, float]
    half: tuple[float, float, float]
    color: tuple[float, float, float]
    checker: float = 0.0  # cells per unit of a 3D checker texture on this primitive (0: none)


@dataclass
class Sphere:
    center: tuple[float, float, float]
    radius: float
    color: tuple[float, float, float]
    checker: float = 0.0


def default_scene() -> list[Box | Sphere]:
    """Body, head and nose; spans x in [-0.35, 0.47], y in [-0.25, 0.25], z in [-0.45, 0.5]."""
    return [
        Box(center=(0.0, 0.0, -0.2), half=(0.35, 0.25, 0.25), color=(0.25, 0.45, 0.85)),
        Sphere(center=(0.0, 0.0, 0.25), radius=0.25, color=(0.9, 0.25, 0.2)),
        Box(center=(0.41, 0.0, -0.2), half=(0.06, 0.1, 0.1), color=(0.2, 0.75, 0.3)),
    ]


def tall_textured_scene() -> list[Box | Sphere]:
    """A checker-textured figure whose head nearly touches the top edge of an elevation-20, fov-40 orbit.

    Spans z in [-0.55, 0.58]: the visual hull's working cube (half-size 0.76 for that orbit) reaches past
    the frames' top edge, where no view sees, which is the case that used to grow a ceiling of gaussians.
    """
    return [
        Box(center=(0.0, 0.0, -0.25), half=(0.3, 0.24, 0.3), color=(0.95, 0.75, 0.2), checker=8.0),
        Sphere(center=(0.0, 0.0, 0.3), radius=0.28, color=(0.3, 0.55, 0.9), checker=10.0),
        Box(center=(0.36, 0.0, -0.2), half=(0.06, 0.1, 0.1), color=(0.85, 0.2, 0.2)),
    ]


def panda_scene() -> list[Box | Sphere]:
    """A white figure with near-black parts, for a pure black background (the published input's look).

    The dark ears, band and nose are close to the background colour: a silhouette that trusts colour
    distance alone would carve them away.
    """
    white, dark = (0.93, 0.93, 0.9), (0.1, 0.1, 0.1)
    return [
        Box(center=(0.0, 0.0, -0.25), half=(0.3, 0.25, 0.25), color=white),
        Box(center=(0.0, 0.0, -0.25), half=(0.305, 0.255, 0.06), color=dark),  # a dark band round the body
        Sphere(center=(0.0, 0.0, 0.22), radius=0.25, color=white),
        Sphere(center=(0.0, 0.17, 0.42), radius=0.08, color=dark),
        Sphere(center=(0.0, -0.17, 0.42), radius=0.08, color=dark),
        Box(center=(0.36, 0.0, -0.25), half=(0.06, 0.1, 0.1), color=dark),
    ]


def dark_scene() -> list[Box | Sphere]:
    """A dark figure for a white background, with one white part (the cap) that matches the background."""
    return [
        Box(center=(0.0, 0.0, -0.2), half=(0.32, 0.25, 0.28), color=(0.18, 0.16, 0.2)),
        Sphere(center=(0.0, 0.0, 0.25), radius=0.24, color=(0.25, 0.12, 0.1)),
        Box(center=(0.0, 0.0, 0.5), half=(0.12, 0.12, 0.04), color=(1.0, 1.0, 1.0)),
        Box(center=(0.38, 0.0, -0.2), half=(0.06, 0.1, 0.1), color=(0.1, 0.35, 0.15)),
    ]


# The spider's legs: half their width (1.8% of the object's one-unit size), their reach out from the body's
# axis, their height above the body's centre, and where along the body (x) each pair sits.
LEG_HALF_WIDTH = 0.009
LEG_REACH, LEG_KNEE_Z, LEG_FOOT_Z = 0.45, 0.05, -0.35
LEG_X = (-0.15, -0.05, 0.05, 0.15)
LEG_COLOR = (0.35, 0.22, 0.12)


def spider_legs(half_width: float = LEG_HALF_WIDTH) -> list[tuple[Box, Box]]:
    """The spider's eight legs, each (the horizontal thigh out from the body, the vertical shin down)."""
    w = half_width
    legs = []
    for side in (-1.0, 1.0):
        for x in LEG_X:
            thigh_half = (w, LEG_REACH / 2, w)
            thigh = Box(center=(x, side * LEG_REACH / 2, LEG_KNEE_Z), half=thigh_half, color=LEG_COLOR)
            shin_mid = 0.5 * (LEG_KNEE_Z + LEG_FOOT_Z)
            shin_half = (w, w, (LEG_KNEE_Z - LEG_FOOT_Z) / 2 + w)
            shin = Box(center=(x, side * LEG_REACH, shin_mid), half=shin_half, color=LEG_COLOR)
            legs.append((thigh, shin))
    return legs


def spider_scene(leg_half_width: float = LEG_HALF_WIDTH) -> list[Box | Sphere]:
    """A body and head with eight thin legs (1.8% of the object wide): the thin-part scene.

    Each leg is an L of two boxes, a thigh out from the body along +-Y and a shin down to the ground
    plane of the feet; the head faces +X. Spans x in [-0.2, 0.35], y in [-0.46, 0.46], z in [-0.36, 0.25].
    Thin parts are where meshing loses detail first: at the CPU preset's 128 px a leg is under 2 px wide.
    """
    body = [
        Sphere(center=(0.0, 0.0, 0.05), radius=0.2, color=(0.55, 0.35, 0.2)),
        Sphere(center=(0.27, 0.0, 0.05), radius=0.09, color=(0.85, 0.6, 0.3)),
    ]
    return body + [part for leg in spider_legs(leg_half_width) for part in leg]


# Spacing of the legs' centreline samples; a sample is found when surface lies within the leg's half width
# plus LEG_FOUND_SLACK (about two voxels of the default TSDF), so a gap wider than that breaks the leg.
LEG_PATH_STEP = 0.004
LEG_FOUND_SLACK = 0.01
LEG_BODY_MARGIN = 0.02  # centreline samples this close to the body sphere belong to the body


def spider_leg_paths(half_width: float = LEG_HALF_WIDTH) -> list[np.ndarray]:
    """Each leg's centreline samples [n, 3], ordered from where it leaves the body out to the foot."""
    body = spider_scene(half_width)[0]
    paths = []
    for thigh, shin in spider_legs(half_width):
        side = np.sign(thigh.center[1])
        ys = np.arange(0.0, LEG_REACH, LEG_PATH_STEP)
        out = np.stack([np.full_like(ys, thigh.center[0]), side * ys, np.full_like(ys, thigh.center[2])], 1)
        zs = np.arange(LEG_KNEE_Z, LEG_FOOT_Z, -LEG_PATH_STEP)
        down = np.stack([np.full_like(zs, shin.center[0]), np.full_like(zs, shin.center[1]), zs], 1)
        path = np.concatenate([out, down])
        clear = np.linalg.norm(path - np.asarray(body.center), axis=1) > body.radius + LEG_BODY_MARGIN
        paths.append(path[clear])
    return paths


def spider_legs_found(
    points: np.ndarray, half_width: float = LEG_HALF_WIDTH, slack: float = LEG_FOUND_SLACK
) -> np.ndarray:
    """Per leg [8, 2]: the share of its centreline along which `points` [n, 3] (a mesh's surface samples)
    lie within the leg's half width + `slack`, and the share found unbroken from the body outwards."""
    from scipy.spatial import cKDTree

    paths = spider_leg_paths(half_width)
    if len(points) == 0:
        return np.zeros((len(paths), 2))
    tree = cKDTree(points)
    shares = []
    for path in paths:
        found = np.isfinite(tree.query(path, distance_upper_bound=half_width + slack)[0])
        run = len(found) if found.all() else int(np.argmin(found))
        shares.append((found.mean(), run / len(found)))
    return np.asarray(shares)


def _hit_sphere(o: np.ndarray, d: np.ndarray, s: Sphere) -> tuple[np.ndarray, np.ndarray]:
    oc = o - np.asarray(s.center)
    b = np.einsum("ij,ij->i", oc, d)
    c = np.einsum("ij,ij->i", oc, oc) - s.radius**2
    disc = b * b - c
    t = np.where(disc >= 0, -b - np.sqrt(np.maximum(disc, 0)), np.inf)
    t = np.where(t > 1e-6, t, np.inf)
    normal = (o + t[:, None] * d - np.asarray(s.center)) / s.radius
    return t, normal


def _hit_box(o: np.ndarray, d: np.ndarray, b: Box) -> tuple[np.ndarray, np.ndarray]:
    lo = np.asarray(b.center) - np.asarray(b.half)
    hi = np.asarray(b.center) + np.asarray(b.half)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1, t2 = (lo - o) * inv, (hi - o) * inv
    tnear, tfar = np.minimum(t1, t2), np.maximum(t1, t2)
    tnear = np.nan_to_num(tnear, nan=-np.inf)
    tfar = np.nan_to_num(tfar, nan=np.inf)
    t0, t1_ = tnear.max(axis=1), tfar.min(axis=1)
    t = np.where((t1_ >= t0) & (t0 > 1e-6), t0, np.inf)
    axis = tnear.argmax(axis=1)
    normal = np.zeros_like(o)
    normal[np.arange(len(o)), axis] = -np.sign(d[np.arange(len(o)), axis])
    return t, normal


def pattern(points: np.ndarray) -> np.ndarray:
    """A smooth, low-frequency brightness pattern in [0.75, 1.05], [n]."""
    x, y, z = points.T
    return 0.9 + 0.15 * np.sin(7.0 * x + 2.0) * np.sin(7.0 * y + 1.0) * np.cos(6.0 * z)


Pattern = Callable[[np.ndarray], np.ndarray]

# Period of `fine_pattern`'s checker, world units: cells of 0.04 are 2-3 faces across on a 50k-face
# mesh of this object, so per-vertex colour cannot hold them and a texture can.
FINE_PERIOD = 0.08
CHECKER_DARK, CHECKER_LIGHT = 0.55, 1.05


def checker(period: float) -> Pattern:
    """A 3D checker brightness pattern in {0.55, 1.05} with cells of `period` / 2 (axis-aligned)."""

    def shading(points: np.ndarray) -> np.ndarray:
        cells = np.floor(points / (period / 2)).astype(np.int64).sum(axis=1)
        return np.where(cells % 2 == 0, CHECKER_LIGHT, CHECKER_DARK)

    return shading


def fine_pattern(points: np.ndarray) -> np.ndarray:
    """The export benchmark's high-frequency pattern: `checker(FINE_PERIOD)`; the tests keep `pattern`."""
    return checker(FINE_PERIOD)(points)


def ray_cast(
    origins: np.ndarray,
    dirs: np.ndarray,
    scene: list[Box | Sphere],
    shading: Pattern = pattern,
    background: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Colour [n, 3] (`background` where missed) and hit distance [n] (inf where missed).

    `shading` is the brightness pattern painted on every surface (`pattern` or `fine_pattern`); a
    primitive's own `checker` multiplies it.
    """
    best_t = np.full(len(origins), np.inf)
    color = np.tile(BACKGROUND if background is None else np.asarray(background), (len(origins), 1))
    light = np.array([0.4, -0.3, 0.85])
    light /= np.linalg.norm(light)
    for prim in scene:
        t, normal = (
            _hit_sphere(origins, dirs, prim) if isinstance(prim, Sphere) else _hit_box(origins, dirs, prim)
        )
        closer = t < best_t
        if not closer.any():
            continue
        best_t = np.where(closer, t, best_t)
        points = origins[closer] + t[closer, None] * dirs[closer]
        shade = (0.45 + 0.55 * np.clip(normal[closer] @ light, 0.0, 1.0)) * shading(points)
        if prim.checker > 0:
            shade = shade * checker(2.0 / prim.checker)(points)
        color[closer] = np.clip(np.asarray(prim.color) * shade[:, None], 0.0, 1.0)
    return color, best_t


def orbit_c2w(azimuths_deg: np.ndarray, elevation_deg: float, radius: float) -> np.ndarray:
    """Camera-to-world (OpenGL axes) of cameras on a circle looking at the origin, +Z up, [n, 4, 4]."""
    out = []
    for az in np.radians(np.asarray(azimuths_deg, dtype=np.float64)):
        el = np.radians(elevation_deg)
        eye = radius * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        back = eye / np.linalg.norm(eye)  # camera +z points away from the target
        right = np.array([-np.sin(az), np.cos(az), 0.0])  # horizontal, perpendicular to the view
        up = np.cross(back, right)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, eye
        out.append(m)
    return np.stack(out)


def render(
    c2w: np.ndarray,
    fov_deg: float,
    size: int,
    scene: list[Box | Sphere] | None = None,
    supersample: int = 3,
    background: np.ndarray | tuple | None = None,
    shading: Pattern = pattern,
) -> tuple[np.ndarray, np.ndarray]:
    """Render views [n, size, size, 3] uint8 and z-depth [n, size, size] (inf = background).

    `fov_deg` is the full vertical field of view. Colour is box-filtered over supersample^2 rays per
    pixel (anti-aliased edges, like a real renderer); depth is taken at the pixel centre. `background` is
    one colour [3] (default `BACKGROUND`) or a [2, 3] (top, bottom) pair of colours for a vertical
    screen-space gradient, as some generators paint.
    """
    scene = default_scene() if scene is None else scene
    bg = np.asarray(BACKGROUND if background is None else background, dtype=np.float64)
    if bg.shape == (2, 3):
        rows = ((np.arange(size) + 0.5) / size)[:, None, None]
        bg_image = np.broadcast_to(bg[0] + rows * (bg[1] - bg[0]), (size, size, 3)).reshape(-1, 3)
    else:
        bg_image = np.broadcast_to(bg.reshape(3), (size * size, 3))
    focal = 0.5 * size / np.tan(np.radians(fov_deg) / 2)
    images, depths = [], []
    for m in np.asarray(c2w).reshape(-1, 4, 4):
        acc = np.zeros((size * size, 3))
        for sy in range(supersample):
            for sx in range(supersample):
                off = ((sx + 0.5) / supersample, (sy + 0.5) / supersample)
                acc += _cast_view(m, focal, size, off, scene, bg_image, shading)[0]
        images.append(
            np.round(np.clip(acc / supersample**2, 0, 1) * 255).reshape(size, size, 3).astype(np.uint8)
        )
        _, t, zdir = _cast_view(m, focal, size, (0.5, 0.5), scene, bg_image, shading)
        depths.append((t * zdir).reshape(size, size))
    return np.stack(images), np.stack(depths)


def _cast_view(
    m: np.ndarray,
    focal: float,
    size: int,
    off: tuple[float, float],
    scene: list,
    bg_image: np.ndarray,
    shading: Pattern = pattern,
) -> tuple:
    j, i = np.meshgrid(np.arange(size) + off[0], np.arange(size) + off[1])
    cam = np.stack([(j - size / 2) / focal, -(i - size / 2) / focal, -np.ones_like(j)], -1).reshape(-1, 3)
    zdir = 1.0 / np.linalg.norm(cam, axis=1)  # z-depth = distance * cos(angle to the optical axis)
    dirs = cam @ m[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origins = np.broadcast_to(m[:3, 3], dirs.shape)
    color, t = ray_cast(np.ascontiguousarray(origins), dirs, scene, shading)
    color = np.where(np.isinf(t)[:, None], bg_image, color)
    return color, t, zdir


def inside(points: np.ndarray, scene: list[Box | Sphere], eps: float = 1e-9) -> np.ndarray:
    """Whether each point [n, 3] is strictly inside some primitive, [n]."""
    result = np.zeros(len(points), dtype=bool)
    for prim in scene:
        if isinstance(prim, Sphere):
            result |= np.linalg.norm(points - np.asarray(prim.center), axis=1) < prim.radius - eps
        else:
            result |= np.all(np.abs(points - np.asarray(prim.center)) < np.asarray(prim.half) - eps, axis=1)
    return result


def sample_surface(scene: list[Box | Sphere] | None = None, n: int = 100_000, seed: int = 0) -> np.ndarray:
    """Points [m, 3] spread evenly over the union's outer surface (parts inside other primitives dropped)."""
    scene = default_scene() if scene is None else scene
    rng = np.random.default_rng(seed)
    areas = []
    for prim in scene:
        if isinstance(prim, Sphere):
            areas.append(4 * np.pi * prim.radius**2)
        else:
            hx, hy, hz = prim.half
            areas.append(8 * (hx * hy + hy * hz + hx * hz))
    counts = np.maximum(1, (n * np.asarray(areas) / sum(areas)).astype(int))
    points = []
    for prim, k in zip(scene, counts, strict=True):
        if isinstance(prim, Sphere):
            v = rng.normal(size=(k, 3))
            p = np.asarray(prim.center) + prim.radius * v / np.linalg.norm(v, axis=1, keepdims=True)
        else:
            half = np.asarray(prim.half)
            face_area = np.array([half[1] * half[2], half[0] * half[2], half[0] * half[1]])
            axis = rng.choice(3, size=k, p=face_area / face_area.sum())
            p = rng.uniform(-1, 1, size=(k, 3)) * half
            p[np.arange(k), axis] = half[axis] * rng.choice([-1.0, 1.0], size=k)
            p += np.asarray(prim.center)
        points.append(p)
    pts = np.concatenate(points)
    return pts[~inside(pts, scene, eps=1e-6)]


def surface_normals(points: np.ndarray, scene: list[Box | Sphere] | None = None) -> np.ndarray:
    """Outward unit normals [n, 3] of the true surface at points on (or near) it.

    Each point takes the normal of the primitive whose surface is nearest: radial for a sphere, the
    nearest face's axis for a box. Used to measure how faithful exported mesh normals are.
    """
    scene = default_scene() if scene is None else scene
    best = np.full(len(points), np.inf)
    normals = np.zeros_like(points, dtype=np.float64)
    for prim in scene:
        rel = points - np.asarray(prim.center)
        if isinstance(prim, Sphere):
            r = np.linalg.norm(rel, axis=1)
            dist = np.abs(r - prim.radius)
            n = rel / np.maximum(r, 1e-12)[:, None]
        else:
            gap = np.abs(np.abs(rel) - np.asarray(prim.half))  # distance to each face pair's plane
            outside = np.clip(np.abs(rel) - np.asarray(prim.half), 0, None)
            axis = gap.argmin(axis=1)
            rows = np.arange(len(points))
            dist = np.sqrt((outside**2).sum(1) - outside[rows, axis] ** 2 + gap[rows, axis] ** 2)
            n = np.zeros_like(rel)
            n[rows, axis] = np.sign(rel[rows, axis])
        closer = dist < best
        best = np.where(closer, dist, best)
        normals[closer] = n[closer]
    return normals


def triangle_mesh(subdivisions: int = 4) -> Any:
    """The object as a trimesh (body box, head sphere, nose box; parts overlap, inner faces kept).

    Grey vertex colours; used as an exact mesh by the export tests and benchmark.
    """
    import trimesh

    parts = []
    for prim in default_scene():
        if isinstance(prim, Sphere):
            part = trimesh.creation.icosphere(subdivisions=subdivisions, radius=prim.radius)
        else:
            part = trimesh.creation.box(extents=2 * np.asarray(prim.half))
            for _ in range(subdivisions):
                part = part.subdivide()
        part.apply_translation(prim.center)
        parts.append(part)
    mesh = trimesh.util.concatenate(parts)
    mesh.visual.vertex_colors = np.full((len(mesh.vertices), 4), 200, np.uint8)
    return mesh


def surface_splats(
    shading: Pattern = pattern, seed: int = 0, count: int = 10_000, scale: float = 0.012,
    scene: list[Box | Sphere] | None = None,
) -> Any:  # fmt: skip
    """`recon.fit.Splats` of an ideal fit: flat gaussians (`scale` wide, a sixth as thick) on the true
    surface, coloured like the ray caster (SH degree 1, no view dependence).

    Lets the export be tested and benchmarked on a source with known detail, independent of the fit.
    """
    import torch

    from recon.fit import Splats
    from recon.frames import rotation_to_quaternion
    from recon.raster_torch import SH_C0

    scene = default_scene() if scene is None else scene
    points = sample_surface(scene, n=count, seed=seed)
    normals = surface_normals(points, scene)
    origins = points + 1e-3 * normals  # cast back onto the surface to get the ray caster's own colour
    with np.errstate(invalid="ignore"):  # axis-aligned rays: the ray caster multiplies inf by 0
        colors, _ = ray_cast(origins, -normals, scene, shading)
    # Orientation: a rotation whose third axis is the normal (the thin axis).
    helper = np.where(np.abs(normals[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
    u = np.cross(normals, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    rot = np.stack([u, np.cross(normals, u), normals], -1)
    quats = torch.tensor(np.stack([rotation_to_quaternion(r) for r in rot]), dtype=torch.float32)
    n = len(points)
    return Splats(
        means=torch.tensor(points, dtype=torch.float32),
        scales=torch.log(torch.tensor([[scale, scale, scale / 6]]).repeat(n, 1)),
        quats=quats, opacities=torch.full((n,), 4.0),
        sh0=torch.tensor((colors - 0.5) / SH_C0, dtype=torch.float32)[:, None],
        shN=torch.zeros(n, 3, 3), sh_degree=1,
        background=torch.tensor(BACKGROUND, dtype=torch.float32),
    )  # fmt: skip
