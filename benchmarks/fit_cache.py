"""Fits and frames kept on disk, so a benchmark can fit on one machine and mesh and judge on another,
and the settings such a benchmark runs with (a reconstruct preset's, or its own).

The GPU machine has gsplat's CUDA kernels but no open3d (its wheel is too large to carry there), so a
benchmark at the GPU preset fits there with `--fit-only` and meshes here, reading the same caches.
Run as scripts from `benchmarks/`, the benchmarks import this module by its bare name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon.config import resolve_settings
from recon.fit import FitConfig, FitResult, Splats
from recon.mesh import MeshConfig


def bench_settings(
    preset: str | None, own_fit: FitConfig, fit_overrides: dict[str, Any]
) -> tuple[FitConfig, MeshConfig]:
    """The fit and mesh settings: a reconstruct preset's (`preset`, e.g. "quality", CUDA's default), or
    the benchmark's `own_fit` with the default mesh; `fit_overrides` (device, seed) apply to either."""
    if preset is None:
        fit_cfg, mesh_cfg = own_fit, MeshConfig()
    else:
        settings = resolve_settings(None, preset=preset)
        fit_cfg, mesh_cfg = settings.fit, settings.mesh
    return fit_cfg.updated(fit_overrides), mesh_cfg


def cached_frames(path: Path | None, render: Callable[[], np.ndarray]) -> np.ndarray:
    """Frames [V, H, W, 3] uint8 read from the npz at `path`, or rendered and saved there (None: render)."""
    if path is not None and path.exists():
        with np.load(path) as data:
            return data["frames"]
    frames = render()
    if path is not None:
        np.savez_compressed(path, frames=frames)
    return frames


def cached_fit(path: Path | None, run: Callable[[], FitResult]) -> tuple[Splats, Any, Any]:
    """(splats on the CPU, training cameras, visual hull) read from `path`, or fitted and saved there."""
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=False)
        return saved["splats"], saved["cameras"], saved["hull"]
    result = run()
    tensors = {
        field.name: getattr(result.splats, field.name).detach().cpu()
        for field in dataclasses.fields(Splats)
        if isinstance(getattr(result.splats, field.name), torch.Tensor)
    }
    splats = dataclasses.replace(result.splats, **tensors)  # the mesh and export run on the CPU
    if path is not None:
        torch.save({"splats": splats, "cameras": result.cameras, "hull": result.hull}, path)
    return splats, result.cameras, result.hull
