"""Frames and videos as users have them: truncated downloads, CMYK JPEGs, LA PNGs, macOS litter."""

from __future__ import annotations

from pathlib import Path

import imageio
import numpy as np
import pytest
from conftest import assert_user_error
from PIL import Image
from recon_helpers import orbit_frames
from typer.testing import CliRunner

from cli import app
from recon.errors import ReconError
from recon.inputs import load_orbit

runner = CliRunner()
VIDEO_FRAMES = 40
KEPT_FRACTION = 0.6  # of the file's bytes, after the index at its front
JPEG_TOLERANCE = 12  # per channel, 8-bit


def faststart_video(path: Path, frames: np.ndarray) -> Path:
    """An mp4 with its index (moov) first, as streaming sites serve them: cut short, it still opens."""
    with imageio.get_writer(
        str(path), fps=10, codec="libx264", quality=10, macro_block_size=16,
        output_params=["-movflags", "+faststart"],
    ) as writer:  # fmt: skip
        for frame in frames:
            writer.append_data(frame)
    return path


def test_a_truncated_video_is_reported_not_posed_as_a_full_orbit(tmp_path: Path) -> None:
    whole = faststart_video(tmp_path / "whole.mp4", orbit_frames(VIDEO_FRAMES, 32, supersample=1))
    assert load_orbit(whole).count == VIDEO_FRAMES
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * KEPT_FRACTION)])
    with pytest.raises(ReconError, match=f"truncated: its container declares {VIDEO_FRAMES} frames"):
        load_orbit(cut)
    out = tmp_path / "out"
    assert_user_error(runner.invoke(app, ["poses", str(cut), "--out", str(out)]), out, "truncated")


def test_cmyk_jpegs_keep_their_colours(tmp_path: Path) -> None:
    colour = (200, 40, 90)
    for i in range(8):
        Image.new("RGB", (16, 16), colour).convert("CMYK").save(tmp_path / f"{i:03d}.jpg", quality=95)
    frames = load_orbit(tmp_path).frames
    assert frames.shape == (8, 16, 16, 3)
    assert np.abs(frames[:, 8, 8].astype(int) - np.array(colour)).max() <= JPEG_TOLERANCE


def test_la_pngs_are_converted(tmp_path: Path) -> None:
    for i in range(8):
        Image.new("LA", (8, 8), (10 * i, 255)).save(tmp_path / f"{i:03d}.png")  # opaque: alpha is moot
    frames = load_orbit(tmp_path).frames
    assert frames.shape == (8, 8, 8, 3)
    assert [int(v) for v in frames[:, 0, 0, 0]] == [10 * i for i in range(8)]
    assert np.all(frames[..., 0] == frames[..., 2])


def test_palette_pngs_are_converted(tmp_path: Path) -> None:
    for i in range(8):
        Image.new("RGB", (8, 8), (30, 60, 10 * i)).convert("P", palette=Image.Palette.ADAPTIVE).save(
            tmp_path / f"{i:03d}.png"
        )
    frames = load_orbit(tmp_path).frames
    assert frames.shape == (8, 8, 8, 3) and frames[3, 0, 0, 1] == 60


def test_hidden_files_are_skipped(tmp_path: Path) -> None:
    for i in range(8):
        Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "._000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (tmp_path / ".hidden.png").write_bytes(b"not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    frames = load_orbit(tmp_path).frames
    assert frames.shape[0] == 8 and [int(v) for v in frames[:, 0, 0, 0]] == list(range(8))


def test_a_video_without_a_duration_is_still_bounded_while_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imageio.v3 as iio

    from recon import inputs

    video = faststart_video(tmp_path / "v.mp4", orbit_frames(12, 32, supersample=1))
    monkeypatch.setattr(iio, "immeta", lambda _path: {})  # a container that declares nothing
    monkeypatch.setattr(inputs, "MAX_ORBIT_BYTES", 10 * 32 * 32 * inputs.DECODED_CHANNELS)  # 10 of 12 fit
    with pytest.raises(ReconError, match="11 frames of 32x32"):
        load_orbit(video)
