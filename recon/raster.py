"""One rasterisation call for both devices: gsplat's CUDA kernels on CUDA, the PyTorch port on CPU.

Both take and return the same things (see `recon.raster_torch.rasterize_torch`), so the fitting loop,
the densification strategy, meshing and previews never branch on the device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from recon.errors import ReconError
from recon.raster_torch import rasterize_torch


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without CUDA is a user error."""
    device = (device or "auto").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ReconError("--device cuda but CUDA is not available here; use --device cpu (or auto)")
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise ReconError(f"unknown device {device!r}; use auto, cuda or cpu")


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    backend: str = "auto",
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render [C, H, W, D], alphas [C, H, W, 1], info; `backend` "auto" picks gsplat on CUDA tensors."""
    use_gsplat = backend == "gsplat" or (backend == "auto" and means.is_cuda)
    if use_gsplat:
        from gsplat import rasterization

        return rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            sh_degree=sh_degree, backgrounds=backgrounds, render_mode=render_mode, packed=False,
        )  # fmt: skip
    return rasterize_torch(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        sh_degree=sh_degree, backgrounds=backgrounds, render_mode=render_mode,
    )  # fmt: skip
