"""Where the object is: a foreground mask for `--remove-background`.

Two sources, both offline:

- **A U^2-Net ONNX model** the user names (`--segmenter PATH`): rembg's `u2net.onnx`, `u2netp.onnx`,
  `silueta.onnx` and the like, run with onnxruntime. We do the pre- and post-processing ourselves, as
  rembg does for this family, so the masks match what those files were trained and released to give:
  resize to the model's square input (320) with Lanczos, scale by the image's own maximum, ImageNet
  mean/std per channel; take the first output's only channel and stretch it to [0, 1] by its min and max.
- **A border flood fill** (no `--segmenter`): the background is the region of pixels connected to the
  image border whose colour is within a tolerance of the border's colour. Deterministic, needs no model,
  and exact on the plain backgrounds of product shots and renders; it refuses a busy border rather than
  guess.

Both return a soft mask in [0, 1], float32, the size of the image (1 = object).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from scipy import ndimage

from droplet3d.errors import Droplet3DError

if TYPE_CHECKING:
    import onnxruntime

# rembg's normalisation for the U^2-Net family: ImageNet statistics at 320x320.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
U2NET_INPUT_SIDE = 320  # used when the model's input size is dynamic
MODEL_SUFFIX = ".onnx"
# Below this the image's maximum is treated as 0 (an all-black image), as rembg guards its division.
MIN_IMAGE_MAX = 1e-6
# A model output whose max - min is below this carries no mask at all (a constant prediction).
MIN_OUTPUT_RANGE = 1e-6

# Border flood fill. The border band is this many pixels wide; the background colour is its median.
BORDER_PX = 2
# At least this fraction of the border band must lie within the tolerance of its median colour, or the
# background is not plain and a flood fill would eat the object or keep the clutter.
MIN_PLAIN_BORDER = 0.9
# Colour tolerance, in 0-255 units of the largest channel difference: at least this much (8-bit
# rounding, a little compression), or a few times the border's own noise when it is grainier.
MIN_TOLERANCE = 6.0
NOISE_TO_TOLERANCE = 4.0
MAX_TOLERANCE = 40.0


@dataclass(frozen=True)
class ModelInfo:
    """What `generation.json` records about the model file that made a mask."""

    path: str
    """The .onnx file, resolved (a folder argument names the file found in it)."""
    sha256: str
    """Of the file's bytes: the same name can hold another model next time."""
    input_side: int
    """The square input side the image was resized to."""


