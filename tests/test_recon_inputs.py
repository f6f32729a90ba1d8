"""Loading orbits: frame order, colour formats, generate folders."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from recon.errors import ReconError
from recon.inputs import load_orbit


def test_frames_load_in_natural_order_with_alpha_over_white(tmp_path: Path) -> None:
    for i in range(12):
        rgba = np.zeros((8, 8, 4), dtype=np.uint8)
        rgba[..., 0] = i * 10  # the frame number, readable back
        rgba[..., 3] = 255
        rgba[0, 0, 3] = 0  # one transparent pixel: composited over white
        iio.imwrite(tmp_path / f"frame_{i}.png", rgba)  # frame_2 must come before frame_10
    frames = load_orbit(tmp_path)
    assert frames.frames.shape == (12, 8, 8, 3) and frames.frames.dtype == np.uint8
    assert list(frames.frames[:, 4, 4, 0]) == [i * 10 for i in range(12)]
    assert list(frames.frames[3, 0, 0]) == [255, 255, 255]


def test_grayscale_frames_become_rgb(tmp_path: Path) -> None:
    for i in range(8):
        iio.imwrite(tmp_path / f"{i:03d}.png", np.full((6, 6), 100 + i, dtype=np.uint8))
    frames = load_orbit(tmp_path).frames
    assert frames.shape == (8, 6, 6, 3) and (frames[5] == 105).all()


def test_generate_folder_metadata(tmp_path: Path) -> None:
    (tmp_path / "frames").mkdir()
    for i in range(9):
        iio.imwrite(tmp_path / "frames" / f"{i:05d}.png", np.full((4, 4, 3), i, dtype=np.uint8))
    (tmp_path / "generation.json").write_text(json.dumps({"frames": 9, "orbit": {"fov": 30.0, "lens": "x"}}))
    orbit = load_orbit(tmp_path)
    assert orbit.source == "generate" and orbit.orbit_hints == {"fov": 30.0} and orbit.count == 9
    (tmp_path / "generation.json").write_text(json.dumps({"frames": 85}))
    with pytest.raises(ReconError, match="85 frames"):
        load_orbit(tmp_path)
    (tmp_path / "generation.json").write_text("[1, 2")
    with pytest.raises(ReconError, match="generation.json"):
        load_orbit(tmp_path)
