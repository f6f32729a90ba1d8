"""`droplet3d info`'s report: package versions, the device and gsplat's kernels (no stage runs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

INFO_PACKAGES = (
    "droplet3d", "torch", "diffusers", "transformers", "safetensors", "peft", "accelerate", "sentencepiece",
    "protobuf", "onnxruntime", "gsplat", "trimesh", "open3d", "typer", "imageio", "imageio-ffmpeg",
    "nerfstudio",
)  # fmt: skip


def gsplat_kernel_status() -> str:
    """Whether gsplat's CUDA kernels are usable, cached, or will compile on first use."""
    import importlib.util

    import torch

    if importlib.util.find_spec("gsplat") is None:
        return "gsplat not installed (the CPU rasteriser is used)"
    if not torch.cuda.is_available():
        return "no CUDA: gsplat kernels unavailable, the pure-PyTorch rasteriser is used"
    if importlib.util.find_spec("gsplat.csrc") is not None:
        return "precompiled"
    try:
        from torch.utils.cpp_extension import _get_build_directory

        build = Path(_get_build_directory("gsplat_cuda", verbose=False))
        if (build / "gsplat_cuda.so").exists():
            return f"compiled (cached in {build})"
    except Exception:  # private torch helper: status only, never fatal
        pass
    return "not compiled yet: gsplat compiles its CUDA kernels on first use (a few minutes, once)"


def environment_lines() -> Iterator[str]:
    """One `name: value` line per package, then the device and gsplat's kernel status."""
    from importlib import metadata

    import torch

    for name in INFO_PACKAGES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "not installed" + (" (optional extra: pip install 'droplet3d[nerfstudio]')"
                                         if name == "nerfstudio" else "")  # fmt: skip
        yield f"{name:>15}: {version}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        memory = f"{props.total_memory / 1024**3:.0f} GiB"
        yield f"{'device':>15}: cuda ({props.name}, {memory}), CUDA {torch.version.cuda}"
    else:
        threads = torch.get_num_threads()
        yield f"{'device':>15}: cpu only ({threads} threads); generation needs a CUDA GPU in practice"
    yield f"{'gsplat kernels':>15}: {gsplat_kernel_status()}"
