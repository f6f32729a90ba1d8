"""Optional canonical-view alignment: FLUX.1-Kontext-dev plus Droplet3D's LoRA turn the input photo
into the closest front / left / right view before the orbit video is generated.

Droplet3D's video model was trained on orbits that start at a canonical view, so an input taken from
an odd angle gives a worse orbit; the reference (Droplet3D inference.py) therefore optionally
re-renders the input with an image-editing model first. This module reproduces that call and its
defaults exactly, reading everything from the local checkpoint folder:

    Droplet3D-5B/
      FLUX.1-Kontext-dev/                  the diffusers pipeline folder
      pytorch_lora_weights.safetensors     the view-alignment LoRA (diffusers Flux format)

Kontext is a ~12B transformer plus T5-XXL (~24 GB in bfloat16) and the 5B video model is loaded
right after it, so `align_view` frees the whole Kontext pipeline before it returns.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from droplet3d.checkpoint import KONTEXT_DIR, LORA_FILE
from droplet3d.errors import Droplet3DError

if TYPE_CHECKING:
    from diffusers import FluxKontextPipeline

ALIGN_PROMPT = "Convert this image to the closest orthogonal view, such as front, left, or right."
OFFLOAD_MODES = ("none", "model", "sequential")


@dataclass
class AlignConfig:
    """Parameters of one alignment run. Defaults are the reference's (Droplet3D inference.py).

    `height`/`width` are the video's size: the aligned image is resized to it at the end, and
    Kontext generates at that aspect ratio with about `max_area` pixels (FluxKontextPipeline always
    rescales the requested size to `max_area`). `auto_resize` lets Kontext snap the *input* image to
    its nearest trained resolution (~1 MP); turn it off only to keep tiny test images tiny.
    """

    prompt: str = ALIGN_PROMPT
    guidance_scale: float = 2.5
    seed: int = 42
    num_inference_steps: int = 28  # FluxKontextPipeline's default; the reference does not set it
    max_area: int = 1024**2
    auto_resize: bool = True
    height: int = 512
    width: int = 512
    dtype: torch.dtype = torch.bfloat16
    device: str = "cuda"
    offload: str = "none"  # none | model | sequential (only meaningful on CUDA)


def kontext_paths(ckpt_dir: Path) -> tuple[Path, Path]:
    """Return (Kontext folder, LoRA file) under `ckpt_dir`, or raise Droplet3DError naming what is missing.

    Checked up front so a missing download is a one-line error, not a diffusers traceback after
    minutes of loading.
    """
    kontext = Path(ckpt_dir) / KONTEXT_DIR
    lora = Path(ckpt_dir) / LORA_FILE
    if not kontext.is_dir():
        raise Droplet3DError(f"view alignment needs {kontext} (download FLUX.1-Kontext-dev into it)")
    if not (kontext / "model_index.json").is_file():
        raise Droplet3DError(
            f"view alignment needs {kontext / 'model_index.json'}: the Kontext folder is incomplete"
        )
    if not lora.is_file():
        raise Droplet3DError(f"view alignment needs the LoRA file {lora}")
    return kontext, lora


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def _loading_bars(progress: bool) -> Iterator[None]:
    """Silence diffusers' and transformers' loading bars when progress is off, then restore them."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    restore = []
    if not progress:
        for mod in (dlog, tlog):
            if mod.is_progress_bar_enabled():
                mod.disable_progress_bar()
                restore.append(mod)
    try:
        yield
    finally:
        for mod in restore:
            mod.enable_progress_bar()


def _count_lora_layers(pipe: FluxKontextPipeline) -> int:
    """How many layers peft has wrapped: diffusers only warns when no LoRA key matches, so we check."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    modules = [getattr(pipe, name, None) for name in ("transformer", "text_encoder", "text_encoder_2")]
    return sum(
        isinstance(layer, BaseTunerLayer)
        for module in modules
        if isinstance(module, torch.nn.Module)
        for layer in module.modules()
    )


def load_kontext_pipeline(
    ckpt_dir: Path, config: AlignConfig, lora: bool = True, progress: bool = True
) -> FluxKontextPipeline:
    """Load FLUX.1-Kontext-dev from `ckpt_dir`, apply the view-alignment LoRA and place it on the device.

    `lora=False` exists only so tests can show the LoRA changes the output; the CLI always loads it,
    and a missing LoRA file is an error either way. Returns a `FluxKontextPipeline`; the caller owns
    it and must drop every reference to it (see `align_view`) to get the memory back.
    """
    from diffusers import FluxKontextPipeline

    if config.offload not in OFFLOAD_MODES:
        raise Droplet3DError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {config.offload}")
    kontext, lora_file = kontext_paths(ckpt_dir)
    device = torch.device(config.device)

    with _loading_bars(progress):
        try:
            # Load on CPU first: with offload the weights must start there, and (as in the reference)
            # the LoRA's peft layers are injected before anything is moved to the device.
            pipe = FluxKontextPipeline.from_pretrained(kontext, dtype=config.dtype, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise Droplet3DError(f"cannot load {kontext}: {_first_line(exc)}") from exc
        if lora:
            from safetensors import SafetensorError

            try:
                pipe.load_lora_weights(lora_file)
            except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
                raise Droplet3DError(
                    f"cannot load the view-alignment LoRA {lora_file}: {_first_line(exc)}"
                ) from exc
            if _count_lora_layers(pipe) == 0:
                raise Droplet3DError(
                    f"{lora_file} has no weights that match FLUX.1-Kontext (wrong LoRA file?)"
                )

    if device.type == "cuda" and config.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif device.type == "cuda" and config.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=not progress, desc="view align", leave=False)
    return pipe


def run_kontext(pipe: FluxKontextPipeline, image: Image.Image, config: AlignConfig) -> Image.Image:
    """One Kontext edit with the reference's arguments, resized to the video's (width, height)."""
    # A CPU generator, as the reference: the same seed gives the same noise on any device.
    generator = torch.Generator().manual_seed(config.seed)
    with torch.inference_mode():
        out = pipe(
            image=image.convert("RGB"),
            prompt=config.prompt,
            guidance_scale=config.guidance_scale,
            generator=generator,
            height=config.height,
            width=config.width,
            num_inference_steps=config.num_inference_steps,
            max_area=config.max_area,
            _auto_resize=config.auto_resize,
            output_type="pil",
        )
    aligned: Image.Image = out.images[0]
    return aligned.resize((config.width, config.height), Image.Resampling.BICUBIC)


def free_memory(device: str | torch.device) -> None:
    """Collect the dropped pipeline now (peft and offload hooks form reference cycles) and return
    cached CUDA blocks, so the video model can use the memory Kontext held."""
    gc.collect()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def align_view(image: Image.Image, ckpt_dir: Path, config: AlignConfig, progress: bool = True) -> Image.Image:
    """Re-render `image` as the closest canonical (front/left/right) view, at the video's size.

    Loads Kontext + LoRA from `ckpt_dir`, runs once, and frees the pipeline before returning (on
    failure it drops its own reference too; the traceback may hold one until handled). Raises
    Droplet3DError when the Kontext folder or the LoRA file is missing.
    """
    pipe = load_kontext_pipeline(ckpt_dir, config, lora=True, progress=progress)
    try:
        return run_kontext(pipe, image, config)
    finally:
        del pipe
        free_memory(config.device)
