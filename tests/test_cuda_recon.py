"""gsplat's CUDA rasteriser and our PyTorch port agree on gradients, not only on images.

The fit trains with gsplat on CUDA and with the port on the CPU; test_recon_raster.py checks that
their images agree. Here the backward passes: one loss over colour, expected depth and alpha,
through both, must give the same gradients for every gaussian parameter, for the 2D means that
gsplat's densification reads, and for the camera poses (viewmats), which pose refinement would
train. Errors are ||a - b|| / ||b|| in float32; a wrong gradient lands near 1.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from test_recon_raster import cameras, random_gaussians

from recon.raster_torch import rasterize_torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat's kernels"),
]

SIZE = 64


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def gradients(rasterizer, inputs: list[torch.Tensor], weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """d(loss)/d(each input) and d(loss)/d(means2d) for loss = <weights, [RGB, depth, alpha]>."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs[:6]]
    means, quats, scales, opacities, sh, viewmats = leaves
    K = inputs[6]
    bg = torch.full((len(viewmats), 3), 0.9, device="cuda")
    image, alpha, info = rasterizer(
        means, quats, scales, opacities, sh, viewmats, K, SIZE, SIZE,
        sh_degree=3, backgrounds=bg, render_mode="RGB+ED",
    )  # fmt: skip
    info["means2d"].retain_grad()
    loss = (torch.cat([image, alpha], dim=-1) * weights).sum()
    loss.backward()
    names = ["means", "quats", "scales", "opacities", "sh", "viewmats"]
    grads = {name: leaf.grad for name, leaf in zip(names, leaves, strict=True)}
    grads["means2d"] = info["means2d"].grad
    return grads


def test_gradients_match_gsplat() -> None:
    from gsplat import rasterization

    means, quats, scales, opacities, _ = random_gaussians(2000, seed=11)
    sh = torch.randn(2000, 16, 3, generator=torch.Generator().manual_seed(12)) * 0.3
    vm, K = cameras(2, SIZE)
    inputs = [t.cuda() for t in (means, quats, scales, opacities, sh, vm, K.contiguous())]
    weights = torch.randn(2, SIZE, SIZE, 5, generator=torch.Generator().manual_seed(13)).cuda()
    weights[..., 3] *= 0.1  # depth is in world units, about 10x the colour values

    # Dense mode, as recon.raster calls it (gsplat 1.5.3's default packed mode rejects per-camera
    # backgrounds with an assertion).
    theirs = gradients(partial(rasterization, packed=False), inputs, weights)
    ours = gradients(rasterize_torch, inputs, weights)
    errors = {name: rel_err(ours[name], theirs[name]) for name in theirs}
    print("gradient rel err ours vs gsplat:", {k: f"{v:.1e}" for k, v in errors.items()})
    for name, err in errors.items():
        assert theirs[name].abs().sum() > 0, name
        assert err < 1e-2, (name, err)
