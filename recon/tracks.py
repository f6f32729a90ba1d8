"""Point tracks through an orbit video: corners on the object followed from frame to frame.

The orbit estimate (`recon.orbit_estimate`) scores a candidate camera by how well it triangulates these
tracks. Silhouettes alone cannot do it: a turntable seen from one elevation leaves a whole family of
shapes consistent with every silhouette (measured: a 10-degree elevation error changed the visual hull's
silhouette IoU by less than its voxel noise), while a surface point's track is a projected horizontal
circle whose shape fixes the elevation and whose near/far speed ratio fixes the perspective.

Corners are Shi-Tomasi (the smaller eigenvalue of the gradient structure tensor) on the object's
silhouette; each is followed by translational Lucas-Kanade between neighbouring frames on a two-level
pyramid and kept only while the backward track returns to where it started (occlusion at the object's
outline, where the point turns away, fails that check). From the third observation on, that chained
position is only the starting guess: the point is re-measured against the track's *first* patch with an
affine Lucas-Kanade window, whose warp carries over from step to step. Why: the fov is read from
perspective that moves points by tenths of a pixel, and the chained translational steps drifted 0.2 px
per step where the surface turns (measured against ray-cast depth), enough to move the fov estimate by
3-7 degrees at fov 50; anchored and affine, the drift is gone. Tracking runs at up to 256 px (half of
Droplet3D's 512): at 128 px the same tracker still missed fov 50 at elevation 5 by 2.3 degrees.

Tracks also run backward in time (`track(video, backward=True)`), for the bundle adjustment. Why: the
anchored window still lags its point along the motion, by 0.04 px on the first step and 0.1 px after seven
(measured against ray-cast depth; it grows with the window, so it is the surface's curved motion field
averaged over the window, not a convergence problem). A lag along the motion biases the perspective, so
the adjusted focal length came out too long-sighted on 9 of 10 benchmark orbits (fov +0.08 on average);
a backward track lags the other way, and with both the bias cancels (mean fov error -0.02 degree).
No OpenCV: numpy and scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRACK_SIDE = 256  # px: frames are downscaled to this longest side for tracking (see the docstring)
WINDOW = 4  # half-size of the Lucas-Kanade window, px (9 x 9)
LK_ITERATIONS = 6
PYRAMID_LEVELS = 2
MAX_CORNERS = 150  # corners started per start frame
MIN_CORNER_SPACING = 3  # px between corners (non-maximum suppression)
CORNER_QUALITY = 0.05  # a corner's response must reach this share of the frame's best
FORWARD_BACKWARD_PX = 0.3  # a step is kept when tracking back lands this close to the start
# The bundle adjustment's tracks may miss by more (`track_pair`): where a generated video's back changes
# from frame to frame, the strict check ends nearly every track there, and a back the adjustment cannot
# see drifts. Measured on the generated-like benchmark with every degradation on (85 frames, 256 px):
# worst frame / fov error 3.24 / +1.91 degrees at 0.3, 2.12 / +1.37 at 0.5, 1.85 / +0.83 at 0.8, 1.71 /
# +1.27 at 1.2, 2.67 / +2.78 at 2.0. The estimate keeps the strict tracks (its lens comes from them).
FORWARD_BACKWARD_LOOSE_PX = 0.8
MAX_LENGTH = 14  # frames per track (most end earlier, at the outline): a longer arc pins the perspective
START_EVERY = 2  # start new tracks on every this-many-th frame
MIN_LENGTH = 3  # shorter tracks carry no perspective
EDGE_MARGIN = WINDOW  # corners start at least this far (px) inside the silhouette's outline
ANCHORED = True  # later observations re-measured against the track's first patch (affine), no drift
ANCHOR_AGREE_PX = 1.0  # the anchored and the chained position must agree this well, else the track ends


@dataclass
class Tracks:
    """Tracks padded to one length: frame index and pixel position of every observation."""

    frames: np.ndarray  # [T, L] int frame index (-1 = padding)
    uv: np.ndarray  # [T, L, 2] pixel coordinates (x right, y down; pixel centres at +0.5)
    width: int  # size of the images the coordinates refer to
    height: int

    @property
    def valid(self) -> np.ndarray:
        return self.frames >= 0

    def __len__(self) -> int:
        return len(self.frames)

    @staticmethod
    def concat(*parts: Tracks) -> Tracks:
        """The tracks of `parts` (same image size and length) as one set."""
        first = parts[0]
        return Tracks(np.concatenate([t.frames for t in parts]), np.concatenate([t.uv for t in parts]),
                      first.width, first.height)  # fmt: skip

    def starting_every(self, every: int) -> Tracks:
        """The tracks that start on every `every`-th frame (from frame 0)."""
        keep = self.frames[:, 0] % every == 0
        return Tracks(self.frames[keep], self.uv[keep], self.width, self.height)

    def before_seam(self) -> Tracks:
        """The tracks cut where they cross the orbit's seam (from the last frame back to the first), those
        still `MIN_LENGTH` long: exactly the tracks of `track` without `wrap_to`."""
        stepped_back = np.diff(self.frames, axis=1, prepend=self.frames[:, :1]) < 0
        crossed = np.cumsum(stepped_back & self.valid, axis=1) > 0
        frames = np.where(crossed, -1, self.frames)
        uv = np.where(crossed[..., None], np.nan, self.uv)
        keep = (frames >= 0).sum(1) >= MIN_LENGTH
        return Tracks(frames[keep], uv[keep], self.width, self.height)


def _gray(frames: np.ndarray) -> np.ndarray:
    """Luminance [N, H, W] float32 in 0..1, downscaled so the longest side is at most TRACK_SIDE."""
    from recon.fit import resize_frames

    small = resize_frames(frames, TRACK_SIDE).astype(np.float32) / 255.0
    return small @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def corners(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shi-Tomasi corners [k, 2] (x, y pixel centres) of `image` inside `mask`."""
    from scipy import ndimage

    gy, gx = np.gradient(ndimage.gaussian_filter(image, 0.7))
    sxx = ndimage.gaussian_filter(gx * gx, 1.5)
    syy = ndimage.gaussian_filter(gy * gy, 1.5)
    sxy = ndimage.gaussian_filter(gx * gy, 1.5)
    response = 0.5 * (sxx + syy) - np.sqrt(0.25 * (sxx - syy) ** 2 + sxy**2)
    response = np.where(ndimage.binary_erosion(mask, iterations=EDGE_MARGIN), response, 0.0)
    peaks = response == ndimage.maximum_filter(response, size=2 * MIN_CORNER_SPACING + 1)
    peaks &= response > CORNER_QUALITY * max(float(response.max()), 1e-12)
    y, x = np.nonzero(peaks)
    best = np.argsort(-response[y, x])[:MAX_CORNERS]
    return np.stack([x[best] + 0.5, y[best] + 0.5], axis=-1).astype(np.float64)


