"""Make the bundled demo orbit, recon/assets/demo_orbit.mp4 (committed; run again only to change it).

It is the analytic test object of `recon.synthetic` (a blue body, a red head on top, a green nose facing
the first frame) ray-cast on the Droplet3D default orbit (elevation 15, radius 2, vertical fov 45,
counter-clockwise from azimuth 0, no repeated first view), so `droplet3d demo` needs no pose options.

    python scripts/make_demo_orbit.py [--frames 40] [--size 128] [--out recon/assets/demo_orbit.mp4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio
import numpy as np

from recon import synthetic

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels (a multiple of 16)")
    parser.add_argument("--out", type=Path, default=ROOT / "recon" / "assets" / "demo_orbit.mp4")
    args = parser.parse_args()
    azimuths = np.arange(args.frames) * 360.0 / args.frames
    frames, _ = synthetic.render(synthetic.orbit_c2w(azimuths, 15.0, 2.0), 45.0, args.size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(
        str(args.out), fps=10, codec="libx264", quality=10, macro_block_size=16
    ) as writer:
        for frame in frames:
            writer.append_data(frame)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB, {len(frames)} frames)")


if __name__ == "__main__":
    main()
