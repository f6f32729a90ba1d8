"""Input preparation: alpha over the background, object found, cropped, centred, scaled, never stretched.

The segmentation model is a real ONNX file with U^2-Net's signature (tests/tiny_u2net.py) run by
onnxruntime through `droplet3d.segment`; the flood fill is checked on rendered pixels with known masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer.main
from conftest import USER_PROMPT, assert_user_error
from PIL import Image
from scipy import ndimage
from tiny_u2net import brightness_u2net, constant_u2net, random_u2net
from typer.testing import CliRunner

import cli
import runs.params
from droplet3d import prepare as prep
from droplet3d.errors import Droplet3DError
from droplet3d.prepare import PrepareConfig, prepare, prepare_aligned
from droplet3d.segment import U2NetSegmenter, border_flood_mask, file_sha256
from recon import synthetic

runner = CliRunner()
OBJECT_RGB = (200, 150, 50)
CENTRE_TOLERANCE = 0.02  # of the frame side
FILL_TOLERANCE = 0.02
MIN_IOU = 0.95


def corner_object(size: tuple[int, int] = (400, 300), seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """An RGBA image: a small disk near the top-left corner, random junk RGB under transparent pixels."""
    width, height = size
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    rows, cols = np.mgrid[:height, :width]
    disk = (rows - 45) ** 2 + (cols - 60) ** 2 < 30**2
    pixels[..., 3] = 0
    pixels[disk, :3], pixels[disk, 3] = OBJECT_RGB, 255
    return Image.fromarray(pixels, mode="RGBA"), disk


def object_pixels(image: Image.Image, background: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Pixels at least half-way from the background colour to the object's (soft edges split evenly)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    contrast = np.abs(np.subtract(OBJECT_RGB, background)).sum()
    return np.abs(pixels - background).sum(axis=2) >= contrast / 2


def centroid_and_fill(mask: np.ndarray) -> tuple[float, float, float]:
    """(|centroid - centre| in x and y as fractions of the frame, longest extent / frame side)."""
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    dx = abs((cols.mean() + 0.5) / width - 0.5)
    dy = abs((rows.mean() + 0.5) / height - 0.5)
    fill = max((cols.max() - cols.min() + 1) / width, (rows.max() - rows.min() + 1) / height)
    return dx, dy, fill


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("segmenters")
    return {
        "random": random_u2net(root / "random" / "u2net.onnx"),
        "brightness": brightness_u2net(root / "brightness" / "u2net.onnx"),
        "constant": constant_u2net(root / "constant" / "u2net.onnx"),
    }


# --------------------------------------------------------------------------- framing
def test_a_small_transparent_object_in_a_corner_is_centred_at_85_percent() -> None:
    image, _ = corner_object()
    prepared = prepare(image, PrepareConfig(width=256, height=256))
    out = prepared.image
    assert out.size == (256, 256) and out.mode == "RGB"
    dx, dy, fill = centroid_and_fill(object_pixels(out))
    assert dx <= CENTRE_TOLERANCE and dy <= CENTRE_TOLERANCE, (dx, dy)
    assert abs(fill - prep.DEFAULT_FILL) <= FILL_TOLERANCE, fill
    # The junk RGB under the transparent pixels is gone: beyond the object's resampled edge (the crop is
    # upscaled 3.7x, so the edge ramp is a few pixels wide) everything is pure black.
    edge = ndimage.binary_dilation(object_pixels(out), iterations=8)
    assert np.asarray(out)[~edge].max() == 0
    record = prepared.record
    assert record["alpha"] == "composited" and record["mask_source"] == "alpha" and record["recentred"]
    assert record["crop_box"] == [31, 16, 90, 75] and record["source_size"] == [400, 300]
    assert record["scale"] == pytest.approx(0.85 * 256 / 59, rel=1e-5)


@pytest.mark.parametrize(("name", "rgb"), [("black", 0), ("white", 255), ("grey", 128)])
def test_transparent_pixels_become_the_chosen_background(name: str, rgb: int) -> None:
    image, _ = corner_object()
    out = np.asarray(prepare(image, PrepareConfig(width=64, height=64, background=name)).image)
    assert (out[0, 0] == rgb).all() and (out[-1, -1] == rgb).all()


def test_no_recentre_keeps_the_framing_and_still_composites() -> None:
    image, disk = corner_object(size=(300, 300))
    prepared = prepare(image, PrepareConfig(width=150, height=150, recentre=False))
    found = object_pixels(prepared.image)
    rows, cols = np.nonzero(found)
    known_rows, known_cols = np.nonzero(disk)
    assert abs(rows.mean() - known_rows.mean() / 2) < 1 and abs(cols.mean() - known_cols.mean() / 2) < 1
    outside = ~ndimage.binary_dilation(found, iterations=2)
    assert np.asarray(prepared.image)[outside].max() == 0, "the junk RGB is composited away"
    assert prepared.record["recentred"] is False and prepared.record["crop_box"] == [0, 0, 300, 300]


def test_a_non_square_photo_is_padded_not_stretched() -> None:
    """A 240x120 photo with a round object keeps the object round in a 128x128 frame, on a black band."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(60, 120, (120, 240, 3), dtype=np.uint8)  # a textured, opaque photo background
    rows, cols = np.mgrid[:120, :240]
    pixels[(rows - 60) ** 2 + (cols - 120) ** 2 < 40**2] = 255
    prepared = prepare(Image.fromarray(pixels), PrepareConfig(width=128, height=128))
    out = np.asarray(prepared.image)
    assert (out[:31] == 0).all() and (out[97:] == 0).all(), "padding above and below, in --background"
    assert out[33:95].min() > 0, "the photo spans the middle 64 rows"
    white = out.min(axis=2) > 200
    r, c = np.nonzero(white)
    height, width = r.max() - r.min() + 1, c.max() - c.min() + 1
    assert abs(height - width) <= 1, (height, width)  # stretched to square it would be twice as tall
    assert prepared.record["padded_size"] == [240, 240] and prepared.record["placed_box"] == [0, 32, 128, 96]
    assert "no mask" in prepared.record["not_recentred_because"]


