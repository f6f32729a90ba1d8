"""Export benchmark: textured vs vertex-colour glb against ground truth, normals, size, validator.

Ray-casts the analytic object (`recon.synthetic`) painted with the fine checker (`fine_pattern`,
0.04-unit cells) on a 36-view orbit at `--frame-size` (512 px: Droplet3D's frames), fits splats at
`--size` (128 px: what the CPU preset trains at), meshes them (TSDF), then exports twice at the same
face budget: with a baked UV texture and with per-vertex colour. Both bakes take their colour from the
same views (`--bake-from`: the source frames at their full size, as `reconstruct` does, or the splats'
renders alone). Each mesh.glb is read back with
trimesh and rendered at held-out views by the z-buffer rasteriser below (ours, written for this
benchmark: it shares no code with the splat rasteriser or the texture baker), unlit, with a bilinear
texture lookup or interpolated COLOR_0 (linear, encoded to sRGB for display as a viewer does), and
compared with the ray-cast truth. Also printed: mean angle between mesh normals and the true surface's
normals (raw TSDF mesh vs the smoothed export), face count, glb size and the Khronos glTF-Validator's
error count.

`--source oracle` skips the fit and meshing: the splats are an ideal fit (`synthetic.surface_splats`,
flat gaussians on the true surface with the true colours) and the mesh is the true shape
(`synthetic.triangle_mesh`), so the figures measure the export alone, on a source that has the detail.

Targets: textured >= vertex-colour + 2 dB PSNR, faces <= --faces, glb < 12 MB at 50k faces with a
2048 texture, zero validator errors.

    python benchmarks/bench_export.py [--frame-size 512] [--size 128] [--iterations 800]
        [--faces 50000 10000] [--bake-from frames|splats] [--device cpu]
    python benchmarks/bench_export.py --source oracle

A fit at the GPU preset needs CUDA, the mesh and export need open3d (too large to carry to the GPU
machine): fit there with `--preset quality --device cuda --frames-cache F --fit-cache P --fit-only`,
then run the same command without `--fit-only`/`--device` here; both caches are reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from fit_cache import bench_settings, cached_fit, cached_frames

from recon import synthetic
from recon.asset import ExportConfig, write_asset
from recon.fit import FitConfig, fit
from recon.frames import asset_transform, cameras_to_asset, front_direction
from recon.mesh import tsdf_mesh
from recon.mesh_files import linear_to_srgb
from recon.poses import Cameras, OrbitConfig, orbit_cameras
from recon.surface import smooth_surface

ROOT = Path(__file__).resolve().parent.parent
ELEVATION, RADIUS, FOV = 15.0, 2.0, 45.0
EVAL_SIZE = 256  # held-out views are compared at this size
EVAL_SUPERSAMPLE = 2  # mesh renders: rays per pixel side, box-filtered (the truth uses 3)
TRUTH_SUPERSAMPLE = 3
MAX_GLB_BYTES = 12 * 1024 * 1024
TARGET_GAIN_DB = 2.0
# The oracle source: gaussians ~0.008 apart, 0.005 wide (finer than the 0.04 checker cells), and the
# true shape with ~180k faces before decimation.
ORACLE_SPLATS, ORACLE_SCALE, ORACLE_SUBDIVISIONS = 60_000, 0.005, 6
CANDIDATE_BUDGET = 1 << 22  # pixels tested per rasterisation chunk


# --------------------------------------------------------------------------- an independent renderer
def rasterize(mesh: Any, cams: Cameras, index: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest face [size, size] (-1 = none) and perspective-correct barycentrics [size, size, 3].

    A plain z-buffer: project vertices, test each face's bounding-box pixels with edge functions, keep
    the nearest hit per pixel.
    """
    c = cams.scaled(size, size)
    vm = c.viewmats()[index]
    pc = np.asarray(mesh.vertices) @ vm[:3, :3].T + vm[:3, 3]
    z = pc[:, 2]
    xy = np.stack([c.fx * pc[:, 0] / z + c.cx, c.fy * pc[:, 1] / z + c.cy], -1)
    faces = np.asarray(mesh.faces)
    front = (z[faces] > 1e-3).all(1)
    tri = xy[faces]
    lo = np.clip(np.ceil(tri.min(1) - 0.5), 0, size - 1).astype(np.int64)
    hi = np.clip(np.floor(tri.max(1) - 0.5), 0, size - 1).astype(np.int64)
    extent = (hi - lo + 1).max(1)
    keep = np.flatnonzero(front & (hi >= lo).all(1))
    keep = keep[np.argsort(extent[keep])]
    pix, dep, fid, bar = [], [], [], []
    start = 0
    while start < len(keep):
        m = int(extent[keep[min(len(keep) - 1, start + 255)]])
        chunk = keep[start : start + max(1, CANDIDATE_BUDGET // (m * m))]
        m = int(extent[chunk].max())
        start += len(chunk)
        gy, gx = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
        px, py = lo[chunk, 0, None, None] + gx, lo[chunk, 1, None, None] + gy
        a, b, cc = (tri[chunk, k, :, None, None] for k in range(3))
        x, y = px + 0.5, py + 0.5
        area = (b[:, 0] - a[:, 0]) * (cc[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (cc[:, 0] - a[:, 0])
        with np.errstate(divide="ignore", invalid="ignore"):
            w0 = ((b[:, 0] - x) * (cc[:, 1] - y) - (b[:, 1] - y) * (cc[:, 0] - x)) / area
            w1 = ((cc[:, 0] - x) * (a[:, 1] - y) - (cc[:, 1] - y) * (a[:, 0] - x)) / area
        w2 = 1 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (area != 0)
        inside &= (px <= hi[chunk, 0, None, None]) & (py <= hi[chunk, 1, None, None])
        n = np.broadcast_to(np.arange(len(chunk))[:, None, None], inside.shape)[inside]
        zf = z[faces[chunk[n]]]  # [k, 3]
        screen = np.stack([w0[inside], w1[inside], w2[inside]], -1)
        persp = screen / zf
        depth = 1.0 / persp.sum(1)
        pix.append(py[inside] * size + px[inside])
        dep.append(depth)
        fid.append(chunk[n])
        bar.append(persp * depth[:, None])
    face = np.full(size * size, -1, dtype=np.int64)
    bary = np.zeros((size * size, 3))
    if pix:
        pix_all, dep_all = np.concatenate(pix), np.concatenate(dep)
        order = np.lexsort((dep_all, pix_all))  # by pixel, nearest first
        first = order[np.r_[True, np.diff(pix_all[order]) != 0]]
        face[pix_all[first]] = np.concatenate(fid)[first]
        bary[pix_all[first]] = np.concatenate(bar)[first]
    return face.reshape(size, size), bary.reshape(size, size, 3), xy


def shade(
    mesh: Any, face: np.ndarray, bary: np.ndarray, background: Any = synthetic.BACKGROUND
) -> np.ndarray:
    """Unlit display colour (sRGB, 0..1) [H, W, 3] of the visible surface; `background` elsewhere."""
    out = np.tile(np.asarray(background, dtype=np.float64), (*face.shape, 1))
    hit = face >= 0
    corners = np.asarray(mesh.faces)[face[hit]]
    w = bary[hit]
    if mesh.visual.kind == "texture":
        uv = np.einsum("nk,nkd->nd", w, np.asarray(mesh.visual.uv)[corners])
        image = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB")).astype(np.float64) / 255
        out[hit] = bilinear(image, uv[:, 0] * image.shape[1], (1 - uv[:, 1]) * image.shape[0])
    else:  # COLOR_0 is linear: interpolate in linear light, encode for display
        linear = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(np.float64) / 255
        out[hit] = linear_to_srgb(np.einsum("nk,nkd->nd", w, linear[corners]))
    return out


def bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear lookup at continuous texel coordinates (texel centres at +0.5), clamped to the edge."""
    h, w = image.shape[:2]
    x, y = np.clip(x - 0.5, 0, w - 1), np.clip(y - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def render_mesh(mesh: Any, cams: Cameras, size: int, background: Any = synthetic.BACKGROUND) -> np.ndarray:
    """Views [C, size, size, 3] uint8 of `mesh`, box-filtered from EVAL_SUPERSAMPLE^2 samples."""
    big = size * EVAL_SUPERSAMPLE
    views = []
    for i in range(len(cams)):
        face, bary, _ = rasterize(mesh, cams, i, big)
        img = shade(mesh, face, bary, background)
        img = img.reshape(size, EVAL_SUPERSAMPLE, size, EVAL_SUPERSAMPLE, 3).mean((1, 3))
        views.append(np.round(img * 255).astype(np.uint8))
    return np.stack(views)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return float(10 * np.log10(1.0 / mse))


# --------------------------------------------------------------------------- measurements
def normal_error_deg(mesh: Any, samples: int = 100_000) -> tuple[float, float]:
    """Mean angle (degrees) between the mesh's face normals and the true surface's normal lines, and
    the fraction of the area whose normal points inward.

    The angle ignores the sign (lumps tilt normals; an inward-wound patch is a separate defect of
    the TSDF surface, counted by the second figure).
    """
    points, face = mesh.sample(samples, return_index=True, seed=0)
    truth = synthetic.surface_normals(np.asarray(points))
    cos = np.clip((np.asarray(mesh.face_normals)[face] * truth).sum(1), -1, 1)
    return float(np.degrees(np.arccos(np.abs(cos))).mean()), float((cos < 0).mean())


def validator_errors(glb: Path) -> int | None:
    """The Khronos glTF-Validator's error count, or None when node / the npm package are missing."""
    module = ROOT / ".ci" / "node"
    if shutil.which("node") is None or not (module / "node_modules" / "gltf-validator").is_dir():
        return None
    done = subprocess.run(
        ["node", str(ROOT / "scripts" / "validate_gltf.js"), str(module), str(glb)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(json.loads(done.stdout)["issues"]["numErrors"])


def export_pair(
    out: Path,
    mesh: Any,
    splats: Any,
    train_cams: Cameras,
    frames: np.ndarray | None,
    transform: np.ndarray,
    held: Cameras,
    truth: np.ndarray,
    faces: int,
    args: argparse.Namespace,
) -> dict[str, dict[str, Any]]:
    """Export `mesh` textured and with vertex colours at one face budget; each glb read back and judged."""
    import trimesh
    from PIL import Image

    rows: dict[str, dict[str, Any]] = {}
    for name, vertex_colors in (("textured", False), ("vertex colour", True)):
        folder = out / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        export = ExportConfig(
            faces=faces, texture_size=args.texture_size, vertex_colors=vertex_colors,
            bake_from_frames=frames is not None,
        )  # fmt: skip
        t1 = time.perf_counter()
        write_asset(folder, mesh.copy(), splats, train_cams, export, transform, frames)
        seconds = time.perf_counter() - t1
        loaded = trimesh.load(folder / "mesh.glb").to_geometry()
        renders = render_mesh(loaded, held, EVAL_SIZE)
        for i in (0, 7):  # side by side: truth | mesh render, to look at
            Image.fromarray(np.concatenate([truth[i], renders[i]], 1)).save(folder / f"held_{i}.png")
        rows[name] = {
            "psnr": float(np.mean([psnr(r, t) for r, t in zip(renders, truth, strict=True)])),
            "faces": len(loaded.faces),
            "glb_bytes": (folder / "mesh.glb").stat().st_size,
            "validator_errors": validator_errors(folder / "mesh.glb"),
            "seconds": seconds,
        }
    return rows


def report(rows: dict[str, dict[str, Any]], faces: int) -> bool:
    """Print one face budget's figures; True when it meets every target."""
    print(f"--faces {faces}")
    for name, row in rows.items():
        mb = row["glb_bytes"] / 2**20
        print(
            f"  {name:14s} PSNR {row['psnr']:6.2f} dB   faces {row['faces']:6d}   glb {mb:6.2f} MB"
            f"   validator errors {row['validator_errors']}   export {row['seconds']:.0f} s"
        )
    tex, vc = rows["textured"], rows["vertex colour"]
    gain = tex["psnr"] - vc["psnr"]
    print(f"  texture gain   {gain:+.2f} dB   target >= +{TARGET_GAIN_DB:.0f}", flush=True)
    return (
        gain >= TARGET_GAIN_DB
        and all(r["faces"] <= faces for r in rows.values())
        and tex["glb_bytes"] < MAX_GLB_BYTES
        and all(r["validator_errors"] == 0 for r in rows.values())
    )


def ray_cast_frames(args: argparse.Namespace) -> np.ndarray:
    """The training frames [V, S, S, 3] uint8 (ray-cast, or read from --frames-cache)."""
    c2w = synthetic.orbit_c2w(np.arange(args.views) * 360.0 / args.views, ELEVATION, RADIUS)
    return cached_frames(
        args.frames_cache,
        lambda: synthetic.render(
            c2w, FOV, args.frame_size, supersample=TRUTH_SUPERSAMPLE, shading=synthetic.fine_pattern
        )[0],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=36)
    parser.add_argument("--frame-size", type=int, default=512, help="size the frames are ray-cast at")
    parser.add_argument("--size", type=int, default=128, help="size the fit trains at")
    parser.add_argument(
        "--bake-from", choices=("frames", "splats"), default="frames",
        help="colour source of the bake: the frames at full size (as reconstruct) or the splats' renders",
    )  # fmt: skip
    parser.add_argument("--iterations", type=int, default=800)
    parser.add_argument(
        "--faces", type=int, nargs="+", default=[50_000], help="face budgets, one export pair each"
    )
    parser.add_argument("--max-gaussians", type=int, default=FitConfig.max_gaussians)
    parser.add_argument("--texture-size", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="keep the exports and renders here")
    parser.add_argument("--source", choices=("fit", "oracle"), default="fit")
    parser.add_argument(
        "--preset", default=None,
        help="fit and mesh with this reconstruct preset (e.g. quality) instead of --size/--iterations",
    )  # fmt: skip
    parser.add_argument("--frames-cache", type=Path, default=None, help="npz of the ray-cast frames (reused)")
    parser.add_argument("--fit-cache", type=Path, default=None, help="the fit's splats and cameras (reused)")
    parser.add_argument("--fit-only", action="store_true", help="stop after the fit (no open3d there)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_export_"))

    step = 360.0 / args.views
    frames = ray_cast_frames(args)
    cams = orbit_cameras(args.views, OrbitConfig(ELEVATION, RADIUS, FOV), args.frame_size, args.frame_size)
    own_fit = FitConfig(iterations=args.iterations, resolution=args.size, max_gaussians=args.max_gaussians)
    fit_cfg, mesh_cfg = bench_settings(args.preset, own_fit, {"device": args.device})
    t0 = time.perf_counter()
    if args.source == "fit":
        run = partial(fit, frames, cams, fit_cfg, progress=not args.quiet)
        splats, train_cams, hull = cached_fit(args.fit_cache, run)
        if args.fit_only:
            seconds = time.perf_counter() - t0
            print(f"fit: {len(splats)} gaussians, {seconds:.0f} s, saved to {args.fit_cache}")
            return
        mesh = tsdf_mesh(splats, train_cams, hull, mesh_cfg)
    else:
        splats = synthetic.surface_splats(synthetic.fine_pattern, count=ORACLE_SPLATS, scale=ORACLE_SCALE)
        mesh, train_cams = synthetic.triangle_mesh(ORACLE_SUBDIVISIONS), cams
    t_fit = time.perf_counter() - t0

    # Held-out views: halfway between training azimuths, and 20 degrees higher.
    held_c2w = np.concatenate([
        synthetic.orbit_c2w(np.arange(6) * 60.0 + step / 2, ELEVATION, RADIUS),
        synthetic.orbit_c2w(np.arange(6) * 60.0 + 25.0, ELEVATION + 20.0, RADIUS),
    ])  # fmt: skip
    truth, _ = synthetic.render(
        held_c2w, FOV, EVAL_SIZE, supersample=TRUTH_SUPERSAMPLE, shading=synthetic.fine_pattern
    )
    transform = asset_transform(front_direction(cams))
    base = orbit_cameras(1, OrbitConfig(fov=FOV), EVAL_SIZE, EVAL_SIZE)
    held_world = Cameras(held_c2w, base.fx, base.fy, base.cx, base.cy, EVAL_SIZE, EVAL_SIZE)
    held = cameras_to_asset(held_world, transform)

    source = f"{fit_cfg.iterations} iterations" if args.source == "fit" else "oracle splats, true mesh"
    print(
        f"views {args.views} at {args.frame_size}px, fit at {fit_cfg.resolution}px ({args.preset or 'bench'}"
        f" settings), {source}, "
        f"bake from {args.bake_from}, device {args.device}, "
        f"{len(splats)} gaussians, mesh {len(mesh.faces)} faces before export, {t_fit:.0f} s"
    )
    print(f"held-out views: {len(held_c2w)} at {EVAL_SIZE}px (6 between training azimuths, 6 at +20 deg)")
    all_ok = True
    for faces in args.faces:
        rows = export_pair(
            out / f"faces_{faces}", mesh, splats, train_cams, frames if args.bake_from == "frames" else None,
            transform, held, truth, faces, args,
        )  # fmt: skip
        all_ok &= report(rows, faces)

    raw_normals = normal_error_deg(mesh)
    smooth_normals = normal_error_deg(smooth_surface(mesh, ExportConfig().smooth_iterations))
    print(
        f"normal error   raw TSDF {raw_normals[0]:.2f} deg, Taubin-smoothed {smooth_normals[0]:.2f} deg "
        f"(mean angle to the true normal line); inward-wound area {raw_normals[1]:.0%}"
    )
    print("PASS" if all_ok else "FAIL", f"(files in {out})")


if __name__ == "__main__":
    main()
