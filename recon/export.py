"""Write fitted splats as a standard 3DGS `.ply` (the layout INRIA's code, gsplat and splat viewers read).

Layout, one binary little-endian float32 vertex element per gaussian, in this order:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3*(K-1)-1) opacity scale_0..2 rot_0..3`` where the values are
raw parameters: log scales, logit opacity, an unnormalised wxyz quaternion, and SH coefficients with
``f_rest`` stored channel-major (all red coefficients, then green, then blue), as 3DGS writes them.
Normals are zero (3DGS writes them too). Coordinates are whatever frame the splats are in; the
exporter (`recon.asset`) passes them in the asset frame of `recon.frames`, shared with the mesh and
transforms.json.

`write_splats` also writes gsplat's two other formats through gsplat's own `export_splats`:
``splat`` (antimatter15's viewer: positions, scales, 8-bit colour and rotation; SH degree 0 only) and
``ply-compressed`` (SuperSplat's chunked, quantised ply). gsplat's plain "ply" is not used for the
standard file: gsplat 1.5.3 omits the ``nx ny nz`` properties of the 3DGS layout, which INRIA-derived
readers index by position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.errors import ReconError
from recon.fit import Splats

# --splat-format value -> (file name, gsplat export_splats format or None for our 3DGS writer).
SPLAT_FILES = {
    "ply": ("splats.ply", None),
    "splat": ("splats.splat", "splat"),
    "ply-compressed": ("splats.compressed.ply", "ply_compressed"),
}
SPLAT_FORMATS = tuple(SPLAT_FILES)


def splat_ply_fields(sh_degree: int) -> list[str]:
    k = (sh_degree + 1) ** 2
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(3 * (k - 1))]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def write_splats_ply(path: Path, splats: Splats) -> None:
    """Write `splats` to `path` in the 3DGS layout (see the module docstring)."""
    means = splats.means.detach().cpu().numpy().astype(np.float32)
    n = len(means)
    sh0 = splats.sh0.detach().cpu().numpy().reshape(n, 3)
    rest = splats.shN.detach().cpu().numpy()  # [N, K-1, 3]
    rest = rest.transpose(0, 2, 1).reshape(n, -1)  # channel-major, as 3DGS
    columns = [
        means, np.zeros_like(means), sh0, rest,
        splats.opacities.detach().cpu().numpy().reshape(n, 1),
        splats.scales.detach().cpu().numpy(), splats.quats.detach().cpu().numpy(),
    ]  # fmt: skip
    data = np.concatenate(columns, axis=1).astype("<f4")
    names = splat_ply_fields(splats.sh_degree)
    assert data.shape[1] == len(names)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in names]
    header += ["end_header"]
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(np.ascontiguousarray(data).tobytes())


def write_splats(out_dir: Path, splats: Splats, splat_format: str) -> str:
    """Write `splats` into `out_dir` in `splat_format` (see `SPLAT_FILES`); returns the file name."""
    if splat_format not in SPLAT_FILES:
        raise ReconError(f"splat-format must be one of {', '.join(SPLAT_FORMATS)}, got {splat_format!r}")
    name, gsplat_format = SPLAT_FILES[splat_format]
    path = Path(out_dir) / name
    if gsplat_format is None:
        write_splats_ply(path, splats)
        return name
    from gsplat.exporter import export_splats

    export_splats(
        splats.means.detach().cpu(), splats.scales.detach().cpu(), splats.quats.detach().cpu(),
        splats.opacities.detach().cpu(), splats.sh0.detach().cpu(), splats.shN.detach().cpu(),
        format=gsplat_format, save_to=str(path),
    )  # fmt: skip
    return name
