"""Build tiny random-weight checkpoints in the exact Droplet3D-5B layout.

The released folder cannot be downloaded in tests, so we write one with the same file names,
config keys, block names and (for the text encoder) sharded safetensors with an index, and let the
real loading code read it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel

from droplet3d.transformer import Droplet3DTransformer3DModel

FIXTURES = Path(__file__).parent / "fixtures" / "reference"

TRANSFORMER_CONFIG = {
    "_class_name": "Droplet3DTransformer3DModel",
    "activation_fn": "gelu-approximate",
    "add_noise_in_inpaint_model": True,
    "attention_bias": True,
    "attention_head_dim": 8,
    "dropout": 0.0,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 33,
    "max_text_seq_length": 226,
    "norm_elementwise_affine": True,
    "norm_eps": 1e-05,
    "num_attention_heads": 2,
    "num_layers": 2,
    "out_channels": 16,
    "patch_size": 2,
    "sample_frames": 85,
    "sample_height": 32,
    "sample_width": 32,
    "spatial_interpolation_scale": 1.875,
    "temporal_compression_ratio": 4,
    "temporal_interpolation_scale": 1.0,
    "text_embed_dim": 32,
    "time_embed_dim": 16,
    "timestep_activation_fn": "silu",
    "use_rotary_positional_embeddings": False,
}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def build_tiny_checkpoint(root: Path, seed: int = 0, shard_text_encoder: bool = True) -> Path:
    """Write a random-weight `Droplet3D-5B/`-layout folder at `root` and return it.

    The transformer is random (seeded); the VAE, tokenizer and scheduler are the reference
    fixture's, so the folder exercises every loader including a sharded T5 with an index.
    """
    root = Path(root)
    torch.manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "tiny-droplet3d" / "model_index.json", root / "model_index.json")
    for sub in ("scheduler", "tokenizer", "vae"):
        shutil.copytree(FIXTURES / "tiny-droplet3d" / sub, root / sub, dirs_exist_ok=True)

    transformer = Droplet3DTransformer3DModel.from_config(TRANSFORMER_CONFIG)
    (root / "transformer").mkdir(exist_ok=True)
    _write_json(root / "transformer" / "config.json", TRANSFORMER_CONFIG)
    state = {k: v.contiguous() for k, v in transformer.state_dict().items()}
    save_file(state, str(root / "transformer" / "diffusion_pytorch_model.safetensors"))

    t5_config = T5Config.from_pretrained(FIXTURES / "tiny-droplet3d" / "text_encoder")
    text_encoder = T5EncoderModel(t5_config)
    shard_size = "20KB" if shard_text_encoder else "10GB"
    text_encoder.save_pretrained(root / "text_encoder", max_shard_size=shard_size, safe_serialization=True)
    return root
