"""Reconstruction benchmark on a synthetic orbit with known ground truth (CPU-sized by default).

Ray-casts the analytic test object (`recon.synthetic`) on a 36-view orbit at 96x96 (elevation 15,
radius 2, vertical fov 45), fits splats on all 36 views with the CPU rasteriser, meshes them, and
prints:

* PSNR at 36 unseen azimuths (halfway between the training views, same elevation),
* PSNR from 20 degrees higher (elevation 35, 12 azimuths),
* Chamfer-L1 between the mesh and the true surface (object about one unit across),
* wall-clock time of the fit + meshing.

Targets: PSNR unseen >= 28 dB, PSNR +20 deg >= 22 dB, Chamfer-L1 <= 0.02, total < 10 min on 2 cores.

    python benchmarks/bench_recon.py [--iterations 800] [--views 36] [--size 96] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.spatial import cKDTree

from recon import synthetic
from recon.fit import FitConfig, fit, psnr
from recon.mesh import MeshConfig, tsdf_mesh
from recon.poses import Cameras, OrbitConfig, orbit_cameras

ELEVATION, RADIUS, FOV = 15.0, 2.0, 45.0


def render_truth(azimuths: np.ndarray, elevation: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    c2w = synthetic.orbit_c2w(azimuths, elevation, RADIUS)
    frames, _ = synthetic.render(c2w, FOV, size, supersample=3)
    return frames, c2w


def mean_psnr(splats, c2w: np.ndarray, truth: np.ndarray, like: Cameras) -> tuple[float, float]:
    cams = Cameras(c2w, like.fx, like.fy, like.cx, like.cy, like.width, like.height)
    renders, _ = splats.render(cams)
    gt = torch.tensor(truth, dtype=torch.float32, device=renders.device) / 255.0
    values = [psnr(renders[i : i + 1], gt[i : i + 1]) for i in range(len(c2w))]
    return float(np.mean(values)), float(np.min(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=800)
    parser.add_argument("--views", type=int, default=36)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    step = 360.0 / args.views
    frames, _ = render_truth(np.arange(args.views) * step, ELEVATION, args.size)
    cams = orbit_cameras(args.views, OrbitConfig(ELEVATION, RADIUS, FOV), args.size, args.size)
    cfg = FitConfig(iterations=args.iterations, resolution=args.size, sh_degree=1, sh_degree_interval=300,
                    device=args.device, seed=args.seed)  # fmt: skip

    start = time.perf_counter()
    result = fit(frames, cams, cfg, progress=True)
    t_fit = time.perf_counter() - start
    mesh = tsdf_mesh(result.splats, result.cameras, result.hull, MeshConfig())
    t_total = time.perf_counter() - start

    unseen, unseen_c2w = render_truth(np.arange(args.views) * step + step / 2, ELEVATION, args.size)
    higher, higher_c2w = render_truth(np.arange(12) * 30.0 + 5.0, ELEVATION + 20.0, args.size)
    p_unseen, p_unseen_min = mean_psnr(result.splats, unseen_c2w, unseen, cams)
    p_higher, p_higher_min = mean_psnr(result.splats, higher_c2w, higher, cams)
    truth = synthetic.sample_surface(n=200_000)
    points = np.asarray(mesh.sample(200_000))
    d_pred, _ = cKDTree(truth).query(points)
    d_true, _ = cKDTree(points).query(truth)
    chamfer = 0.5 * (d_pred.mean() + d_true.mean())

    ok = p_unseen >= 28 and p_higher >= 22 and chamfer <= 0.02 and t_total < 600
    threads = torch.get_num_threads()
    print(f"views {args.views} at {args.size}x{args.size}, {args.iterations} iterations, "
          f"device {args.device}, {threads} threads, {len(result.splats)} gaussians")  # fmt: skip
    print(f"PSNR training views   {np.mean(result.psnr):6.2f} dB")
    print(f"PSNR unseen azimuths  {p_unseen:6.2f} dB (min {p_unseen_min:.2f})   target >= 28")
    print(f"PSNR +20 deg higher   {p_higher:6.2f} dB (min {p_higher_min:.2f})   target >= 22")
    print(f"Chamfer-L1            {chamfer:8.4f}   (pred->true {d_pred.mean():.4f}, "
          f"true->pred {d_true.mean():.4f})   target <= 0.02")  # fmt: skip
    print(f"time fit {t_fit:.0f} s, fit + mesh {t_total:.0f} s   target < 600 s")
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
