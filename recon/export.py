"""Write fitted splats as a standard 3DGS `.ply` (the layout INRIA's code, gsplat and splat viewers read).

Layout, one binary little-endian float32 vertex element per gaussian, in this order:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3*(K-1)-1) opacity scale_0..2 rot_0..3`` where the values are
raw parameters: log scales, logit opacity, an unnormalised wxyz quaternion, and SH coefficients with
``f_rest`` stored channel-major (all red coefficients, then green, then blue), as 3DGS writes them.
Normals are zero (3DGS writes them too). Coordinates are the world frame of transforms.json (+Z up).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.fit import Splats


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