def test_a_square_object_stays_square_in_a_wide_frame() -> None:
    image, _ = corner_object()
    out = prepare(image, PrepareConfig(width=256, height=128)).image
    rows, cols = np.nonzero(object_pixels(out))
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1
    assert (rows.max() - rows.min() + 1) / 128 == pytest.approx(prep.DEFAULT_FILL, abs=FILL_TOLERANCE)


def test_an_image_that_already_fits_passes_unchanged(reference_dir: Path) -> None:
    """No alpha and no --remove-background: only the reference's own resize, so the fixtures still hold."""
    image = Image.open(reference_dir / "ref_image.png")
    prepared = prepare(image, PrepareConfig(width=64, height=64))
    np.testing.assert_array_equal(np.asarray(prepared.image), np.asarray(image.resize([64, 64])))
    assert prepared.record["mask_source"] == "none" and prepared.record["recentred"] is False


def test_an_opaque_alpha_channel_is_not_a_mask(reference_dir: Path) -> None:
    image = Image.open(reference_dir / "ref_image.png").convert("RGBA")
    prepared = prepare(image, PrepareConfig(width=64, height=64))
    assert prepared.record["alpha"] == "opaque everywhere, ignored"
    assert prepared.record["mask_source"] == "none"


# --------------------------------------------------------------------------- masks
def test_the_tiny_segmentation_model_runs_through_the_real_code_path(models: dict[str, Path]) -> None:
    """Random weights: the mask is whatever they give, but loading, inference and the record are real."""
    image, _ = corner_object()
    config = PrepareConfig(width=64, height=64, remove_background=True, segmenter=models["random"].parent)
    segmenter = prep.load_segmenter(config)
    assert isinstance(segmenter, U2NetSegmenter) and segmenter.input_side == 320
    mask = segmenter.predict(image.convert("RGB"))
    assert mask.shape == (300, 400) and mask.dtype == np.float32
    assert mask.min() == 0.0 and mask.max() == 1.0  # stretched by its min and max, as rembg does
    prepared = prepare(image, config, segmenter)
    record = prepared.record
    assert record["mask_source"] == "alpha+segmenter"
    assert record["segmenter"]["sha256"] == file_sha256(models["random"])
    assert record["segmenter"]["path"] == str(models["random"].resolve())


