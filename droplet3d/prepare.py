"""The user's image, made to look like Droplet3D's input: one object, centred, on a plain background.

The only published input (`panda_input.png`) is a white panda centred on pure black, filling about 85%
of a square frame. The video model was trained on orbits framed that way, so an input that is not (a
transparent product shot whose transparent pixels hold junk RGB, an object small in one corner, a
landscape photo squashed into a square) gives a worse orbit and every later stage inherits it.

`prepare` runs before `conditioning.image_to_video`, in fixed steps, each recorded in
`generation.json`:

1. **alpha**: a transparent image is composited over `--background`;
2. **mask**: the alpha, and with `--remove-background` a segmentation mask (`segment.py`), say where
   the object is; the background is composited away too;
3. **frame**: with a mask (and `--recentre`, the default) the object's box is cropped, scaled so its
   longer side relative to the frame is `--fill`, and centred; otherwise (no mask, or
   `--no-recentre`) the whole image is padded to the frame's aspect. Never stretched either way;
4. **size**: the result is exactly the video's width x height, resampled with PIL's default filter, the
   one the reference's `image_to_video` uses, so an image that already fits passes through unchanged
   (the conformance fixtures are reproduced bit-exactly).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from droplet3d.constants import BACKGROUNDS, DEFAULT_BACKGROUND, DEFAULT_FILL, MAX_FILL, MIN_FILL
from droplet3d.errors import Droplet3DError
from droplet3d.segment import U2NetSegmenter, border_flood_mask, resolve_model_file

# A pixel belongs to the object when its mask is at least this (soft edges count half in, half out).
MASK_THRESHOLD = 0.5
OPAQUE = 255
# A mask covering less than this fraction of the image found no object; more than MAX found no
# background (the object would reach every edge, leaving nothing to remove or recentre).
MIN_MASK_FRACTION = 1e-4
MAX_MASK_FRACTION = 0.995
# PIL's default for Image.resize on RGB images, which the reference's conditioning uses.
RESAMPLE = Image.Resampling.BICUBIC
ALIGNED_LABEL = "view-aligned image"


@dataclass(frozen=True)
class PrepareConfig:
    """How to prepare one image. Defaults reproduce the published example's framing."""

    width: int = 512
    """The video's frame width: the prepared image is exactly this wide."""
    height: int = 512
    """The video's frame height."""
    background: str = DEFAULT_BACKGROUND
    """Colour behind the object (transparent pixels, removed background, padding): a BACKGROUNDS key."""
    remove_background: bool = False
    """Find the object with a segmentation mask and composite the rest away."""
    segmenter: Path | None = None
    """U^2-Net .onnx file or folder for `remove_background`; None uses the border flood fill."""
    recentre: bool = True
    """With a mask: crop to the object, scale it to `fill` and centre it. Off: keep the framing."""
    fill: float = DEFAULT_FILL
    """Object's extent over the frame's, along whichever side is tighter, when recentring."""


@dataclass
class Prepared:
    """A prepared image and the record of how it was made."""

    image: Image.Image
    """RGB, exactly width x height: the pixels that condition the video."""
    record: dict[str, Any] = field(default_factory=dict)
    """Every step: alpha, mask source and coverage, crop box, scale, where the object landed."""


def validate_prepare(config: PrepareConfig) -> None:
    """Cheap checks, before anything loads; a missing model file is named here."""
    if config.background not in BACKGROUNDS:
        raise Droplet3DError(
            f"--background must be one of {', '.join(BACKGROUNDS)}, got {config.background!r}"
        )
    fill = config.fill
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not MIN_FILL <= fill <= MAX_FILL:
        raise Droplet3DError(f"--fill must be between {MIN_FILL} and {MAX_FILL}, got {fill!r}")
    if config.segmenter is not None:
        if not config.remove_background:
            raise Droplet3DError("--segmenter is used by --remove-background; pass both or neither")
        resolve_model_file(config.segmenter)


def load_segmenter(config: PrepareConfig) -> U2NetSegmenter | None:
    """The model `config` names, loaded once (it may prepare the image twice around view alignment)."""
    if config.remove_background and config.segmenter is not None:
        return U2NetSegmenter(config.segmenter)
    return None


def alpha_mask(image: Image.Image) -> np.ndarray | None:
    """The image's alpha in [0, 1], or None when it has none or every pixel is opaque.

    Many PNGs carry an alpha channel that is 255 everywhere: it says nothing about the object, so such
    an image is treated like an RGB one rather than as an object that fills the frame.
    """
    if not image.has_transparency_data:
        return None
    alpha = np.asarray(image.convert("RGBA"))[..., 3]
    if alpha.min() == OPAQUE:
        return None
    return alpha.astype(np.float32) / OPAQUE


