"""`generate --view-align`: the aligned image, not the input, is what conditions the video."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import USER_PROMPT
from PIL import Image
from tiny_flux import TRANSFORMER_CONFIG, build_tiny_kontext, build_tiny_lora

from droplet3d.generate import GenerateConfig, generate, write_outputs


@pytest.fixture(scope="module")
def full_ckpt(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny video checkpoint plus a tiny FLUX.1-Kontext-dev folder and LoRA: the full release layout."""
    root = tmp_path_factory.mktemp("full") / "Droplet3D-5B"
    shutil.copytree(tiny_ckpt, root)
    build_tiny_kontext(root)
    build_tiny_lora(root / "pytorch_lora_weights.safetensors", TRANSFORMER_CONFIG)
    return root


def small_config(ckpt: Path, image: Path, **overrides: object) -> GenerateConfig:
    base = dict(
        ckpt=ckpt, image=image, prompt=USER_PROMPT, frames=5, height=32, width=32, steps=2, device="cpu",
        dtype="float32", align_max_area=32 * 32, align_steps=2, align_auto_resize=False, progress=False,
    )  # fmt: skip
    base.update(overrides)
    return GenerateConfig(**base)


def test_aligned_image_conditions_the_video(full_ckpt: Path, reference_dir: Path, tmp_path: Path) -> None:
    image = reference_dir / "ref_image.png"
    aligned_run = generate(small_config(full_ckpt, image, view_align=True))
    assert aligned_run.aligned_image is not None and aligned_run.aligned_image.size == (32, 32)
    assert aligned_run.record["view_aligned"] is True
    write_outputs(aligned_run, tmp_path / "aligned", fps=8, progress=False)
    saved = tmp_path / "aligned" / "aligned_input.png"
    assert saved.is_file()

    # Conditioning on the saved aligned image without alignment reproduces the aligned run exactly...
    replay = generate(small_config(full_ckpt, saved, view_align=False))
    np.testing.assert_array_equal(aligned_run.frames, replay.frames)
    # ...while conditioning on the original input gives a different video.
    plain = generate(small_config(full_ckpt, image, view_align=False))
    assert np.abs(plain.frames.astype(int) - aligned_run.frames.astype(int)).max() > 0


def test_the_aligned_image_is_prepared_as_the_input_was(
    full_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kontext (here: an edit that moves the object off-centre) gets the prepared input, and its output is
    framed again before it conditions the video; both steps are recorded."""
    import droplet3d.generate

    seen: list[Image.Image] = []
    moved = np.zeros((32, 32, 3), np.uint8)
    moved[2:10, 20:30] = 220  # off-centre, on the black it was given

    def fake_alignment(image: Image.Image, *args: object) -> Image.Image:
        seen.append(image)
        return Image.fromarray(moved)

    monkeypatch.setattr(droplet3d.generate, "run_view_alignment", fake_alignment)
    source = np.zeros((48, 64, 4), np.uint8)
    source[30:44, 40:60] = (220, 220, 220, 255)  # a small opaque object in a corner, the rest transparent
    Image.fromarray(source, mode="RGBA").save(tmp_path / "input.png")
    result = generate(small_config(full_ckpt, tmp_path / "input.png", view_align=True), warn=pytest.fail)

    given = np.asarray(seen[0])
    assert seen[0].size == (32, 32) and given[0, 0].max() == 0 and given[16, 16].min() > 200
    steps = result.record["preparation"]
    assert steps["input"]["mask_source"] == "alpha"
    assert steps["view_aligned"]["mask_source"] == "border_fill"
    assert steps["view_aligned"]["crop_box"] == [20, 2, 30, 10]
    conditioning = np.asarray(result.conditioning_image).max(axis=2) > 110
    rows, cols = np.nonzero(conditioning)
    assert abs(rows.mean() - 15.5) <= 1 and abs(cols.mean() - 15.5) <= 1
    np.testing.assert_array_equal(np.asarray(result.aligned_image), moved)
