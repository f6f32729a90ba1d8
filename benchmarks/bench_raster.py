"""CPU rasteriser speed (issue 25: a 21-frame 128 px orbit in under 90 s is mostly the fit's steps).

The splats of a real fit (the fast preset on the generated-like benchmark's 21-frame 128 px clean orbit
of the textured scene, true cameras; about 15k gaussians, fitted once and kept in ``--cache``) rendered
by `recon.raster_torch` the way the fit and the export use it:

* a training step: forward and backward of one 128 px view (the fit runs 600 of them);
* a no-gradient render of one view at 512 px and at 160 px (the bake's and the mesh's renders).

Each figure is the best of ``--repeats`` passes over the views (this machine's timings drift by 15-20%
between runs; the best pass is the least disturbed).

    python benchmarks/bench_raster.py [--cache DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from bench_generated import SCENES, render_path, true_cameras, true_path
from fit_cache import cached_fit

from recon.config import resolve_settings
from recon.fit import fit
from recon.poses import Cameras
from recon.raster_torch import rasterize_torch

FRAMES = 21  # the published sample orbits' length
TRAIN_SIZE, BAKE_SIZE, MESH_SIZE = 128, 512, 160  # the fast preset's fit, the bake, the depth renders
RENDER_VIEWS = 8  # no-gradient renders timed per size


def fitted_splats(cache: Path | None) -> tuple[Cameras, dict[str, torch.Tensor]]:
    """The fit's training cameras and its splats as the fit renders them (log scales, logit opacities,
    SH coefficients)."""

    def run():
        path = true_path(FRAMES, set(), np.random.default_rng(0))
        frames, _ = render_path(path, TRAIN_SIZE, SCENES["textured"]())
        cfg = resolve_settings(None).fit.updated({"device": "cpu"})
        return fit(frames, true_cameras(path, TRAIN_SIZE), cfg, progress=False)

    splats, cams, _ = cached_fit(None if cache is None else cache / "bench_raster_fit.pt", run)
    return cams, {
        "means": splats.means, "quats": splats.quats, "scales": splats.scales,
        "opacities": splats.opacities, "sh": torch.cat([splats.sh0, splats.shN], 1),
    }  # fmt: skip


def view_matrices(cams: Cameras, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training cameras' view matrices [V, 4, 4] and intrinsics [3, 3] for `size` px renders."""
    scaled = cams.scaled(size, size)
    return torch.tensor(scaled.viewmats(), dtype=torch.float32), torch.tensor(scaled.K(), dtype=torch.float32)


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
    parser.add_argument("--cache", type=Path, default=None, help="Folder to keep the fit in.")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cams, splats = fitted_splats(args.cache)

    train_vm, train_K = view_matrices(cams, TRAIN_SIZE)

    def train_step(i: int) -> None:
        params = {k: v.clone().requires_grad_(True) for k, v in splats.items()}
        image, alpha, _ = render(params, train_vm[i], train_K, TRAIN_SIZE, "RGB")
        (image.square().mean() + alpha.mean()).backward()

    rows = [
        (
            f"training step, {TRAIN_SIZE} px, forward + backward",
            per_view_ms(train_step, FRAMES, args.repeats),
        )
    ]
    for size, what in ((BAKE_SIZE, "bake render"), (MESH_SIZE, "depth render")):
        vm, K = view_matrices(cams.subset(np.arange(RENDER_VIEWS)), size)

        def no_grad_render(i: int, vm=vm, K=K, size=size) -> None:
            with torch.no_grad():
                render(splats, vm[i], K, size, "RGB+MD")

        rows.append(
            (f"{what}, {size} px, no gradient", per_view_ms(no_grad_render, RENDER_VIEWS, args.repeats))
        )
    print(f"{len(splats['means'])} gaussians, {torch.get_num_threads()} threads, best of {args.repeats}")
    for name, ms in rows:
        print(f"  {name:45s} {ms:7.1f} ms/view")


if __name__ == "__main__":
    main()
