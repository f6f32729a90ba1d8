"""Build and load each component of the released checkpoint, strictly and offline.

Weights load onto meta-initialised modules with `assign=True`, so a 5B model is never
materialised twice in memory, and any missing, unexpected or mis-shaped tensor is an error that
names the component (a silent partial load would generate noise).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLCogVideoX, DDIMScheduler
from safetensors.torch import load_file
from torch import nn
from transformers import T5EncoderModel, T5Tokenizer

from droplet3d.errors import Droplet3DError
from droplet3d.release_files import read_json, weight_files
from droplet3d.transformer import Droplet3DTransformer3DModel
from droplet3d.vae import normalize_vae_config, use_reference_encode_batching


def _first_line(exc: BaseException) -> str:
    """Library errors can span many lines; the CLI's contract is one."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def build_transformer(folder: Path) -> Droplet3DTransformer3DModel:
    """The transformer described by `folder/config.json` (random or meta weights)."""
    return Droplet3DTransformer3DModel.from_config(read_json(folder / "config.json"))


def build_vae(folder: Path) -> AutoencoderKLCogVideoX:
    """The VAE described by `folder/config.json`, block names mapped, reference encode batching."""
    vae = AutoencoderKLCogVideoX.from_config(normalize_vae_config(read_json(folder / "config.json")))
    return use_reference_encode_batching(vae)


def _load_strict(model: nn.Module, files: list[Path], component: str, device: str) -> None:
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file), device=device))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise Droplet3DError(f"{component} weights do not match its config: {first[0].strip()}") from exc


def load_diffusers_model(
    kind: str, folder: Path, dtype: torch.dtype, device: str = "cpu"
) -> Droplet3DTransformer3DModel | AutoencoderKLCogVideoX:
    """Load `transformer` or `vae` from a released folder onto `device` in `dtype`."""
    build = {"transformer": build_transformer, "vae": build_vae}[kind]
    try:
        with init_empty_weights():
            model = build(folder)
    except Droplet3DError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a config value of the wrong type
        raise Droplet3DError(
            f"{folder / 'config.json'} does not describe a {kind}: {_first_line(exc)}"
        ) from exc
    _load_strict(model, weight_files(folder, "diffusion_pytorch_model"), kind, device)
    # nn.Module.to, not ModelMixin.to: the latter warns about fp32-kept modules these models do not have.
    return nn.Module.to(model, device=device, dtype=dtype).eval().requires_grad_(False)


def load_text_encoder(folder: Path, dtype: torch.dtype, device: str = "cpu") -> T5EncoderModel:
    try:
        model = T5EncoderModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except (MemoryError, torch.cuda.OutOfMemoryError):
        raise  # not a problem of the folder: the caller turns it into memory advice
    except Exception as exc:  # transformers and huggingface_hub raise many unrelated types for bad configs
        raise Droplet3DError(f"cannot load the T5 text encoder from {folder}: {_first_line(exc)}") from exc
    return model.to(device).eval().requires_grad_(False)


def load_tokenizer(folder: Path) -> T5Tokenizer:
    """The released tokenizer: a SentencePiece `spiece.model`, no `tokenizer.json`.

    transformers 5 converts it with `sentencepiece` and `protobuf`; say so if they are missing.
    """
    try:
        return T5Tokenizer.from_pretrained(folder, local_files_only=True)
    except (ImportError, ValueError, OSError) as exc:
        raise Droplet3DError(
            f"cannot read the tokenizer in {folder} ({exc}); it needs the packages sentencepiece and protobuf"
        ) from exc


def load_scheduler(folder: Path) -> DDIMScheduler:
    """diffusers' DDIMScheduler built from the released (CogVideoXDDIM) config, as the reference does."""
    config = read_json(folder / "scheduler_config.json")
    logger = logging.getLogger("diffusers.configuration_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the CogVideoX-only key `snr_shift_scale` is expected to be unused
    try:
        return DDIMScheduler.from_config(config)
    finally:
        logger.setLevel(level)
