"""Canonical-view alignment (FLUX.1-Kontext + LoRA) on a tiny random-weight Kontext folder, on CPU.

The tiny models cannot show that the view gets aligned; these tests pin down what can go wrong in
our code: the real diffusers loaders read the released layout, the LoRA is really applied, the
run is deterministic, the output has the video's size, the pipeline is freed, and missing or bad
files are one-line Droplet3DErrors.
"""

from __future__ import annotations

import gc
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tiny_flux import TRANSFORMER_CONFIG, build_tiny_kontext, build_tiny_lora

from droplet3d import align
from droplet3d.align import AlignConfig, align_view, load_kontext_pipeline, run_kontext
from droplet3d.errors import Droplet3DError

# Output 24x40 (a non-square video size, to catch a swapped resize); Kontext generates at that
# aspect ratio with max_area pixels, so a tiny max_area keeps the run tiny.
CONFIG = AlignConfig(
    height=24,
    width=40,
    max_area=32 * 32,
    num_inference_steps=2,
    auto_resize=False,  # keep the 48x36 input at its size instead of Kontext's ~1 MP
    dtype=torch.float32,
    device="cpu",
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("align") / "Droplet3D-5B"
    build_tiny_kontext(root)
    build_tiny_lora(root / "pytorch_lora_weights.safetensors", TRANSFORMER_CONFIG)
    return root


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def aligned(ckpt: Path, image: Image.Image) -> Image.Image:
    return align_view(image, ckpt, CONFIG, progress=False)


def test_align_view_runs_and_returns_video_size(aligned: Image.Image) -> None:
    assert aligned.size == (CONFIG.width, CONFIG.height)
    assert aligned.mode == "RGB"
    assert np.asarray(aligned).std() > 0


def test_lora_is_applied_and_changes_the_output(ckpt: Path, image: Image.Image, aligned: Image.Image) -> None:
    pipe = load_kontext_pipeline(ckpt, CONFIG, lora=False, progress=False)
    try:
        assert align._count_lora_layers(pipe) == 0
        without = np.asarray(run_kontext(pipe, image, CONFIG), dtype=np.int16)
    finally:
        del pipe
    with_lora = np.asarray(aligned, dtype=np.int16)
    assert np.abs(with_lora - without).mean() > 1.0

    pipe = load_kontext_pipeline(ckpt, CONFIG, lora=True, progress=False)
    # 1 double-stream block x 6 projections + 1 single-stream block x 3, as written by build_tiny_lora.
    assert align._count_lora_layers(pipe) == 9
    del pipe


def test_same_seed_is_deterministic_and_seed_matters(
    ckpt: Path, image: Image.Image, aligned: Image.Image
) -> None:
    again = align_view(image, ckpt, CONFIG, progress=False)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(aligned))

    other_seed = AlignConfig(**{**CONFIG.__dict__, "seed": CONFIG.seed + 1})
    different = align_view(image, ckpt, other_seed, progress=False)
    assert not np.array_equal(np.asarray(different), np.asarray(aligned))


def test_pipeline_is_freed_before_returning(
    ckpt: Path, image: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    refs: list[weakref.ref] = []
    real_load = align.load_kontext_pipeline

    def tracking_load(*args, **kwargs):
        pipe = real_load(*args, **kwargs)
        refs.extend(weakref.ref(m) for m in (pipe, pipe.transformer, pipe.text_encoder_2, pipe.vae))
        return pipe

    monkeypatch.setattr(align, "load_kontext_pipeline", tracking_load)
    align_view(image, ckpt, CONFIG, progress=False)
    assert len(refs) == 4
    assert all(ref() is None for ref in refs), "the Kontext pipeline is still alive after align_view"


def test_missing_kontext_folder_is_a_one_line_error(tmp_path: Path, ckpt: Path, image: Image.Image) -> None:
    root = tmp_path / "Droplet3D-5B"
    root.mkdir()
    shutil.copy(ckpt / "pytorch_lora_weights.safetensors", root)
    with pytest.raises(Droplet3DError) as err:
        align_view(image, root, CONFIG, progress=False)
    assert str(root / "FLUX.1-Kontext-dev") in str(err.value)
    assert "\n" not in str(err.value)


def test_incomplete_kontext_folder_is_an_error(tmp_path: Path, image: Image.Image) -> None:
    (tmp_path / "FLUX.1-Kontext-dev").mkdir()
    with pytest.raises(Droplet3DError, match="model_index.json"):
        align_view(image, tmp_path, CONFIG, progress=False)


def test_missing_lora_file_is_an_error_even_without_lora(
    tmp_path: Path, ckpt: Path, image: Image.Image
) -> None:
    root = tmp_path / "Droplet3D-5B"
    root.mkdir()
    (root / "FLUX.1-Kontext-dev").symlink_to(ckpt / "FLUX.1-Kontext-dev")
    with pytest.raises(Droplet3DError) as err:
        align_view(image, root, CONFIG, progress=False)
    assert str(root / "pytorch_lora_weights.safetensors") in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(Droplet3DError, match="pytorch_lora_weights.safetensors"):
        load_kontext_pipeline(root, CONFIG, lora=False, progress=False)


def _write_lora(path: Path, module: str) -> None:
    save_file(
        {f"{module}.lora_A.weight": torch.ones(4, 32), f"{module}.lora_B.weight": torch.ones(32, 4)},
        str(path),
    )


def test_corrupt_or_unmatched_lora_is_an_error(tmp_path: Path, ckpt: Path, image: Image.Image) -> None:
    root = tmp_path / "Droplet3D-5B"
    root.mkdir()
    (root / "FLUX.1-Kontext-dev").symlink_to(ckpt / "FLUX.1-Kontext-dev")
    lora = root / "pytorch_lora_weights.safetensors"

    lora.write_bytes(b"not a safetensors file")
    with pytest.raises(Droplet3DError, match="cannot load the view-alignment LoRA"):
        align_view(image, root, CONFIG, progress=False)

    # Keys for modules the Kontext transformer does not have: peft refuses them.
    _write_lora(lora, "transformer.no_such_block.0.attn.to_q")
    with pytest.raises(Droplet3DError, match="not found"):
        align_view(image, root, CONFIG, progress=False)

    # Keys for no component of Kontext at all (a UNet LoRA): diffusers only warns, we must refuse.
    _write_lora(lora, "unet.down_blocks.0.attentions.0.to_q")
    with pytest.raises(Droplet3DError, match="no weights that match FLUX.1-Kontext"):
        align_view(image, root, CONFIG, progress=False)
    gc.collect()


def test_bad_offload_mode_is_an_error(ckpt: Path, image: Image.Image) -> None:
    bad = AlignConfig(**{**CONFIG.__dict__, "offload": "disk"})
    with pytest.raises(Droplet3DError, match="offload"):
        align_view(image, ckpt, bad, progress=False)