def resolve_model_file(path: Path) -> Path:
    """The .onnx file `path` names: the file itself, or the single .onnx file in a folder.

    rembg keeps its downloads as `~/.u2net/<name>.onnx`, so pointing at that folder works when it holds
    one model; with several the user must choose (we do not guess which one they meant).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() == MODEL_SUFFIX and p.is_file())
        if not found:
            raise Droplet3DError(f"--segmenter folder {path} holds no {MODEL_SUFFIX} file")
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise Droplet3DError(f"--segmenter folder {path} holds several models ({names}); name one")
        return found[0]
    if not path.is_file():
        raise Droplet3DError(f"--segmenter model {path} does not exist")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _onnx_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's own exception classes (they derive from Exception only) plus the usual ones."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "InvalidProtobuf", "InvalidGraph",
             "RuntimeException", "NotImplemented", "EPFail")  # fmt: skip
    found = tuple(getattr(state, name) for name in names if hasattr(state, name))
    return (*found, OSError, RuntimeError, ValueError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class U2NetSegmenter:
    """A U^2-Net-family ONNX model, loaded once, predicting one mask per image on the CPU.

    CPU on purpose: the 176 MB u2net runs in well under a second at 320x320, and keeping it off the GPU
    leaves all of the GPU to the 5B video model that loads next.
    """

    def __init__(self, path: Path) -> None:
        import onnxruntime

        self.path = resolve_model_file(path)
        try:
            self.session: onnxruntime.InferenceSession = onnxruntime.InferenceSession(
                str(self.path), providers=["CPUExecutionProvider"]
            )
        except _onnx_errors() as exc:
            raise Droplet3DError(f"cannot load --segmenter model {self.path}: {_first_line(exc)}") from exc
        self.input_side = self._check_signature()
        self.info = ModelInfo(str(self.path.resolve()), file_sha256(self.path), self.input_side)

    def _check_signature(self) -> int:
        """U^2-Net's shape: one image input [N, 3, S, S], a first output [N, 1, S, S]. Returns S."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 else None
        out_shape = outputs[0].shape if outputs else None
        if shape is None or len(shape) != 4 or shape[1] != 3 or out_shape is None or len(out_shape) != 4:
            raise Droplet3DError(
                f"--segmenter model {self.path} is not a U^2-Net-style model: it takes "
                f"{[i.shape for i in inputs]} and gives {[o.shape for o in outputs][:1]}, expected one "
                "[N, 3, H, W] image and a [N, 1, H, W] mask"
            )
        side = shape[2] if isinstance(shape[2], int) and shape[2] > 0 else U2NET_INPUT_SIDE
        return int(side)

    def _normalise(self, rgb: Image.Image) -> np.ndarray:
        side = self.input_side
        pixels = np.asarray(rgb.resize((side, side), Image.Resampling.LANCZOS), dtype=np.float64)
        pixels = pixels / max(float(pixels.max()), MIN_IMAGE_MAX)
        pixels = (pixels - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
        return pixels.transpose(2, 0, 1)[None].astype(np.float32)  # [1, 3, S, S]

    def predict(self, image: Image.Image) -> np.ndarray:
        """The soft mask [H, W] in [0, 1] for an RGB image."""
        rgb = image.convert("RGB")
        feed = {self.session.get_inputs()[0].name: self._normalise(rgb)}
        try:
            outputs = self.session.run(None, feed)
        except _onnx_errors() as exc:
            raise Droplet3DError(f"--segmenter model {self.path} failed to run: {_first_line(exc)}") from exc
        pred = np.asarray(outputs[0], dtype=np.float64)
        if pred.ndim != 4 or pred.shape[1] < 1:
            raise Droplet3DError(f"--segmenter model {self.path} gave an output of shape {pred.shape}")
        pred = pred[0, 0]
        low, high = float(pred.min()), float(pred.max())
        if not np.isfinite([low, high]).all() or high - low < MIN_OUTPUT_RANGE:
            raise Droplet3DError(
                f"--segmenter model {self.path} predicted a constant mask: it found no object to separate"
            )
        stretched = ((pred - low) / (high - low) * 255).astype(np.uint8)
        mask = Image.fromarray(stretched, mode="L").resize(rgb.size, Image.Resampling.LANCZOS)
        return np.asarray(mask, dtype=np.float32) / 255


@dataclass(frozen=True)
class BorderFill:
    """What `generation.json` records about a flood-fill mask."""

    background_rgb: tuple[int, int, int]
    """The border's median colour: what was taken away."""
    tolerance: float
    """Largest per-channel difference (0-255) still counted as background."""


def border_band(pixels: np.ndarray, width: int = BORDER_PX) -> np.ndarray:
    """The pixels of the outer `width`-pixel frame of an [H, W, C] image, as [n, C]."""
    edge = np.zeros(pixels.shape[:2], dtype=bool)
    edge[:width], edge[-width:], edge[:, :width], edge[:, -width:] = True, True, True, True
    return pixels[edge]


def border_flood_mask(image: Image.Image) -> tuple[np.ndarray, BorderFill]:
    """Foreground mask [H, W] in {0, 1} of an object on a plain background, and how it was found.

    The background is every pixel close in colour to the border's median *and* connected to the border
    through such pixels (4-connectivity). Colour distance alone would also remove the object's own
    parts that happen to match the background (a white cap on white, a dark ear on black) when they
    lie inside the silhouette; connectivity keeps them. Raises Droplet3DError when the border is busy.
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    band = border_band(pixels)
    colour = np.median(band, axis=0)
    band_distance = np.abs(band - colour).max(axis=1)
    noise = float(np.median(band_distance))
    tolerance = float(np.clip(NOISE_TO_TOLERANCE * noise, MIN_TOLERANCE, MAX_TOLERANCE))
    plain = float((band_distance <= tolerance).mean())
    if plain < MIN_PLAIN_BORDER:
        raise Droplet3DError(
            f"the image's background is not plain (only {plain:.0%} of its border is one colour), so the "
            "flood fill cannot separate the object; pass --segmenter with a U^2-Net .onnx model"
        )
    similar = np.abs(pixels - colour).max(axis=2) <= tolerance
    labels, _count = ndimage.label(similar)
    touching = np.unique(border_band(labels[..., None])[:, 0])
    background = np.isin(labels, touching[touching > 0])
    rgb = tuple(int(round(c)) for c in colour)
    return (~background).astype(np.float32), BorderFill(rgb, round(tolerance, 2))  # type: ignore[arg-type]
