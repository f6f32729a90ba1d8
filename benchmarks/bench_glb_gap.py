"""The glb against the splats at views the fit saw and at views it never saw, and what the face budget costs.

A short orbit of `bench_generated`'s scenes (default: 21 frames of 128 px, the textured scene, clean) is
fitted with the true cameras on its even frames only, meshed and exported as `reconstruct` does (the
preset's mesh settings following the fit), and judged against the ray-cast truth: at the even frames
(training views), the odd frames (between them, never seen), and views 20 degrees above and 25 below the
orbit. The glb is rendered by `bench_export`'s z-buffer (no code shared with the fit), the splats by our
rasteriser. Each `--faces` budget exports the same TSDF mesh again and prints its seconds.

Why the odd frames: at the training views the splats reproduce their own frames better than any other
view (they were optimised there), so a gap measured only there mixes the glb's loss with the splats' overfit.

    python benchmarks/bench_glb_gap.py [--frames 21] [--size 128] [--scene textured] [--case clean]
        [--faces 50000,25000,12000] [--textures 1024,512] [--cache DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import bench_generated as bg
import numpy as np
from bench_export import psnr, render_mesh
from fit_cache import cached_fit

from recon import synthetic
from recon.asset import build_asset_mesh
from recon.config import resolve_settings
from recon.fit import fit
from recon.mesh import carve_splats, fuse_surface
from recon.poses import Cameras, focal_from_fov


def views(
    path: bg.TruePath, frames: np.ndarray, scene: list, size: int
) -> dict[str, tuple[Cameras, np.ndarray]]:
    """Cameras and truth images per judged set: training (even) frames, odd frames, above, below."""
    n = len(frames)
    cams = bg.true_cameras(path, size)
    even, odd = np.arange(0, n, 2), np.arange(1, n, 2)
    out = {"training": (cams.subset(even), frames[even]), "odd": (cams.subset(odd), frames[odd])}
    fov = float(path.fov.mean())
    focal = focal_from_fov(fov, size)
    sides = bg.held_out_sides(path)
    for name in ("above", "below"):
        c2w = synthetic.orbit_c2w(*sides[name], bg.RADIUS)
        truth, _ = synthetic.render(c2w, fov, size, scene, 2, bg.BACKGROUND)
        out[name] = (Cameras(c2w, focal, focal, size / 2, size / 2, size, size), truth)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=21)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--scene", default="textured", choices=sorted(bg.SCENES))
    parser.add_argument("--case", default="clean", help="a bench_generated degradation, 'all' or 'clean'")
    parser.add_argument("--faces", default="50000,25000,12000", help="face budgets, comma-separated")
    parser.add_argument(
        "--textures",
        default="",
        help="texture sides, comma-separated (default: the export's, capped by the frames)",
    )
    parser.add_argument("--cache", type=Path, default=None, help="folder for the fit, reused")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    degradations = set(bg.DEGRADATIONS) if args.case == "all" else ({args.case} - {"clean"})
    path = bg.true_path(args.frames, degradations, rng)
    scene = bg.SCENES[args.scene]()
    frames, masks = bg.render_path(path, args.size, scene)
    frames = bg.degrade(frames, masks, path, degradations, rng)
    even = np.arange(0, args.frames, 2)
    settings = resolve_settings(None)
    cfg = settings.fit.updated({"device": "cpu"})
    cache = None
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
        cache = args.cache / f"glb_gap_{args.scene}_{args.case}_{args.frames}_{args.size}_even.pt"
    cams = bg.true_cameras(path, args.size).subset(even)
    splats, train, hull = cached_fit(cache, lambda: fit(frames[even], cams, cfg, progress=False))
    mesh_cfg = settings.mesh.following(max(train.width, train.height))
    surface = fuse_surface(splats, train, hull, mesh_cfg)
    splats = carve_splats(splats, surface, mesh_cfg)
    judged = views(path, frames, scene, args.size)

    print(f"{args.frames} frames of {args.size} px ({args.scene}, {args.case}), fitted on the even frames")
    print(f"{'':14} " + " ".join(f"{name:>9}" for name in judged) + "  (PSNR, dB)")
    row = []
    for cameras, truth in judged.values():
        rendered, _ = splats.render(cameras)
        images = (rendered.clamp(0, 1).numpy() * 255).round()
        row.append(np.mean([psnr(a, b) for a, b in zip(images, truth, strict=True)]))
    print(f"{'splats':14} " + " ".join(f"{v:9.2f}" for v in row))
    textures = [int(t) for t in args.textures.split(",")] if args.textures else [settings.export.texture_size]
    for faces, texture in ((int(f), t) for f in args.faces.split(",") for t in textures):
        export = dataclasses.replace(settings.export, faces=faces, texture_size=texture)
        start = time.perf_counter()
        asset = build_asset_mesh(surface.mesh, splats, train, export, np.eye(4), frames[even])
        seconds = time.perf_counter() - start
        row = []
        for cameras, truth in judged.values():
            images = render_mesh(asset.mesh, cameras, args.size, bg.BACKGROUND)  # the frames' background
            row.append(np.mean([psnr(a, b) for a, b in zip(images, truth, strict=True)]))
        label = f"glb {len(asset.mesh.faces)} {asset.texture.shape[0] if asset.texture is not None else '-'}"
        print(f"{label:14} " + " ".join(f"{v:9.2f}" for v in row) + f"  export {seconds:.1f} s")


if __name__ == "__main__":
    main()
