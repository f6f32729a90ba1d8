"""One rasterisation call for both devices: gsplat's CUDA kernels on CUDA, the PyTorch port on CPU.

Both take and return the same things (see `recon.raster_torch.rasterize_torch`), so the fitting loop,
the densification strategy, meshing and previews never branch on the device.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from recon.errors import ReconError
from recon.raster_torch import rasterize_torch


def resolve_device(device: str) -> torch.device:
    """The torch device for a --device value.

    Kept identical to `droplet3d.generate.resolve_device`; one parametrised test runs both. (recon must not
    import droplet3d, and a shared top-level module would be a third install unit for a few lines.)

    "auto" is CUDA when present, else CPU; "cpu"; "cuda" or "cuda:N" only when that GPU exists.
    Anything else, or a GPU that is not there, is a user error naming what to pass instead.
    """
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise ReconError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ReconError(f"--device {device} but CUDA is not available here; use --device cpu (or auto)")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ReconError(
            f"--device {device} but this machine has {count} CUDA device(s); use cuda:0 to cuda:{count - 1}"
        )
    return torch.device(name)


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
    depth_alpha: float = 0.5,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render [C, H, W, D], alphas [C, H, W, 1], info; `backend` "auto" picks gsplat on CUDA tensors.

    `depth_alpha` sets where "RGB+MD" (our torch rasteriser only) reads the depth; see `rasterize_torch`.
    """
    use_gsplat = backend == "gsplat" or (backend == "auto" and means.is_cuda)
    if use_gsplat:
        from gsplat import rasterization

        return rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            sh_degree=sh_degree, backgrounds=backgrounds, render_mode=render_mode, packed=False,
        )  # fmt: skip
    return rasterize_torch(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        sh_degree=sh_degree, backgrounds=backgrounds, render_mode=render_mode, depth_alpha=depth_alpha,
    )  # fmt: skip
