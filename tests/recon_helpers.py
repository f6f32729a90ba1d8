"""Shared helpers for the recon tests: ground-truth orbits, an independent PLY reader, Chamfer distance."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon import synthetic


def orbit_frames(
    n: int, size: int, elevation: float = 15.0, radius: float = 2.0, fov: float = 45.0, start: float = 0.0,
    step: float | None = None, supersample: int = 2,
) -> np.ndarray:  # fmt: skip
    """Ray-cast views [n, size, size, 3] uint8 of the analytic object, ccw from `start` degrees."""
    step = 360.0 / n if step is None else step
    c2w = synthetic.orbit_c2w(start + step * np.arange(n), elevation, radius)
    frames, _ = synthetic.render(c2w, fov, size, supersample=supersample)
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    import imageio

    with imageio.get_writer(str(path), fps=fps, codec="libx264", quality=10, macro_block_size=16) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def read_binary_ply(path: Path) -> dict[str, np.ndarray]:
    """A minimal PLY reader written from the format spec (vertex element only, binary little endian)."""
    raw = Path(path).read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode("ascii").splitlines()
    assert header[0] == "ply" and header[1] == "format binary_little_endian 1.0", header[:2]
    sizes = {"float": "<f4", "double": "<f8", "uchar": "u1", "int": "<i4", "uint": "<u4", "short": "<i2"}
    count, names, dtypes, in_vertex = 0, [], [], False
    for line in header[2:]:
        parts = line.split()
        if parts[0] == "element":
            in_vertex = parts[1] == "vertex"
            if in_vertex:
                count = int(parts[2])
        elif parts[0] == "property" and in_vertex:
            names.append(parts[2])
            dtypes.append(sizes[parts[1]])
    data = np.frombuffer(raw[end:], dtype=np.dtype(list(zip(names, dtypes, strict=True))), count=count)
    return {name: np.asarray(data[name]) for name in names}


def chamfer_l1(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer-L1: the mean of the two mean nearest-neighbour distances."""
    from scipy.spatial import cKDTree

    d_ab, _ = cKDTree(b).query(a)
    d_ba, _ = cKDTree(a).query(b)
    return 0.5 * (float(d_ab.mean()) + float(d_ba.mean()))