def test_a_segmentation_model_finds_the_object_where_it_is(models: dict[str, Path]) -> None:
    """A model that segments bright objects: its mask lands on the object (orientation, scaling, resize)."""
    rows, cols = np.mgrid[:240, :360]
    known = ((rows - 70) / 40) ** 2 + ((cols - 260) / 60) ** 2 < 1  # an off-centre, wide ellipse
    pixels = np.full((240, 360, 3), 20, np.uint8)
    pixels[known] = OBJECT_RGB
    segmenter = U2NetSegmenter(models["brightness"])
    mask = segmenter.predict(Image.fromarray(pixels))
    assert iou(mask >= prep.MASK_THRESHOLD, known) >= MIN_IOU
    config = PrepareConfig(width=128, height=128, remove_background=True, segmenter=models["brightness"])
    prepared = prepare(Image.fromarray(pixels), config, segmenter)
    dx, dy, fill = centroid_and_fill(object_pixels(prepared.image))
    assert dx <= CENTRE_TOLERANCE and dy <= CENTRE_TOLERANCE and abs(fill - 0.85) <= FILL_TOLERANCE
    assert np.asarray(prepared.image)[:8].max() == 0, "the dark grey background is replaced by black"


RENDERS = [
    ("default scene on teal", synthetic.default_scene, (0.2, 0.6, 0.6)),
    ("default scene on sand", synthetic.default_scene, (0.85, 0.8, 0.55)),
    ("panda on black (the published look)", synthetic.panda_scene, (0.0, 0.0, 0.0)),
    ("dark figure on white", synthetic.dark_scene, (1.0, 1.0, 1.0)),
]


@pytest.mark.parametrize(("name", "scene", "background"), RENDERS, ids=[r[0] for r in RENDERS])
def test_the_border_fill_separates_a_render_from_a_plain_background(
    name: str, scene: object, background: tuple[float, float, float]
) -> None:
    c2w = synthetic.orbit_c2w(np.array([30.0]), 15.0, 2.0)
    images, depth = synthetic.render(c2w, 45.0, 160, scene=scene(), background=background)  # type: ignore[operator]
    known = np.isfinite(depth[0])
    mask, fill = border_flood_mask(Image.fromarray(images[0]))
    assert iou(mask >= prep.MASK_THRESHOLD, known) >= MIN_IOU, name
    assert fill.background_rgb == tuple(round(c * 255) for c in background)


def test_the_border_fill_refuses_a_busy_background() -> None:
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with pytest.raises(Droplet3DError, match="not plain.*--segmenter"):
        border_flood_mask(Image.fromarray(noise))


# --------------------------------------------------------------------------- view alignment
def test_the_view_aligned_image_is_prepared_again() -> None:
    """Kontext's output has no alpha and may move the object; the input's framing is restored."""
    config = PrepareConfig(width=128, height=128)
    first = prepare(corner_object()[0], config)
    shifted = np.zeros((128, 128, 3), np.uint8)
    rows, cols = np.mgrid[:128, :128]
    shifted[(rows - 30) ** 2 + (cols - 95) ** 2 < 15**2] = OBJECT_RGB
    again = prepare_aligned(Image.fromarray(shifted), config, first, warn=pytest.fail)
    assert again.record["mask_source"] == "border_fill" and again.record["recentred"]
    dx, dy, fill = centroid_and_fill(object_pixels(again.image))
    assert dx <= CENTRE_TOLERANCE and dy <= CENTRE_TOLERANCE and abs(fill - 0.85) <= FILL_TOLERANCE


def test_a_busy_view_aligned_image_is_kept_as_it_is_with_a_warning() -> None:
    config = PrepareConfig(width=64, height=64)
    first = prepare(corner_object()[0], config)
    noise = Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    warnings: list[str] = []
    kept = prepare_aligned(noise, config, first, warn=warnings.append)
    np.testing.assert_array_equal(np.asarray(kept.image), np.asarray(noise))
    assert len(warnings) == 1 and "not plain" in kept.record["not_recentred_because"]


# --------------------------------------------------------------------------- the command
def generate_args(ckpt: Path, image: Path, out: Path, *extra: str) -> list[str]:
    return [
        "generate", "--ckpt", str(ckpt), "--image", str(image), "--prompt", USER_PROMPT, "--out", str(out),
        "--frames", "5", "--height", "64", "--width", "64", "--steps", "1", "--device", "cpu", "--quiet",
        *extra,
    ]  # fmt: skip


