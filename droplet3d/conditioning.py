"""First-frame conditioning: the image as frame 0 of an inpainting video, as the reference builds it.

The transformer sees, beside the noisy latents, 17 extra channels per latent frame: one mask
channel (1 where the frame is given) and the 16-channel VAE latents of the "masked video" (the
image on frame 0, -1 everywhere else).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def image_to_video(
    image: Image.Image, frames: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile the resized image over `frames` frames.

    Returns (video [1, 3, F, H, W] in [0, 1], mask [1, 1, F, H, W] with 0 on frame 0 and 255 after),
    the reference's `get_image_to_video_latent` for a single start image (PIL's default resampling).
    """
    pixels = np.asarray(image.convert("RGB").resize([width, height]))  # [H, W, 3] uint8
    frame = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None, :, None]  # [1, 3, 1, H, W]
    video = torch.tile(frame, [1, 1, frames, 1, 1]) / 255
    mask = torch.zeros_like(video[:, :1])
    mask[:, :, 1:] = 255
    return video, mask


def masked_video(video: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise and mask the conditioning video.

    video [B, 3, F, H, W] in [0, 1], mask [B, 1, F, H, W] in {0, 255}. Returns (masked video in
    [-1, 1] with -1 where the mask is set, binarised mask in {0, 1}).
    """
    mask01 = (mask >= 0.5).to(torch.float32)
    video = video.to(torch.float32) * 2 - 1
    keep = mask01 < 0.5
    return video * keep + (-1.0) * (~keep), mask01


def add_noise_augmentation(
    video: torch.Tensor, strength: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Add N(0, strength^2) noise to the given pixels (not to the -1 "unknown" pixels).

    The reference draws this noise from torch's global RNG, so its runs cannot be repeated; we draw
    it from the run's seeded generator, after the initial latent noise so that the latter stays
    identical to the reference's for the same seed.
    """
    noise = torch.randn(video.shape, generator=generator, device=video.device, dtype=video.dtype) * strength
    return video + torch.where(video == -1, torch.zeros_like(video), noise)


def resize_mask(mask: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """Trilinearly resize mask [B, 1, F, H, W] to the latent grid [.., F_lat, h, w].

    The first frame is resized on its own (it maps to the first latent frame of the causal VAE) and
    the remaining frames to the remaining latent frames, as the reference does.
    """
    frames, height, width = latent_shape[-3:]
    first = F.interpolate(mask[:, :, :1], size=(1, height, width), mode="trilinear", align_corners=False)
    if frames == 1:
        return first
    rest = F.interpolate(
        mask[:, :, 1:], size=(frames - 1, height, width), mode="trilinear", align_corners=False
    )
    return torch.cat([first, rest], dim=2)
