"""Load an orbit from a video file, a folder of frames, or a `generate` output folder.

Everything becomes one uint8 array [N, H, W, 3] plus whatever orbit metadata the source carries, so
the pose and fitting stages never care where the frames came from.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recon.errors import ReconError

MIN_FRAMES = 8
# Resource limits, checked from file headers before anything is decoded: an orbit is tens to hundreds of
# views of a few hundred pixels, so 1500 frames or 10000x10000 frames are mistakes that would allocate
# many GB (fitting downscales to --resolution anyway).
MAX_FRAMES = 1024
MAX_FRAME_PIXELS = 4096 * 4096
MAX_ORBIT_BYTES = 2 * 1024**3  # decoded uint8 RGBA, all frames together
DECODED_CHANNELS = 4  # frames are decoded as RGBA (alpha is the silhouette when present)
# A video that decodes to fewer frames than duration x fps, by more than this fraction (and at least a
# frame), is truncated. The slack absorbs rounding and variable frame rates; a cut-off download loses far
# more.
TRUNCATION_TOLERANCE = 0.05
# PIL modes whose arrays _to_rgba reads directly. Any other mode is converted by PIL first: to RGBA if it
# carries alpha (LA, PA, palette transparency), else to RGB, so CMYK is never mistaken for RGBA.
ARRAY_MODES = ("L", "RGB", "RGBA", "I", "I;16", "F")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif", ".m4v")


@dataclass
class OrbitFrames:
    """Frames of one orbit, in orbit order."""

    frames: np.ndarray  # [N, H, W, 3] uint8 (RGBA frames composited over white)
    source: str  # "video", "folder" or "generate"
    orbit_hints: dict[str, Any] = field(default_factory=dict)  # orbit values recorded by the source
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. generation.json, untouched
    alpha: np.ndarray | None = None  # [N, H, W] uint8 when the frames had alpha: the object's silhouettes

    @property
    def count(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])


def _to_rgba(image: np.ndarray, name: str) -> np.ndarray:
    """uint8 RGBA [H, W, 4] of any image (opaque where it had no alpha)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.integer) and image.max(initial=0) > 255:
            image = (image.astype(np.float64) / 257.0).round()
        elif np.issubdtype(image.dtype, np.floating):
            image = image * 255.0 if image.max(initial=0) <= 1.0 else image
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ReconError(f"{name}: not an RGB image (shape {tuple(image.shape)})")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.shape[-1] == 3:
        image = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, dtype=np.uint8)], axis=-1)
    return np.ascontiguousarray(image)


