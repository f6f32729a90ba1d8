"""Reconstruction on CUDA at the size generation produces: 85 views at 512x512, the default preset.

The analytic test object (`recon.synthetic`, about one unit across) is ray-cast on the Droplet3D orbit
(elevation 15, radius 2, vertical fov 45; 85 views), fitted with `recon.fit.fit` and the preset CUDA
uses by default (`quality`), and checked on views no training view saw:

* 17 unseen azimuths (halfway between training views, same elevation),
* 12 views from 20 degrees higher.

Printed and written to `--json`: fit seconds, iterations per second, gaussian count, training and
held-out PSNR, and the time to render the 85 training views once. The mesh (TSDF through open3d) is
timed only where open3d imports.

Ray-casting 114 views at 512x512 takes minutes of CPU, so `--render-only --cache FILE` writes them
once (any machine) and `--cache FILE` reuses them:

    python benchmarks/bench_recon_gpu.py --render-only --cache views.npz
    python benchmarks/bench_recon_gpu.py --cache views.npz --json recon_gpu.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon import synthetic  # noqa: E402
from recon.poses import Cameras, OrbitConfig, orbit_cameras  # noqa: E402

ELEVATION, RADIUS, FOV = 15.0, 2.0, 45.0
SUPERSAMPLE = 2  # anti-aliased edges, as a real renderer (and the generated video) has


def _render_one(args: tuple[np.ndarray, int]) -> np.ndarray:
    c2w, size = args
    return synthetic.render(c2w[None], FOV, size, supersample=SUPERSAMPLE)[0][0]


def render_views(views: int, size: int, workers: int) -> dict[str, np.ndarray]:
    """Training, unseen-azimuth and higher views with their camera-to-world matrices."""
    step = 360.0 / views
    c2w = {
        "train": synthetic.orbit_c2w(np.arange(views) * step, ELEVATION, RADIUS),
        "unseen": synthetic.orbit_c2w(np.arange(0, views, 5) * step + step / 2, ELEVATION, RADIUS),
        "higher": synthetic.orbit_c2w(np.arange(12) * 30.0 + 5.0, ELEVATION + 20.0, RADIUS),
    }
    out: dict[str, np.ndarray] = {}
    with multiprocessing.Pool(workers) as pool:
        for name, mats in c2w.items():
            out[name] = np.stack(pool.map(_render_one, [(m, size) for m in mats]))
            out[name + "_c2w"] = mats
    return out


def held_out_psnr(
    splats: Any, c2w: np.ndarray, truth: np.ndarray, like: Cameras, true_background: bool
) -> tuple[float, float]:
    """Mean and minimum PSNR of the splats rendered from `c2w` against the ray-cast truth.

    Composited over the scene's known background colour (`true_background`), or over the one colour
    the fit estimated (`splats.background`, what previews and exports use).
    """
    from recon.fit import psnr

    cams = Cameras(c2w, like.fx, like.fy, like.cx, like.cy, like.width, like.height)
    backgrounds = None
    if true_background:
        color = torch.tensor(synthetic.BACKGROUND, dtype=torch.float32, device=splats.means.device)
        backgrounds = color.expand(len(c2w), like.height, like.width, 3)
    renders, _ = splats.render(cams, backgrounds=backgrounds)
    gt = torch.tensor(truth, dtype=torch.float32, device=renders.device) / 255.0
    values = [psnr(renders[i : i + 1], gt[i : i + 1]) for i in range(len(c2w))]
    return float(np.mean(values)), float(np.min(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=85)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--preset", default="quality", help="the reconstruct preset (CUDA's default)")
    parser.add_argument("--iterations", type=int, default=None, help="override the preset's")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cache", type=Path, default=None, help="npz of rendered views (read or written)")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--workers", type=int, default=max(1, (multiprocessing.cpu_count() or 2) - 1))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    began = time.perf_counter()
    if args.cache is not None and args.cache.is_file():
        with np.load(args.cache) as data:
            views = {k: data[k] for k in data.files}
    else:
        views = render_views(args.views, args.size, args.workers)
        if args.cache is not None:
            np.savez_compressed(args.cache, **views)
    print(f"views ready in {time.perf_counter() - began:.0f} s: {len(views['train'])} training", flush=True)
    if args.render_only:
        return

    from recon.config import resolve_settings
    from recon.fit import fit

    cfg = resolve_settings(None, preset=args.preset).fit
    cfg.device = args.device
    if args.iterations is not None:
        cfg.iterations = args.iterations
    frames = views["train"]
    cams = orbit_cameras(len(frames), OrbitConfig(ELEVATION, RADIUS, FOV), frames.shape[2], frames.shape[1])

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    print(f"fitting: {args.preset} preset, {cfg.iterations} iterations at {cfg.resolution} px", flush=True)
    start = time.perf_counter()
    result = fit(frames, cams, cfg, progress=False)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t_fit = time.perf_counter() - start

    like = orbit_cameras(len(frames), OrbitConfig(ELEVATION, RADIUS, FOV), args.size, args.size)
    start = time.perf_counter()
    result.splats.render(like)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t_render = time.perf_counter() - start
    held_out = {}
    for ring in ("unseen", "higher"):
        for true_bg in (True, False):
            mean_min = held_out_psnr(result.splats, views[ring + "_c2w"], views[ring], like, true_bg)
            key = f"psnr_{ring}_mean_min_over_{'true' if true_bg else 'splats'}_background"
            held_out[key] = [round(v, 2) for v in mean_min]

    mesh: dict[str, Any] = {}
    try:
        import open3d  # noqa: F401

        from recon.mesh import tsdf_mesh

        start = time.perf_counter()
        tsdf_mesh(result.splats, result.cameras, result.hull, resolve_settings(None, preset=args.preset).mesh)
        mesh["seconds"] = round(time.perf_counter() - start, 1)
    except ImportError as exc:
        mesh["skipped"] = f"open3d not importable here ({exc})"
    except Exception as exc:  # a failed mesh is a finding; the fit figures above still stand
        mesh["error"] = f"{type(exc).__name__}: {exc}"

    record = {
        "views": len(frames),
        "size": args.size,
        "preset": args.preset,
        "fit_config": {k: v for k, v in vars(cfg).items()},
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "fit_s": round(t_fit, 1),
        "iterations_per_s": round(cfg.iterations / t_fit, 1),
        "gaussians": len(result.splats),
        "psnr_training_mean": round(float(np.mean(result.psnr)), 2),
        **held_out,  # unseen: 17 azimuths halfway between training views; higher: 12 views 20 deg up
        "splats_background": [round(float(v), 4) for v in result.splats.background],
        "true_background": [float(v) for v in synthetic.BACKGROUND],
        "render_85_views_s": round(t_render, 2),
        "peak_gpu_memory_gb": (
            round(torch.cuda.max_memory_allocated() / 1024**3, 2) if args.device.startswith("cuda") else None
        ),
        "mesh": mesh,
    }
    print(json.dumps(record, indent=1, default=str))
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=2, default=str))


if __name__ == "__main__":
    main()