def composite(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    """`rgb` [H, W, 3] uint8 over a plain `colour`, weighted by `mask` [H, W] in [0, 1] (straight alpha)."""
    weight = mask[..., None].astype(np.float32)
    mixed = rgb.astype(np.float32) * weight + np.asarray(colour, np.float32) * (1 - weight)
    return Image.fromarray(np.clip(np.round(mixed), 0, 255).astype(np.uint8), mode="RGB")


def object_box(binary: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the True pixels, right/bottom exclusive (PIL's crop box)."""
    rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def pad_to_aspect(image: Image.Image, width: int, height: int, colour: tuple[int, int, int]) -> Image.Image:
    """Centre `image` on a canvas of the width:height aspect (only one side grows), never resizing it."""
    w, h = image.size
    if w * height > h * width:
        canvas_size = (w, max(h, round(w * height / width)))
    else:
        canvas_size = (max(w, round(h * width / height)), h)
    if canvas_size == (w, h):
        return image
    canvas = Image.new("RGB", canvas_size, colour)
    canvas.paste(image, ((canvas_size[0] - w) // 2, (canvas_size[1] - h) // 2))
    return canvas


def _find_mask(
    image: Image.Image, config: PrepareConfig, segmenter: U2NetSegmenter | None, record: dict[str, Any]
) -> tuple[Image.Image, np.ndarray | None]:
    """Steps 1-2: the image composited over the background, and the object mask (None: unknown)."""
    colour = BACKGROUNDS[config.background]
    rgb = np.asarray(image.convert("RGB"))
    alpha = alpha_mask(image)
    if image.has_transparency_data:
        record["alpha"] = "opaque everywhere, ignored" if alpha is None else "composited"
    else:
        record["alpha"] = "none"
    mask, sources = alpha, (["alpha"] if alpha is not None else [])
    flat = composite(rgb, alpha, colour) if alpha is not None else Image.fromarray(rgb, mode="RGB")
    if config.remove_background:
        if segmenter is not None:
            found = segmenter.predict(flat)
            sources.append("segmenter")
            record["segmenter"] = asdict(segmenter.info)
        else:
            found, fill = border_flood_mask(flat)
            sources.append("border_fill")
            record["border_fill"] = asdict(fill)
        mask = found if mask is None else mask * found
        flat = composite(rgb, mask, colour)
    record["mask_source"] = "+".join(sources) or "none"
    return flat, mask


def _check_coverage(binary: np.ndarray, source: str, label: str) -> float:
    fraction = float(binary.mean())
    if fraction < MIN_MASK_FRACTION:
        raise Droplet3DError(f"the {label}'s {source} mask is empty: no object found in it")
    if fraction > MAX_MASK_FRACTION:
        raise Droplet3DError(
            f"the {label}'s {source} mask covers {fraction:.1%} of it: no background found to remove"
        )
    return fraction


def prepare(
    image: Image.Image,
    config: PrepareConfig,
    segmenter: U2NetSegmenter | None = None,
    label: str = "image",
) -> Prepared:
    """Prepare `image` (any PIL mode; alpha is honoured) as the video's conditioning frame.

    `segmenter` is `load_segmenter(config)`'s model (None: the border flood fill, when
    `remove_background`). `label` names the image in errors. Raises Droplet3DError when a mask is empty
    or covers the whole image.
    """
    validate_prepare(config)
    width, height = config.width, config.height
    colour = BACKGROUNDS[config.background]
    record: dict[str, Any] = {
        "source_size": list(image.size),
        "source_mode": image.mode,
        "background": config.background,
        "background_rgb": list(colour),
    }
    flat, mask = _find_mask(image, config, segmenter, record)
    binary = mask >= MASK_THRESHOLD if mask is not None else None
    if binary is not None:
        record["mask_fraction"] = round(_check_coverage(binary, record["mask_source"], label), 6)

    if binary is not None and config.recentre:
        box = object_box(binary)
        box_w, box_h = box[2] - box[0], box[3] - box[1]
        scale = config.fill * min(width / box_w, height / box_h)
        size = (max(1, round(box_w * scale)), max(1, round(box_h * scale)))
        offset = ((width - size[0]) // 2, (height - size[1]) // 2)
        out = Image.new("RGB", (width, height), colour)
        out.paste(flat.crop(box).resize(size, RESAMPLE), offset)
        record.update(recentred=True, fill=config.fill)
    else:
        # The whole image is kept (there is no object box to go by, or the user wants their framing):
        # padded to the frame's aspect, then resized exactly as the reference's conditioning resizes.
        box = (0, 0, *image.size)
        padded = pad_to_aspect(flat, width, height, colour)
        scale = min(width / padded.width, height / padded.height)
        pad = ((padded.width - image.width) // 2, (padded.height - image.height) // 2)
        size = (round(image.width * scale), round(image.height * scale))
        offset = (round(pad[0] * scale), round(pad[1] * scale))
        out = padded.resize((width, height), RESAMPLE)
        record.update(recentred=False, padded_size=list(padded.size))
        if config.recentre:
            record["not_recentred_because"] = (
                "no mask: the image has no transparency and no --remove-background"
            )
    record.update(
        crop_box=list(box),
        scale=round(scale, 6),
        placed_box=[offset[0], offset[1], offset[0] + size[0], offset[1] + size[1]],
        output_size=[width, height],
    )
    return Prepared(out, record)


def prepare_aligned(
    aligned: Image.Image,
    config: PrepareConfig,
    first: Prepared,
    segmenter: U2NetSegmenter | None = None,
    warn: Callable[[str], None] = print,
) -> Prepared:
    """Prepare FLUX.1-Kontext's output as the input was, so the video sees the same framing either way.

    Kontext may move or rescale the object, and returns RGB without alpha. With `--remove-background`
    the same mask source runs again (a bad mask is an error, as for the input). When the input's object
    was known only from its alpha, Kontext was given it on a plain `--background`, so the border flood
    fill finds it again; if Kontext painted a busy background after all, the aligned image is kept as
    it is (the run is not lost for a step the user did not ask for) and the reason is recorded.
    """
    from_alpha = first.record.get("mask_source") == "alpha"
    if config.remove_background or not from_alpha:
        return prepare(aligned, config, segmenter, label=ALIGNED_LABEL)
    try:
        return prepare(aligned, replace(config, remove_background=True), None, label=ALIGNED_LABEL)
    except Droplet3DError as exc:
        kept = prepare(aligned, config, None, label=ALIGNED_LABEL)
        kept.record["not_recentred_because"] = str(exc)
        warn(f"the {ALIGNED_LABEL} was not recentred: {exc}")
        return kept
