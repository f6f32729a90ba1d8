"""CPU rasteriser speed (issue 25: a 21-frame 128 px orbit in under 90 s is mostly the fit's steps).

Splats like a fit's (about 15k gaussians on the tall textured scene's surface at the fast preset's
sizes) rendered by `recon.raster_torch` on one thread pool, as the fit and the bake use it:

* a training step: forward and backward of one 128 px view (the fit runs 600 of them);
* a no-gradient render of one view at 512 px and at 160 px (the bake's and the mesh's renders).

Each figure is the best of ``--repeats`` passes over the views (this machine's timings drift by 15-20%
between runs; the best pass is the least disturbed).

    python benchmarks/bench_raster.py [--gaussians 15000] [--views 21] [--repeats 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from recon import synthetic
from recon.poses import focal_from_fov
from recon.raster_torch import rasterize_torch

ELEVATION, RADIUS, FOV = 20.0, 2.0, 40.0  # the generated-like benchmark's orbit
TRAIN_SIZE, BAKE_SIZE, MESH_SIZE = 128, 512, 160  # the fast preset's fit, the bake, the depth renders


def fit_like_splats(n: int, seed: int) -> dict[str, torch.Tensor]:
    """`n` gaussians on the scene's surface (ray-cast hit points of a dense orbit), a fit's sizes: about
    a pixel at 128 px, mostly opaque, SH degree 1."""
    rng = np.random.default_rng(seed)
    scene = synthetic.tall_textured_scene()
    c2w = synthetic.orbit_c2w(np.linspace(0, 360, 24, endpoint=False), ELEVATION, RADIUS)
    _, depth = synthetic.render(c2w, FOV, 64, scene, 1, (1.0, 1.0, 1.0))
    points = []
    for view, d in zip(c2w, depth, strict=True):  # back-project every hit pixel
        v, u = np.nonzero(np.isfinite(d))
        f = focal_from_fov(FOV, 64)
        rays = np.stack([(u + 0.5 - 32) / f, (v + 0.5 - 32) / f, np.ones_like(u, dtype=float)], -1)
        points.append((rays * d[v, u][:, None]) @ view[:3, :3].T + view[:3, 3])
    points = np.concatenate(points)
    points = points[rng.choice(len(points), n, replace=len(points) < n)]
    points += rng.normal(0, 0.003, points.shape)
    g = torch.Generator().manual_seed(seed)
    return {
        "means": torch.tensor(points, dtype=torch.float32),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.randn(n, 3, generator=g) * 0.3 + np.log(0.012),
        "opacities": torch.randn(n, generator=g) + 1.5,
        "sh": torch.randn(n, 4, 3, generator=g) * 0.2,
    }


def cameras(views: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    c2w = synthetic.orbit_c2w(np.linspace(0, 360, views, endpoint=False), ELEVATION, RADIUS)
    f = focal_from_fov(FOV, size)
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=torch.float32)
    return torch.linalg.inv(torch.tensor(c2w, dtype=torch.float32)), K


def render(params: dict[str, torch.Tensor], viewmat: torch.Tensor, K: torch.Tensor, size: int, mode: str):
    return rasterize_torch(
        params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
        params["sh"], viewmat[None], K[None], size, size, sh_degree=1, render_mode=mode,
    )  # fmt: skip


def per_view_ms(step, views: int, repeats: int) -> float:
    step(0)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(views):
            step(i)
        best = min(best, (time.perf_counter() - start) / views)
    return 1000.0 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaussians", type=int, default=15000)
    parser.add_argument("--views", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    splats = fit_like_splats(args.gaussians, args.seed)

    train_vm, train_K = cameras(args.views, TRAIN_SIZE)

    def train_step(i: int) -> None:
        params = {k: v.clone().requires_grad_(True) for k, v in splats.items()}
        image, alpha, _ = render(params, train_vm[i], train_K, TRAIN_SIZE, "RGB")
        (image.square().mean() + alpha.mean()).backward()

    rows = [
        (
            f"training step, {TRAIN_SIZE} px, forward + backward",
            per_view_ms(train_step, args.views, args.repeats),
        )
    ]
    for size, what in ((BAKE_SIZE, "bake render"), (MESH_SIZE, "depth render")):
        vm, K = cameras(min(args.views, 8), size)

        def no_grad_render(i: int, vm=vm, K=K, size=size) -> None:
            with torch.no_grad():
                render(splats, vm[i], K, size, "RGB+MD")

        rows.append(
            (f"{what}, {size} px, no gradient", per_view_ms(no_grad_render, min(args.views, 8), args.repeats))
        )
    print(f"{args.gaussians} gaussians, {torch.get_num_threads()} threads, best of {args.repeats}")
    for name, ms in rows:
        print(f"  {name:45s} {ms:7.1f} ms/view")


if __name__ == "__main__":
    main()
