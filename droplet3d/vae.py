"""The CogVideoX causal 3D VAE as Droplet3D uses it.

The released `vae/config.json` names its blocks `Droplet3DDownBlock3D` / `Droplet3DUpBlock3D`;
they are CogVideoX blocks, so we map the names and reuse diffusers' `AutoencoderKLCogVideoX`.
Its decode is bit-identical to the reference. Its encode is not: diffusers now feeds the encoder
8 frames at a time, while the reference (and so the conditioning latents the released weights
were trained on) used the old batching: a first chunk of 4 + (F mod 4) frames, then chunks of 4,
the causal-conv cache carried between chunks. Beyond 9 frames the two differ by up to ~0.3.
"""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderKLCogVideoX

# Block names used by the released config -> the identical diffusers blocks.
_BLOCK_ALIASES = {
    "Droplet3DDownBlock3D": "CogVideoXDownBlock3D",
    "Droplet3DUpBlock3D": "CogVideoXUpBlock3D",
}
KNOWN_BLOCK_TYPES = frozenset(_BLOCK_ALIASES) | frozenset(_BLOCK_ALIASES.values())

# The reference encodes 4 frames per chunk (plus the F mod 4 remainder in the first chunk).
REFERENCE_ENCODE_FRAMES = 4


def normalize_vae_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of a released VAE config with block names diffusers understands."""
    config = dict(config)
    for key in ("down_block_types", "up_block_types"):
        if key in config:
            config[key] = [_BLOCK_ALIASES.get(name, name) for name in config[key]]
    return config


def use_reference_encode_batching(vae: AutoencoderKLCogVideoX) -> AutoencoderKLCogVideoX:
    """Make `vae.encode` batch frames like the reference (4 + F mod 4, then chunks of 4).

    diffusers' `_encode` loop already carries the conv cache between chunks with exactly the
    reference's start/end arithmetic; only its chunk size (8) differs, so we set it to 4.
    """
    vae.num_sample_frames_batch_size = REFERENCE_ENCODE_FRAMES
    return vae
