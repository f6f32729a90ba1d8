"""What lies behind the object in each frame, and which pixels are the object.

Orbits come on black (the published Droplet3D input is a white object on pure black), white, grey or
gradient backgrounds, and some come as RGBA frames. This module turns any of them into

* a per-pixel background image for every frame, which the fit composites its renders over, so the
  splats never have to paint the background, and
* object silhouettes, which carve the visual hull.

How the background is found:

* **alpha**: RGBA frames carry the answer. The silhouette is alpha >= 0.5 and the background is the
  colour the frames were composited over (the median of their fully transparent pixels).
* **border**: otherwise each frame's background is a smooth function of the pixel position (a
  quadratic in x and y per channel: plain colours, vertical or radial gradients) fitted to the pixels of
  a thin band along the frame's border by least squares, twice, the second time without the border
  pixels that the object covers. The border's noise (a robust spread of the residuals) sets how far
  from the background a pixel must be to count as object, so a clean black render and a noisy
  compressed video each get a threshold that suits them.

Silhouettes are the pixels farther than that threshold from the background, with enclosed holes filled.
A part of the object that matches the background colour (a white cap on white) can still be missed in
some views; the visual hull therefore never lets a single view carve (`recon.hull`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

BORDER_FRACTION = 0.03  # width of the border band, as a fraction of the frame's shorter side
MIN_BORDER_PX = 2
OUTLIER_SIGMAS = 4.0  # border pixels this many noise sigmas off the first fit are the object, not background
MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation for gaussian noise
THRESHOLD_SIGMAS = 5.0  # object = farther than this many noise sigmas from the background
MIN_THRESHOLD = 0.02  # about 5/255: an 8-bit render's anti-aliasing and rounding stay below it
MAX_THRESHOLD = 0.12  # very noisy borders must not swallow real object pixels
GRADIENT_RANGE = 4.0 / 255.0  # a background whose model varies more than this across the frame is a gradient
ALPHA_OBJECT = 0.5


@dataclass
class Background:
    """Per-frame background images, object silhouettes, and how they were found."""

    images: np.ndarray  # [N, H, W, 3] float32 in 0..1
    masks: np.ndarray  # [N, H, W] bool, True on the object
    method: str  # "alpha" or "border"
    threshold: float  # colour distance (0..1, max over channels) that counts as object; 0 for alpha
    noise: float  # estimated noise sigma of the border (0..1); 0 for alpha

    @property
    def color(self) -> np.ndarray:
        """The mean background colour [3], for previews and exports that need one colour."""
        # float64: a float32 sum stops growing at 2**24 and 85 frames of 512^2 pass that (0.75 for 0.96).
        return self.images.reshape(-1, 3).mean(axis=0, dtype=np.float64)

    @property
    def gradient(self) -> bool:
        spread = self.images.reshape(len(self.images), -1, 3)
        return bool((spread.max(axis=1) - spread.min(axis=1)).max() > GRADIENT_RANGE)

    def report(self) -> dict[str, Any]:
        """The JSON-able record for report.json."""
        return {
            "method": self.method,
            "color": [round(float(v), 4) for v in self.color],
            "gradient": self.gradient,
            "threshold": round(self.threshold, 4),
            "noise": round(self.noise, 5),
            "object_fraction": round(float(self.masks.mean()), 4),
        }


def _design(height: int, width: int) -> np.ndarray:
    """Quadratic basis [H*W, 6] in coordinates normalised to -1..1 (well conditioned at any size)."""
    y, x = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    return np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=1)


def border_band(height: int, width: int) -> np.ndarray:
    """[H, W] bool: the pixels within the border band."""
    b = max(MIN_BORDER_PX, round(BORDER_FRACTION * min(height, width)))
    band = np.zeros((height, width), dtype=bool)
    band[:b], band[-b:], band[:, :b], band[:, -b:] = True, True, True, True
    return band


def _fit_frame(frame: np.ndarray, basis: np.ndarray, band: np.ndarray) -> tuple[np.ndarray, float]:
    """Background image [H, W, 3] of one frame and its border noise sigma."""
    h, w, _ = frame.shape
    pixels = frame.reshape(-1, 3)
    rows = np.flatnonzero(band.reshape(-1))
    keep = rows
    sigma = 0.0
    for _ in range(2):  # fit, drop the border pixels the object covers, fit again
        coef, *_ = np.linalg.lstsq(basis[keep], pixels[keep], rcond=None)
        residual = np.abs(pixels[rows] - basis[rows] @ coef).max(axis=1)
        sigma = MAD_TO_SIGMA * float(np.median(np.abs(residual - np.median(residual))))
        cut = max(OUTLIER_SIGMAS * sigma + float(np.median(residual)), MIN_THRESHOLD)
        keep = rows[residual <= cut]
        if len(keep) < basis.shape[1] * 4:  # the object fills the border: no model to trust
            keep = rows
            break
    image = (basis @ coef).reshape(h, w, 3).clip(0.0, 1.0)
    return image.astype(np.float32), sigma


def from_border(frames: np.ndarray) -> Background:
    """Background and silhouettes of uint8 frames [N, H, W, 3] from their borders (module docstring)."""
    from scipy import ndimage

    n, h, w, _ = frames.shape
    basis, band = _design(h, w), border_band(h, w)
    f = frames.astype(np.float32) / 255.0
    fitted = [_fit_frame(f[i], basis, band) for i in range(n)]
    images = np.stack([image for image, _ in fitted])
    noise = float(np.median([sigma for _, sigma in fitted]))
    threshold = float(np.clip(THRESHOLD_SIGMAS * noise, MIN_THRESHOLD, MAX_THRESHOLD))
    distance = np.abs(f - images).max(axis=-1)
    masks = np.stack([ndimage.binary_fill_holes(m) for m in distance > threshold])
    return Background(images, masks, "border", threshold, noise)


def from_alpha(frames: np.ndarray, alpha: np.ndarray) -> Background:
    """RGBA input: silhouettes from alpha [N, H, W] uint8; frames [N, H, W, 3] are over one colour."""
    n, h, w, _ = frames.shape
    clear = alpha == 0
    pixels = frames[clear] if clear.any() else frames[:, border_band(h, w)]
    color = np.median(pixels.reshape(-1, 3), axis=0).astype(np.float32) / 255.0
    images = np.broadcast_to(color, (n, h, w, 3)).copy()
    return Background(images, alpha.astype(np.float32) / 255.0 >= ALPHA_OBJECT, "alpha", 0.0, 0.0)


def find_background(frames: np.ndarray, alpha: np.ndarray | None = None) -> Background:
    """Alpha when the frames had it, else the border model."""
    return from_border(frames) if alpha is None else from_alpha(frames, alpha)
