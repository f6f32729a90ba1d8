"""What the orbit estimate adds to a default CPU reconstruct (issue 9: at most 30% of the fit's time).

A Droplet3D-shaped input: 85 frames at 512 px (the checker-textured tall figure, elevation 20, fov 40,
ray-cast at 256 px and upsampled 2x, since ray casting 512 px frames costs minutes and the tracker works at
256 px anyway). Times what `reconstruct --orbit auto` adds before the fit: `estimate_orbit`, then every
frame bundle-adjusted to its point tracks (`recon.bundle.adjust`); then the fit a default `reconstruct`
runs on CPU (the fast preset: 600 iterations at 128 px, from the bundle-adjusted poses, which it keeps, as
`--orbit auto` does: `recon.api.fit_refines_poses`).

    python benchmarks/bench_orbit_cost.py [--frames 85] [--iterations 600]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from recon import synthetic
from recon.bundle import adjust
from recon.config import asset_path
from recon.fit import FitConfig, fit
from recon.orbit_estimate import estimate_orbit
from recon.poses import OrbitConfig

RENDER_SIDE = 256  # px, ray-cast
UPSAMPLE = 2  # to Droplet3D's 512 px
ELEVATION, FOV = 20.0, 40.0
TARGET_SHARE = 0.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=85)
    parser.add_argument("--iterations", type=int, default=None, help="Default: the fast preset's.")
    args = parser.parse_args()
    n = args.frames
    c2w = synthetic.orbit_c2w(np.arange(n) * 360.0 / n, ELEVATION, 2.0)
    small, _ = synthetic.render(c2w, FOV, RENDER_SIDE, synthetic.tall_textured_scene(), 2, (1.0, 1.0, 1.0))
    frames = small.repeat(UPSAMPLE, axis=1).repeat(UPSAMPLE, axis=2)
    t = time.perf_counter()
    estimate = estimate_orbit(frames, OrbitConfig())
    t_estimate = time.perf_counter() - t
    print(estimate.line(), flush=True)
    bundle = adjust(estimate.observed, n, estimate.orbit, fov_uncertainty=estimate.uncertainty.get("fov"))
    print(bundle.line(), flush=True)
    preset = json.loads(asset_path("recon_fast.json").read_text())["fit"]
    cfg = FitConfig().updated({**preset, "device": "cpu", "refine_poses": False})
    if args.iterations:
        cfg = cfg.updated({"iterations": args.iterations})
    side = frames.shape[1]
    result = fit(frames, bundle.cameras(side, side), cfg, progress=False)
    # A shortened fit (--iterations) bounds the share from above: the preset's fit runs at least as long.
    full = int(preset["iterations"])
    added = t_estimate + bundle.seconds
    share = added / result.seconds
    print(
        f"{n} frames at {side} px, fit {cfg.iterations} iterations at {cfg.resolution} px, "
        f"{torch.get_num_threads()} threads: estimate {t_estimate:.1f} s + bundle adjustment "
        f"{bundle.seconds:.1f} s = {added:.1f} s, fit {result.seconds:.1f} s, share "
        f"{'<= ' if cfg.iterations < full else ''}{share:.3f} of a {full}-iteration fit "
        f"(target <= {TARGET_SHARE})  {'PASS' if share <= TARGET_SHARE else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