def split_alpha(rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB frames [N, H, W, 3] composited over white, and alpha [N, H, W] (None when all opaque).

    Alpha is kept because it is the best silhouette there is (the fit uses it instead of guessing the
    background); the composite keeps every later stage working on plain RGB.
    """
    alpha = rgba[..., 3]
    if alpha.min(initial=255) == 255:
        return np.ascontiguousarray(rgba[..., :3]), None
    a = alpha[..., None].astype(np.float32) / 255.0
    rgb = (rgba[..., :3] * a + 255.0 * (1.0 - a)).round().astype(np.uint8)
    return rgb, np.ascontiguousarray(alpha)


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _stack(images: list[np.ndarray], names: list[str], where: str) -> np.ndarray:
    if len(images) < MIN_FRAMES:
        raise ReconError(f"{where}: {len(images)} frame(s), need at least {MIN_FRAMES} for an orbit")
    shape = images[0].shape
    for image, name in zip(images, names, strict=True):
        if image.shape != shape:
            raise ReconError(
                f"{where}: mixed frame sizes ({name} is {image.shape[1]}x{image.shape[0]}, "
                f"{names[0]} is {shape[1]}x{shape[0]})"
            )
    return np.stack(images)


def check_resources(count: int, width: int, height: int, where: str) -> None:
    """Refuse an orbit too large to decode, from its header figures (before any frame is decoded)."""
    if count > MAX_FRAMES:
        raise ReconError(f"{where}: {count} frames; at most {MAX_FRAMES} are supported")
    if width * height > MAX_FRAME_PIXELS:
        raise ReconError(
            f"{where}: frames of {width}x{height} are too large (at most {MAX_FRAME_PIXELS / 1e6:.0f} Mpx "
            "each); downscale them first"
        )
    if count * width * height * DECODED_CHANNELS > MAX_ORBIT_BYTES:
        raise ReconError(
            f"{where}: {count} frames of {width}x{height} need more than {MAX_ORBIT_BYTES / 1024**3:.0f} GB "
            "decoded; use fewer or smaller frames"
        )


def _container_frames(meta: dict[str, Any]) -> int | None:
    """The frame count the container declares (duration x fps), or None when it does not say.

    With an audio stream the container's duration may be the audio's, so it proves nothing then.
    """
    if meta.get("audio_codec"):
        return None
    duration, fps = meta.get("duration"), meta.get("fps")
    numbers = isinstance(duration, (int, float)) and isinstance(fps, (int, float))
    if numbers and np.isfinite(duration) and np.isfinite(fps) and duration > 0 and fps > 0:
        return round(duration * fps)
    return None


def read_video(path: Path) -> np.ndarray:
    """All frames of a video file, [N, H, W, 4] uint8 RGBA.

    The container's size and duration are checked before decoding, and a video that decodes to fewer
    frames than its container declares is truncated: posing the rest as a full orbit would be wrong.
    """
    import imageio.v3 as iio

    declared = None
    try:
        meta = iio.immeta(path)
        size = meta.get("size")
        declared = _container_frames(meta)
        if isinstance(size, (tuple, list)) and len(size) == 2:
            check_resources(declared or 0, int(size[0]), int(size[1]), str(path))
        images = []
        for frame in iio.imiter(path):  # the header may not tell (no duration): count while decoding
            if len(images) == MAX_FRAMES:
                raise ReconError(f"{path}: more than {MAX_FRAMES} frames; at most {MAX_FRAMES} are supported")
            images.append(_to_rgba(frame, str(path)))
            check_resources(len(images), images[-1].shape[1], images[-1].shape[0], str(path))
    except ReconError:
        raise
    except Exception as exc:  # imageio raises many kinds of errors for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReconError(f"cannot read video {path}: {first}") from exc
    if declared is not None and len(images) < declared - max(1, TRUNCATION_TOLERANCE * declared):
        raise ReconError(
            f"{path} is truncated: its container declares {declared} frames but only {len(images)} decode; "
            "re-export or re-download the video"
        )
    return _stack(images, [f"frame {i}" for i in range(len(images))], str(path))


def is_hidden(path: Path) -> bool:
    """Dotfiles, including macOS's `._name` resource forks, are never frames."""
    return path.name.startswith(".")


def _decode_image(path: Path) -> np.ndarray:
    """One frame as an array _to_rgba understands (CMYK, LA, palette... converted; alpha kept)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ARRAY_MODES:
            return np.asarray(image)
        has_alpha = "A" in image.mode or "transparency" in image.info
        return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))


def _frame_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is lower
        with Image.open(path) as image:
            return image.size


def read_folder(folder: Path) -> np.ndarray:
    """The images of a folder in natural name order (00002 before 00010), [N, H, W, 3] uint8.

    Hidden files are skipped; every header is read (sizes, resource limits) before any pixel is decoded.
    """
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(p)),
        key=_natural_key,
    )
    if not files:
        raise ReconError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    if len(files) > MAX_FRAMES:
        raise ReconError(f"{folder}: {len(files)} frames; at most {MAX_FRAMES} are supported")
    sizes = []
    for f in files:
        try:
            sizes.append(_frame_size(f))
        except Exception as exc:  # PIL raises many kinds of errors for bad files, bombs included
            raise ReconError(f"cannot read image {f}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    largest = max(sizes, key=lambda wh: wh[0] * wh[1])
    check_resources(len(files), largest[0], largest[1], str(folder))
    images = []
    for f in files:
        try:
            images.append(_to_rgba(_decode_image(f), f.name))
        except ReconError:
            raise
        except Exception as exc:
            raise ReconError(f"cannot read image {f}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    return _stack(images, [f.name for f in files], str(folder))


def orbit_hints_from_generation(meta: dict[str, Any]) -> dict[str, Any]:
    """The orbit values a generation.json records (only known keys; anything else is ignored)."""
    orbit = meta.get("orbit")
    if not isinstance(orbit, dict):
        return {}
    hints: dict[str, Any] = {}
    for key in ("elevation", "radius", "fov", "start_azimuth", "direction", "full_turn"):
        if key in orbit and orbit[key] is not None:
            hints[key] = orbit[key]
    return hints


def load_orbit(path: Path) -> OrbitFrames:
    """Frames + metadata from a video, a folder of frames, or a `generate` output folder."""
    path = Path(path)
    if not path.exists():
        raise ReconError(f"input {path} does not exist")
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ReconError(
                f"input {path} is not a video ({', '.join(VIDEO_SUFFIXES)}) or a folder of frames"
            )
        return _orbit(read_video(path), "video")
    generation = path / "generation.json"
    if generation.is_file():
        try:
            meta = json.loads(generation.read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise ReconError(f"cannot read {generation}: {exc}") from exc
        if (path / "frames").is_dir():
            frames = read_folder(path / "frames")
        elif (path / "orbit.mp4").is_file():
            frames = read_video(path / "orbit.mp4")
        else:
            raise ReconError(f"{path}: generation.json but neither frames/ nor orbit.mp4")
        expected = meta.get("frames")
        if isinstance(expected, int) and expected != len(frames):
            raise ReconError(f"{path}: generation.json says {expected} frames, found {len(frames)}")
        return _orbit(frames, "generate", orbit_hints_from_generation(meta), meta)
    if (path / "frames").is_dir() and not any(
        p.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(p) for p in path.iterdir()
    ):
        return _orbit(read_folder(path / "frames"), "folder")
    return _orbit(read_folder(path), "folder")


def _orbit(
    rgba: np.ndarray, source: str, hints: dict[str, Any] | None = None, meta: dict[str, Any] | None = None
) -> OrbitFrames:
    rgb, alpha = split_alpha(rgba)
    return OrbitFrames(rgb, source, hints or {}, meta or {}, alpha)