def test_generate_writes_and_records_the_prepared_conditioning_image(tiny_ckpt: Path, tmp_path: Path) -> None:
    source = tmp_path / "corner.png"
    corner_object()[0].save(source)
    result = runner.invoke(cli.app, generate_args(tiny_ckpt, source, tmp_path / "out"))
    assert result.exit_code == 0, result.output
    conditioning = Image.open(tmp_path / "out" / "conditioning.png")
    assert conditioning.size == (64, 64) and conditioning.mode == "RGB"
    dx, dy, fill = centroid_and_fill(object_pixels(conditioning))
    assert dx <= CENTRE_TOLERANCE and dy <= CENTRE_TOLERANCE and abs(fill - 0.85) <= FILL_TOLERANCE
    record = json.loads((tmp_path / "out" / "generation.json").read_text())
    steps = record["preparation"]["input"]
    assert steps["alpha"] == "composited" and steps["mask_source"] == "alpha"
    assert steps["crop_box"] == [31, 16, 90, 75] and steps["placed_box"] == [5, 5, 59, 59]
    assert record["parameters"]["fill"] == 0.85 and record["parameters"]["background"] == "black"
    assert record["conditioning_image"] == "conditioning.png" and "view_aligned" not in record["preparation"]


def _bad_model(tmp_path: Path, _models: dict[str, Path]) -> list[str]:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"not a protobuf")
    return ["--remove-background", "--segmenter", str(bad)]


def _transparent(image: Path) -> None:
    Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(image)


def _half_transparent(image: Path) -> None:
    Image.new("RGBA", (32, 32), (255, 0, 0, 200)).save(image)


def _plain(image: Path) -> None:
    Image.new("RGB", (32, 32), (30, 90, 60)).save(image)


BAD_INPUTS = {
    "a model file that is not ONNX": (_bad_model, None, ["cannot load --segmenter model", "garbage.onnx"]),
    "a missing model file": (
        lambda tmp, _m: ["--remove-background", "--segmenter", str(tmp / "u2net.onnx")], None,
        ["u2net.onnx", "does not exist"],
    ),
    "a folder without a model": (
        lambda tmp, _m: ["--remove-background", "--segmenter", str(tmp / "models")], None,
        ["holds no .onnx"],
    ),
    "a model that finds nothing": (
        lambda _t, m: ["--remove-background", "--segmenter", str(m["constant"])], None, ["constant mask"]
    ),
    "a fully transparent image": (lambda _t, _m: [], _transparent, ["alpha mask is empty"]),
    "an alpha that covers everything": (lambda _t, _m: [], _half_transparent, ["covers 100.0%"]),
    "a plain image, nothing to separate": (
        lambda _t, _m: ["--remove-background"], _plain, ["border_fill mask is empty"]
    ),
    "--segmenter without --remove-background": (
        lambda _t, m: ["--segmenter", str(m["random"])], None, ["--remove-background"]
    ),
    "an unknown background colour": (lambda _t, _m: ["--background", "purple"], None, ["--background"]),
    "a fill above 1": (lambda _t, _m: ["--fill", "1.5"], None, ["--fill"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_preparation_input_is_one_line_and_exit_2(
    case: str, tiny_ckpt: Path, models: dict[str, Path], tmp_path: Path
) -> None:
    extra, make_image, needles = BAD_INPUTS[case]
    image = tmp_path / "input.png"
    (tmp_path / "models").mkdir()
    if make_image is None:
        corner_object()[0].save(image)
    else:
        make_image(image)
    out = tmp_path / "out"
    result = runner.invoke(cli.app, generate_args(tiny_ckpt, image, out, *extra(tmp_path, models)))
    assert_user_error(result, out, *needles)


# --------------------------------------------------------------------------- one option set
def test_every_command_that_generates_takes_the_preparation_options() -> None:
    """generate, run and batch read the image; each must pass every preparation option through."""
    group = typer.main.get_command(cli.app)
    takers = {
        name: {p.name for p in command.params}
        for name, command in group.commands.items()  # type: ignore[attr-defined]
        if any("--image" in p.opts or "--images" in p.opts for p in command.params)
    }
    assert {"generate", "run"} <= set(takers)
    for name, params in takers.items():
        assert set(runs.params.PREPARE_NAMES) <= params, name
