"""Our generation stack against fixtures produced by the published reference code (CPU, float32).

Tolerances are those of tests/fixtures/reference/README.md: transformer output <= 1e-4, final
latents <= 1e-3, video <= 2e-3 before quantisation or <= 2/255 after writing uint8 frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import USER_PROMPT, load_fixture
from PIL import Image
from typer.testing import CliRunner

from cli import app
from droplet3d import models
from droplet3d.checkpoint import resolve_checkpoint
from droplet3d.conditioning import image_to_video
from droplet3d.pipeline import Droplet3DPipeline, full_prompt

CASES = ["expected_9f_64px.npz", "expected_85f_32px.npz"]


@pytest.fixture(scope="module")
def pipe(tiny_ckpt: Path) -> Droplet3DPipeline:
    paths = resolve_checkpoint(tiny_ckpt)
    f32 = torch.float32
    pipeline = Droplet3DPipeline(
        tokenizer=models.load_tokenizer(paths.tokenizer),
        text_encoder=models.load_text_encoder(paths.text_encoder, f32),
        vae=models.load_diffusers_model("vae", paths.vae, f32),
        transformer=models.load_diffusers_model("transformer", paths.transformer, f32),
        scheduler=models.load_scheduler(paths.scheduler),
    )
    pipeline.to("cpu")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _config(ref: dict) -> tuple[int, int, int, int, float, float]:
    frames, size, steps, seed, guidance, noise_aug = ref["config"]
    return int(frames), int(size), int(steps), int(seed), float(guidance), float(noise_aug)


@pytest.mark.parametrize("case", CASES)
def test_prompt_and_conditioning_match_reference(
    pipe: Droplet3DPipeline, reference_dir: Path, case: str
) -> None:
    ref = load_fixture(case)
    frames, size, *_ = _config(ref)
    assert full_prompt(USER_PROMPT) == str(ref["prompt"])
    ids, dropped = pipe.tokenize([str(ref["prompt"])])
    np.testing.assert_array_equal(ids.numpy(), ref["prompt_ids"])
    assert dropped == [""]
    video, mask = image_to_video(Image.open(reference_dir / "ref_image.png"), frames, size, size)
    np.testing.assert_allclose(video.numpy(), ref["input_video"], atol=1e-6)
    np.testing.assert_array_equal(mask.numpy(), ref["input_mask"])


@pytest.mark.parametrize("case", CASES)
def test_transformer_call_and_final_latents_match_reference(
    pipe: Droplet3DPipeline, reference_dir: Path, case: str
) -> None:
    ref = load_fixture(case)
    frames, size, steps, seed, guidance, noise_aug = _config(ref)
    ids, _ = pipe.tokenize([str(ref["prompt"]), str(ref["negative_prompt"])])
    embeds = pipe.encode_text(ids)
    video, mask = image_to_video(Image.open(reference_dir / "ref_image.png"), frames, size, size)
    first_call: dict[str, torch.Tensor] = {}

    def keep_first(step: int, timestep: int, tensors: dict[str, torch.Tensor]) -> None:
        if step == 0:
            first_call.update({k: v.clone() for k, v in tensors.items()})

    out = pipe(
        embeds[:1],
        embeds[1:],
        video,
        mask,
        num_inference_steps=steps,
        guidance_scale=guidance,
        noise_aug_strength=noise_aug,
        generator=torch.Generator().manual_seed(seed),
        callback=keep_first,
    )
    for ours, theirs in [
        ("hidden_states", "tr_hidden_states"),
        ("encoder_hidden_states", "tr_encoder_hidden_states"),
        ("timestep", "tr_timestep"),
        ("inpaint_latents", "tr_inpaint_latents"),
    ]:
        np.testing.assert_allclose(first_call[ours].float().numpy(), ref[theirs], atol=1e-5, err_msg=ours)
    assert np.abs(first_call["output"].numpy() - ref["tr_output"]).max() <= 1e-4
    assert np.abs(out.latents.numpy() - ref["final_latents"]).max() <= 1e-3
    # The decoded video, surplus frames included, is what the reference returns.
    assert out.frames.shape == ref["video"].shape
    assert np.abs(out.frames.numpy() - ref["video"]).max() <= 2e-3
    assert out.surplus_frames == ref["video"].shape[2] - frames


@pytest.mark.parametrize("case", CASES)
def test_cli_frames_match_reference(tiny_ckpt: Path, reference_dir: Path, tmp_path: Path, case: str) -> None:
    """`droplet3d generate` writes exactly --frames lossless frames: the reference video minus its surplus."""
    ref = load_fixture(case)
    frames, size, steps, seed, guidance, noise_aug = _config(ref)
    out = tmp_path / "video"
    args = [
        "generate",
        "--ckpt",
        str(tiny_ckpt),
        "--image",
        str(reference_dir / "ref_image.png"),
        "--prompt",
        USER_PROMPT,
        "--out",
        str(out),
        "--frames",
        str(frames),
        "--height",
        str(size),
        "--width",
        str(size),
        "--steps",
        str(steps),
        "--seed",
        str(seed),
        "--guidance-scale",
        str(guidance),
        "--noise-aug-strength",
        str(noise_aug),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = sorted((out / "frames").glob("*.png"))
    assert len(written) == frames
    ours = np.stack([np.asarray(Image.open(p)) for p in written]).astype(np.float64) / 255  # [F, H, W, 3]
    surplus = ref["video"].shape[2] - frames
    theirs = ref["video"][0, :, surplus:].transpose(1, 2, 3, 0)
    assert np.abs(ours - theirs).max() <= 2 / 255
    record = __import__("json").loads((out / "generation.json").read_text())
    assert record["frames_dropped"] == surplus
    assert record["prompt"] == str(ref["prompt"])
    assert (out / "orbit.mp4").stat().st_size > 0
