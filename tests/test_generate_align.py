"""`generate --view-align`: the aligned image, not the input, is what conditions the video."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import USER_PROMPT
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