def _patches(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples [k, 2W+1, 2W+1] of `image` around `points` [k, 2] (pixel-centre coordinates)."""
    from scipy import ndimage

    offsets = np.arange(-WINDOW, WINDOW + 1, dtype=np.float64)
    ys = points[:, 1, None, None] - 0.5 + offsets[None, :, None]
    xs = points[:, 0, None, None] - 0.5 + offsets[None, None, :]
    ys, xs = np.broadcast_arrays(ys, xs)
    return ndimage.map_coordinates(image, [ys.ravel(), xs.ravel()], order=1, mode="nearest").reshape(ys.shape)


def _lk_level(a: np.ndarray, b: np.ndarray, points: np.ndarray, guess: np.ndarray) -> np.ndarray:
    """Translational Lucas-Kanade: where `points` of image `a` moved to in image `b`, from `guess`."""
    template = _patches(a, points)
    gy, gx = np.gradient(template, axis=(1, 2))
    g = np.stack([(gx * gx).sum((1, 2)), (gx * gy).sum((1, 2)), (gy * gy).sum((1, 2))], -1)
    det = g[:, 0] * g[:, 2] - g[:, 1] ** 2
    safe = np.where(np.abs(det) > 1e-9, det, np.inf)
    pos = guess.copy()
    for _ in range(LK_ITERATIONS):
        diff = template - _patches(b, pos)
        bx, by = (gx * diff).sum((1, 2)), (gy * diff).sum((1, 2))
        pos[:, 0] += (g[:, 2] * bx - g[:, 1] * by) / safe
        pos[:, 1] += (g[:, 0] * by - g[:, 1] * bx) / safe
    return pos


def _sample(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Bilinear samples of `image` at pixel-centre coordinates `xs`, `ys` (any shape, the same)."""
    from scipy import ndimage

    return ndimage.map_coordinates(image, [ys.ravel() - 0.5, xs.ravel() - 0.5], order=1,
                                   mode="nearest").reshape(xs.shape)  # fmt: skip


def _lk_affine(
    template: np.ndarray, b: np.ndarray, gradient: tuple[np.ndarray, np.ndarray], guess: np.ndarray,
    warp0: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Affine Lucas-Kanade (forward additive): where the patches `template` [k, 2W+1, 2W+1] lie in image
    `b` (whose (d/dy, d/dx) is `gradient`), from `guess` [k, 2] and the warps `warp0` [k, 4] (A - I).

    A translation-only window is biased where the surface turns: the patch foreshortens over a few
    frames, and over a track's length the chained steps drift (measured on the benchmark's orbits: 0.2 px
    per step, which alone moved the fov estimate by 3-7 degrees at fov 50). The affine warp absorbs the
    foreshortening; anchoring every observation to the first patch stops the drift.
    """
    offsets = np.arange(-WINDOW, WINDOW + 1, dtype=np.float64)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    gby, gbx = gradient
    k = len(guess)
    warp = np.zeros((k, 4)) if warp0 is None else warp0.copy()  # A - I, row-major
    pos = guess.copy()
    for _ in range(LK_ITERATIONS):
        xs = pos[:, 0, None, None] + (1 + warp[:, 0, None, None]) * dx + warp[:, 1, None, None] * dy
        ys = pos[:, 1, None, None] + warp[:, 2, None, None] * dx + (1 + warp[:, 3, None, None]) * dy
        img = _sample(b, xs, ys)
        ix, iy = _sample(gbx, xs, ys), _sample(gby, xs, ys)
        jac = np.stack([ix * dx, ix * dy, iy * dx, iy * dy, ix, iy], -1).reshape(k, -1, 6)
        r = (template - img).reshape(k, -1)
        h = np.einsum("kni,knj->kij", jac, jac) + 1e-6 * np.eye(6)
        step = np.linalg.solve(h, np.einsum("kni,kn->ki", jac, r)[..., None])[..., 0]
        warp += step[:, :4]
        pos = pos + step[:, 4:]
    return pos, warp


def _pyramid(image: np.ndarray) -> list[np.ndarray]:
    from scipy import ndimage

    levels = [image]
    for _ in range(PYRAMID_LEVELS - 1):
        levels.append(ndimage.gaussian_filter(levels[-1], 1.0)[::2, ::2])
    return levels


def follow(a: list[np.ndarray], b: list[np.ndarray], points: np.ndarray) -> np.ndarray:
    """Positions [k, 2] in pyramid `b` of `points` of pyramid `a`, coarse to fine."""
    scale = 2.0 ** (len(a) - 1)
    pos = points / scale
    for level in range(len(a) - 1, -1, -1):
        s = 2.0**level
        pos = _lk_level(a[level], b[level], points / s, pos)
        if level:
            pos = pos * 2.0
    return pos


@dataclass
class TrackingVideo:
    """Frames made ready for tracking once, for both directions: grey levels at the tracking size, the
    silhouettes resized to them, each frame's pyramid and (for the anchored step) its gradient."""

    gray: np.ndarray  # [N, h, w] float32 in 0..1
    silhouettes: np.ndarray  # [N, h, w] bool
    pyramids: list[list[np.ndarray]]
    gradients: list[tuple[np.ndarray, np.ndarray]]

    @classmethod
    def of(cls, frames: np.ndarray, masks: np.ndarray) -> TrackingVideo:
        """`frames` [N, H, W, 3] uint8 with silhouettes `masks` [N, h, w] at any resolution."""
        from scipy import ndimage

        gray = _gray(frames)
        zoom = (gray.shape[1] / masks.shape[1], gray.shape[2] / masks.shape[2])
        silhouettes = np.stack([ndimage.zoom(m.astype(np.float32), zoom, order=1) > 0.5 for m in masks])
        gradients = [tuple(np.gradient(g)) for g in gray] if ANCHORED else []
        return cls(gray, silhouettes, [_pyramid(g) for g in gray], gradients)


def track(
    video: TrackingVideo, wrap_to: int | None = None, start_every: int = START_EVERY, backward: bool = False
) -> Tracks:
    """Tracks of corners on the object through `video` with the strict forward-backward check
    (`track_pair`'s first set; the arguments are its)."""
    return track_pair(video, wrap_to, start_every, backward)[0]


def track_pair(
    video: TrackingVideo, wrap_to: int | None = None, start_every: int = START_EVERY, backward: bool = False,
    loose_px: float = FORWARD_BACKWARD_PX,
) -> tuple[Tracks, Tracks]:  # fmt: skip
    """Tracks of corners on the object through `video` (`TrackingVideo.of(frames, masks)`), twice from one
    pass: ended at the first step whose forward-backward error passes `FORWARD_BACKWARD_PX`, and ended
    only past `loose_px` (the same positions, kept longer; see `FORWARD_BACKWARD_LOOSE_PX`).

    With `wrap_to`, a track that reaches the last frame goes on into frame `wrap_to` and after (0 for an
    open orbit, whose first frame follows its last; 1 for a full turn, whose last frame repeats the
    first): such tracks link the end of the orbit to its start, which the bundle adjustment
    (`recon.bundle`) needs. New tracks start on every `start_every`-th frame. With `backward`, the video
    is tracked from its last frame to its first, as if reversed (a backward track's frame indices, the
    video's own, descend; `wrap_to` counts from the end: 0 links the first frame to the last).
    """
    gray, silhouettes, pyramids, gradients = video.gray, video.silhouettes, video.pyramids, video.gradients
    n, h, w = gray.shape

    def frame_at(position: int) -> int:
        """The video's frame at `position` in tracking order."""
        return n - 1 - position if backward else position

    strict_rows: list[tuple[np.ndarray, np.ndarray]] = []  # (frames, uv) of each start frame's tracks
    loose_rows: list[tuple[np.ndarray, np.ndarray]] = []
    for start_position in range(0, n - 1, start_every):
        start = frame_at(start_position)
        pts = corners(gray[start], silhouettes[start])
        if len(pts) == 0:
            continue
        uv = np.full((len(pts), MAX_LENGTH, 2), np.nan)
        idx = np.full((len(pts), MAX_LENGTH), -1)
        uv[:, 0], idx[:, 0] = pts, start
        strict_idx = idx.copy()
        alive = np.ones(len(pts), dtype=bool)
        strict = np.ones(len(pts), dtype=bool)  # no step so far missed by more than FORWARD_BACKWARD_PX
        warps = np.zeros((len(pts), 4))
        templates = _patches(gray[start], pts)
        position, frame = start_position, start
        for step in range(1, MAX_LENGTH):
            position += 1
            if position >= n and wrap_to is not None:
                position = wrap_to
            if position >= n or position == start_position or not alive.any():
                break
            before, frame = frame, frame_at(position)
            prev = uv[alive, step - 1]
            nxt = follow(pyramids[before], pyramids[frame], prev)
            back = follow(pyramids[frame], pyramids[before], nxt)
            missed = np.linalg.norm(back - prev, axis=1)
            ok = missed < max(loose_px, FORWARD_BACKWARD_PX)
            xi = np.clip(np.floor(nxt[:, 0]).astype(int), 0, w - 1)
            yi = np.clip(np.floor(nxt[:, 1]).astype(int), 0, h - 1)
            ok &= np.isfinite(nxt).all(1) & silhouettes[frame][yi, xi]
            live = np.flatnonzero(alive)
            if ANCHORED and step > 1:
                anchored, warps[live] = _lk_affine(templates[live], gray[frame], gradients[frame], nxt,
                                                   warps[live])  # fmt: skip
                ok &= np.linalg.norm(anchored - nxt, axis=1) < ANCHOR_AGREE_PX
                nxt = anchored
            uv[live[ok], step], idx[live[ok], step] = nxt[ok], frame
            alive[live[~ok]] = False
            strict[live[~(ok & (missed < FORWARD_BACKWARD_PX))]] = False
            strict_idx[live[ok & strict[live]], step] = frame
        for rows, frames in ((strict_rows, strict_idx), (loose_rows, idx)):
            keep = (frames >= 0).sum(1) >= MIN_LENGTH
            rows.append((frames[keep], np.where((frames >= 0)[..., None], uv, np.nan)[keep]))

    def tracks(rows: list[tuple[np.ndarray, np.ndarray]]) -> Tracks:
        if not rows:
            return Tracks(np.zeros((0, MAX_LENGTH), int), np.zeros((0, MAX_LENGTH, 2)), w, h)
        return Tracks(np.concatenate([f for f, _ in rows]), np.concatenate([u for _, u in rows]), w, h)

    return tracks(strict_rows), tracks(loose_rows)
