"""A turntable video of fitted splats (preview.mp4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.fit import Splats
from recon.poses import Cameras, OrbitConfig, look_at_c2w, orbit_positions


def turntable_cameras(orbit: OrbitConfig, like: Cameras, frames: int, size: int) -> Cameras:
    """`frames` cameras on one full counter-clockwise turn of `orbit`, `size` px square-ish (even sides)."""
    height = max(16, int(round(size * like.height / like.width / 16)) * 16)
    width = max(16, int(round(size / 16)) * 16)
    cams = like.scaled(width, height)
    az = orbit.start_azimuth + np.arange(frames) * 360.0 / frames
    c2w = look_at_c2w(orbit_positions(az, orbit.elevation, orbit.radius))
    return Cameras(c2w, cams.fx, cams.fy, cams.cx, cams.cy, width, height)


def write_preview(path: Path, splats: Splats, cameras: Cameras, fps: int = 12) -> int:
    """Render `cameras` and encode them as H.264 mp4; returns the number of frames."""

    frames = []
    for s in range(0, len(cameras), 8):
        sub = cameras.subset(np.arange(s, min(s + 8, len(cameras))))
        renders, _ = splats.render(sub, batch=8)
        frames.append((renders.clamp(0, 1) * 255).round().byte().cpu().numpy())
    video = np.concatenate(frames)
    import imageio

    with imageio.get_writer(str(path), fps=fps, codec="libx264", quality=8, macro_block_size=16) as writer:
        for frame in video:
            writer.append_data(frame)
    return len(video)
