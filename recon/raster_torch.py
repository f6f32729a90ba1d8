"""A differentiable pure-PyTorch Gaussian-splat rasteriser with gsplat's maths, for CPUs.

gsplat's pixel rasteriser only exists as CUDA kernels. This module reproduces the same forward maths
(gsplat 1.5, 3DGS, PINHOLE, dense/non-packed) with ordinary tensor ops so the same training loop runs on
a CPU at small image sizes, and autograd supplies the backward pass:

* projection: world -> camera with the OpenCV viewmat, EWA 2D covariance ``J W Sigma W^T J^T`` with the
  Jacobian evaluated at the mean clamped to 1.3x the image's tangent extent, + 0.3 px^2 on the
  diagonal (no antialiasing compensation), conic = inverse covariance;
* culling: depth outside (near, far), det <= 0, opacity < 1/255, or a bounding box (radius
  ``ceil(min(3.33, sqrt(2 ln(255 opacity))) * sqrt(diag))``) outside the image;
* per pixel (centre at +0.5), depth-sorted front to back: ``sigma = 0.5 d^T conic d``,
  ``alpha = min(0.999, opacity * exp(-sigma))``, skipped when ``sigma < 0`` or ``alpha < 1/255``,
  stopping before the gaussian that would take the transmittance to 1e-4 or below;
* colour = sum(w_i c_i) + T_final * background, with SH colours ``max(SH(dir) + 0.5, 0)``.

Speed comes from vectorising and from skipping what does not count: pixels are grouped in 8x8 tiles,
each tile gathers (padded) the depth-sorted gaussians whose bounding boxes touch it, one batched matmul
per chunk of tiles finds the (pixel, gaussian) pairs whose alpha reaches 1/255 before the pixel's stop
(about one in six at 128 px), and only those pairs are composited, with autograd, as per-pixel runs:
prefix sums of ``log(1 - alpha)`` and a weighted sum. Renders that need no gradient composite every
pair of a chunk densely instead, which is faster when nothing is kept for a backward pass. Chunks keep
memory bounded.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
ALPHA_MAX = 0.999  # gsplat 1.5's clamp (the original 3DGS code used 0.99)
T_STOP = 1e-4
LOG_T_STOP = math.log(T_STOP)
MAX_PADDING = 2  # a chunk's tiles hold at least 1/MAX_PADDING of its longest list (the rest is padding)
Q_MAX = 16.0  # exp(-16) = 1e-7: far under ALPHA_THRESHOLD even at opacity 1
LOG_INV_THRESHOLD = math.log(1.0 / ALPHA_THRESHOLD)  # alpha >= 1/255 <=> sigma - log(opacity) <= this

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
SH_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)  # fmt: skip


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """Real spherical harmonics (the 3DGS / gsplat basis) up to `degree`.

    coeffs [..., K, 3] with K >= (degree + 1)^2, dirs [..., 3] (any length) -> [..., 3].
    """
    result = SH_C0 * coeffs[..., 0, :]
    if degree < 1:
        return result
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    result = (
        result - SH_C1 * y * coeffs[..., 1, :] + SH_C1 * z * coeffs[..., 2, :] - SH_C1 * x * coeffs[..., 3, :]
    )
    if degree < 2:
        return result
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    result = (
        result
        + SH_C2[0] * xy * coeffs[..., 4, :]
        + SH_C2[1] * yz * coeffs[..., 5, :]
        + SH_C2[2] * (2.0 * zz - xx - yy) * coeffs[..., 6, :]
        + SH_C2[3] * xz * coeffs[..., 7, :]
        + SH_C2[4] * (xx - yy) * coeffs[..., 8, :]
    )
    if degree < 3:
        return result
    return (
        result
        + SH_C3[0] * y * (3.0 * xx - yy) * coeffs[..., 9, :]
        + SH_C3[1] * xy * z * coeffs[..., 10, :]
        + SH_C3[2] * y * (4.0 * zz - xx - yy) * coeffs[..., 11, :]
        + SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * coeffs[..., 12, :]
        + SH_C3[4] * x * (4.0 * zz - xx - yy) * coeffs[..., 13, :]
        + SH_C3[5] * z * (xx - yy) * coeffs[..., 14, :]
        + SH_C3[6] * x * (xx - 3.0 * yy) * coeffs[..., 15, :]
    )


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [N, 3, 3] from (not necessarily unit) quaternions [N, 4] in wxyz order."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)  # fmt: skip


def project(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3] (not log)
    opacities: Tensor,  # [N]
    viewmats: Tensor,  # [C, 4, 4] world-to-camera, OpenCV axes
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """gsplat's fused EWA projection: means2d [C, N, 2], conics [C, N, 3], depths [C, N], radii [C, N, 2]."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]  # [C, 3, 3], [C, 3]
    mean_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    rot = quat_to_rotmat(quats)  # [N, 3, 3]
    M = rot * scales[:, None, :]  # R S
    cov = M @ M.transpose(-1, -2)  # [N, 3, 3]
    cov_c = torch.einsum("cij,njk,clk->cnil", R, cov, R)  # [C, N, 3, 3]

    fx, fy = Ks[:, 0, 0][:, None], Ks[:, 1, 1][:, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2][:, None], Ks[:, 1, 2][:, None]
    x, y, z = mean_c.unbind(-1)  # [C, N]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    rz = 1.0 / z
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    zero = torch.zeros_like(z)
    J = torch.stack([fx * rz, zero, -fx * tx * rz * rz, zero, fy * rz, -fy * ty * rz * rz], dim=-1).reshape(
        *z.shape, 2, 3
    )  # [C, N, 2, 3]
    cov2d = J @ cov_c @ J.transpose(-1, -2)  # [C, N, 2, 2]
    a = cov2d[..., 0, 0] + eps2d
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)  # [C, N, 2]
    safe_det = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / safe_det, -b / safe_det, a / safe_det], dim=-1)  # [C, N, 3]

    with torch.no_grad():
        opac = opacities.detach()[None, :].expand_as(z)
        extend = torch.clamp(
            torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)), max=3.33
        )
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        mx, my = means2d.detach().unbind(-1)
        valid = (
            (z.detach() > near_plane) & (z.detach() < far_plane) & (det.detach() > 0)
            & (opac >= ALPHA_THRESHOLD)
            & ((rx > 0) | (ry > 0))
            & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        )  # fmt: skip
        radii = torch.stack([rx, ry], dim=-1) * valid[..., None]
    return means2d, conics, z, radii.to(torch.int32)


class _Segments:
    """Runs of equal keys in a sorted 1-D key tensor (the pairs of one pixel), for per-run prefix sums."""

    def __init__(self, keys: Tensor) -> None:
        n = len(keys)
        first = torch.ones(n, dtype=torch.bool, device=keys.device)
        first[1:] = keys[1:] != keys[:-1]
        index = torch.arange(n, device=keys.device)
        self.start = torch.where(first, index, torch.zeros_like(index)).cummax(0).values

    def cumsum(self, x: Tensor) -> Tensor:
        """Inclusive prefix sum of `x` within each run. One global sum in float64, minus each run's
        start: float32 would lose the small late terms of a long sum."""
        total = torch.cumsum(x.double(), 0)
        before = total - x.double()
        return (total - before[self.start]).to(x.dtype)

    def later_sum(self, x: Tensor) -> Tensor:
        """Sum of `x` over the later elements of each element's run (exclusive suffix sum), in float64
        for the same reason as `cumsum`."""
        total = torch.cumsum(x.double(), 0)
        n = len(total)
        last = torch.ones(n, dtype=torch.bool, device=x.device)
        last[:-1] = self.start[1:] != self.start[:-1]
        index = torch.arange(n, device=x.device)
        end = torch.where(last, index, torch.full_like(index, n)).flip(0).cummin(0).values.flip(0)
        return (total[end] - total).to(x.dtype)


class _CompositePairs(torch.autograd.Function):
    """Front-to-back compositing of the pairs that count, with gsplat's analytic backward.

    Autograd through the dozen element-wise steps kept every intermediate of every pair and walked back
    through each (60 of a 128 px training step's 140 ms); the backward here is gsplat's
    (`rasterize_to_pixels_bwd`) in vectorised form: the gradient of each pair's alpha needs the weighted
    colour of the pairs behind it in its pixel, an exclusive suffix sum per run (`_Segments.later_sum`).

    Inputs: the gaussians' table [G + 1, 6 + D] (mean 0:2, conic 2:5, log opacity 5, features 6:), and
    per pair the table row, the pixel, and the pixel centre [n, 2]. Outputs: features [n_px, D], log
    transmittance [n_px], and (no gradient) each pair's log transmittance after it, for the median depth.
    """

    @staticmethod
    def forward(ctx, table, gauss, pixel, centre, segments, n_px):  # type: ignore[override]
        rows = table.index_select(0, gauss)  # [n, 6 + D]
        dx, dy = rows[:, 0] - centre[:, 0], rows[:, 1] - centre[:, 1]
        a, b, c = rows[:, 2], rows[:, 3], rows[:, 4]
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        raw = torch.exp(rows[:, 5] - sigma)
        alpha = raw.clamp(max=ALPHA_MAX)
        log1m = torch.log1p(-alpha)
        log_after = segments.cumsum(log1m)
        before = torch.exp(log_after - log1m)  # transmittance in front of each pair
        weights = alpha * before
        D = rows.shape[1] - 6
        feat = rows.new_zeros(n_px, D).index_add_(0, pixel, weights[:, None] * rows[:, 6:])
        log_t = rows.new_zeros(n_px).index_add_(0, pixel, log1m)
        ctx.segments, ctx.table_rows = segments, table.shape[0]
        ctx.save_for_backward(gauss, pixel, rows, dx, dy, raw, alpha, before)
        ctx.mark_non_differentiable(log_after)
        return feat, log_t, log_after

    @staticmethod
    def backward(ctx, grad_feat, grad_log_t, _):  # type: ignore[override]
        gauss, pixel, rows, dx, dy, raw, alpha, before = ctx.saved_tensors
        g = grad_feat.index_select(0, pixel)  # [n, D] dL/d(pixel colour) of each pair's pixel
        color_g = (rows[:, 6:] * g).sum(1)
        weights = alpha * before
        # d colour / d alpha_j = T_j c_j - (sum over the pairs k behind j of w_k c_k) / (1 - alpha_j);
        # d log T / d alpha_j = -1 / (1 - alpha_j).
        behind = ctx.segments.later_sum(weights * color_g)
        d_alpha = before * color_g - (behind + grad_log_t.index_select(0, pixel)) / (1.0 - alpha)
        d_raw = torch.where(raw <= ALPHA_MAX, d_alpha * raw, torch.zeros_like(raw))  # the clamp's gradient
        d_sigma = -d_raw
        a, b, c = rows[:, 2], rows[:, 3], rows[:, 4]
        grad_rows = torch.cat(
            [
                (d_sigma * (a * dx + b * dy))[:, None], (d_sigma * (c * dy + b * dx))[:, None],
                (0.5 * d_sigma * dx * dx)[:, None], (d_sigma * dx * dy)[:, None],
                (0.5 * d_sigma * dy * dy)[:, None], d_raw[:, None], weights[:, None] * g,
            ],
            dim=1,
        )  # fmt: skip
        grad_table = rows.new_zeros(ctx.table_rows, rows.shape[1]).index_add_(0, gauss, grad_rows)
        return grad_table, None, None, None, None, None


def _tile_lists(
    chunk: Tensor,
    counts: Tensor,
    tiles_x: int,
    boxes: tuple[Tensor, Tensor, Tensor, Tensor],
    k_max: int,
    pad: int,
) -> Tensor:
    """[len(chunk), k_max] depth-sorted gaussian ids whose tile boxes touch each tile of `chunk` (padded
    with `pad`); the boxes x0, x1, y0, y1 are in tile units, half-open, over the depth-sorted gaussians."""
    x0, x1, y0, y1 = boxes
    cx, cy = chunk % tiles_x, torch.div(chunk, tiles_x, rounding_mode="floor")
    sub = (
        (cx[:, None] >= x0[None]) & (cx[:, None] < x1[None])
        & (cy[:, None] >= y0[None]) & (cy[:, None] < y1[None])
    )  # fmt: skip  # [t, G]
    row, col = torch.nonzero(sub, as_tuple=True)  # col ascending = front to back per row
    first = torch.cumsum(counts[chunk], 0) - counts[chunk]
    slot = torch.arange(len(row), device=chunk.device) - first[row]
    index = torch.full((len(chunk), k_max), pad, device=chunk.device, dtype=torch.long)
    index[row, slot] = col
    return index


def _composite_dense(
    q: Tensor, feat: Tensor, median_depth: bool, depth_alpha: float
) -> tuple[Tensor, Tensor]:
    """Every pair of a chunk at once, without gradient: q = sigma - log(opacity) [t, P, K] (gaussians front
    to back), features [t, K, D] -> colours [t, P, D] and transmittance [t, P]. With `median_depth` the
    last channel becomes the depth of the gaussian where the alpha first reaches `depth_alpha`."""
    # Past Q_MAX the alpha is far under the threshold; clamping first keeps exp off its slow path for
    # arguments whose result underflows (10x slower per element on x86 CPUs, and most pairs are there).
    alpha = torch.exp(q.clamp_(max=Q_MAX).neg_())
    alpha = torch.where(alpha >= ALPHA_THRESHOLD, alpha.clamp(max=ALPHA_MAX), torch.zeros_like(alpha))
    log1m = torch.log1p(-alpha)
    log_t = torch.cumsum(log1m, dim=-1)
    live = log_t > LOG_T_STOP  # log T only falls along K: the live gaussians are a prefix
    alpha, log1m = alpha * live, log1m * live
    log_t = torch.where(live, log_t, log1m.sum(dim=-1, keepdim=True))  # T stays at its last live value
    out = torch.bmm(alpha * torch.exp(log_t - log1m), feat)
    if median_depth:
        crossed = log_t <= math.log(1.0 - depth_alpha)  # [t, P, K]
        first = torch.argmax(crossed.to(torch.uint8), dim=-1)  # [t, P]
        depth = torch.gather(feat[..., -1], 1, first) * crossed.any(dim=-1)
        out = torch.cat([out[..., :-1], depth[..., None]], dim=-1)
    return out, torch.exp(log_t[..., -1])


def _composite_view(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    features: Tensor,  # [N, D]
    depths: Tensor,  # [N]
    radii: Tensor,  # [N, 2]
    width: int,
    height: int,
    tile_size: int,
    max_pairs: int,
    median_depth: bool = False,
    depth_alpha: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of one view: features [H, W, D] and alpha [H, W, 1].

    With `median_depth`, the last feature channel (the depth) becomes the depth of the gaussian at
    which the accumulated alpha first reaches `depth_alpha` (0.5: the median; 0 where it never does).
    """
    device, dtype = features.device, features.dtype
    D = features.shape[-1]
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles = tiles_x * tiles_y
    out_feat = torch.zeros(n_tiles, tile_size * tile_size, D, device=device, dtype=dtype)
    out_T = torch.ones(n_tiles, tile_size * tile_size, device=device, dtype=dtype)

    # With autograd, only the pairs that count are composited (step 2): far less to keep and walk back
    # through. Without it, compositing every pair of a chunk densely is faster (fewer, simpler passes;
    # 3.5x at 512 px, the bake's renders), so no-gradient renders stay dense.
    differentiable = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, opacities, features)
    )
    pair_gauss: list[Tensor] = []  # the (gaussian, pixel) pairs that count, chunk by chunk
    pair_pixel: list[Tensor] = []
    ids = torch.nonzero((radii > 0).all(dim=-1) | (radii > 0).any(dim=-1)).squeeze(-1)
    if ids.numel() > 0:
        ids = ids[torch.argsort(depths.detach()[ids], stable=True)]  # front to back
        with torch.no_grad():
            m = means2d.detach()[ids]
            r = radii[ids].to(dtype)
            # Tiles touched by each gaussian's box: [x0, x1) x [y0, y1) in tile units, as gsplat's isect.
            x0 = ((m[:, 0] - r[:, 0]) / tile_size).floor().clamp(0, tiles_x)
            x1 = ((m[:, 0] + r[:, 0]) / tile_size).ceil().clamp(0, tiles_x)
            y0 = ((m[:, 1] - r[:, 1]) / tile_size).floor().clamp(0, tiles_y)
            y1 = ((m[:, 1] + r[:, 1]) / tile_size).ceil().clamp(0, tiles_y)
            x0, x1, y0, y1 = x0.long(), x1.long(), y0.long(), y1.long()
            # Gaussians per tile without a [tiles, gaussians] matrix: a 2D difference array of the
            # boxes, integrated (keeps memory O(tiles + gaussians) for big renders).
            diff = torch.zeros((tiles_y + 1) * (tiles_x + 1), device=device, dtype=torch.long)
            w1 = tiles_x + 1
            ones = torch.ones_like(x0)
            diff.index_add_(0, y0 * w1 + x0, ones)
            diff.index_add_(0, y0 * w1 + x1, -ones)
            diff.index_add_(0, y1 * w1 + x0, -ones)
            diff.index_add_(0, y1 * w1 + x1, ones)
            counts = diff.reshape(tiles_y + 1, w1).cumsum(0).cumsum(1)[:tiles_y, :tiles_x].reshape(-1)
            order = torch.argsort(counts, descending=True)  # similar counts together: little padding

        # Pixel centres of every tile, [T, P, 2].
        local = torch.arange(tile_size, device=device, dtype=dtype) + 0.5
        ly, lx = torch.meshgrid(local, local, indexing="ij")
        tile_y = torch.div(torch.arange(n_tiles, device=device), tiles_x, rounding_mode="floor")
        tile_x = torch.arange(n_tiles, device=device) % tiles_x
        half = tile_size / 2.0
        tile_c = torch.stack([tile_x.to(dtype) * tile_size + half, tile_y.to(dtype) * tile_size + half], -1)
        qx, qy = (lx - half).reshape(-1), (ly - half).reshape(-1)  # pixel centres relative to the tile's
        monomials = torch.stack([qx * qx, qy * qy, qx * qy, qx, qy, torch.ones_like(qx)], dim=-1)[None]
        pixel_offsets = torch.stack([qx, qy], dim=-1)  # [P, 2]

        # Each gaussian's image-space attributes in one table (the last row pads), so the differentiable
        # part gathers, and its backward scatters, once: mean 0:2, conic 2:5, log opacity 5, features 6:.
        table = torch.cat(
            [means2d[ids], conics[ids], torch.log(opacities[ids].clamp_min(1e-12))[:, None], features[ids]], 1
        )
        pad_row = torch.cat([table.new_zeros(5), table.new_full((1,), -1e4), table.new_zeros(D)])
        table = torch.cat([table, pad_row[None]])
        pad = len(ids)
        P = tile_size * tile_size
        columns = table.detach().t().contiguous()  # [6 + D, G + 1]: attribute by attribute

        # 1. Which pairs count, chunk by chunk of tiles (no gradient): sigma - log(opacity) for every
        #    (pixel, gaussian) pair as one batched matmul of the quadratic form's monomials, in coordinates
        #    centred on each tile (keeps float32 exact enough): [t, P, 6] @ [t, 6, K] -> [t, P, K]. A pair
        #    counts when its alpha reaches 1/255 and gsplat's stop has not come (the pixel's transmittance
        #    stays above 1e-4). At 128 px about one pair in six counts, so everything after this, the
        #    backward pass included, runs on those pairs only.
        start = 0
        while start < n_tiles:
            k_max = int(counts[order[start]])
            if k_max == 0:
                break
            n_chunk = max(1, min(n_tiles - start, max_pairs // (P * k_max), 4 * max_pairs // len(ids)))
            # Every tile of a chunk is padded to its first (largest) list: stop the chunk where the lists
            # get much shorter, so padding never more than doubles the work.
            n_chunk = max(1, int((counts[order[start : start + n_chunk]] * MAX_PADDING >= k_max).sum()))
            chunk = order[start : start + n_chunk]
            start += n_chunk
            with torch.no_grad():
                index = _tile_lists(chunk, counts, tiles_x, (x0, x1, y0, y1), k_max, pad)  # [t, K]
                # One column at a time from the transposed table: each gathered [t, K] is contiguous.
                mx, my, A, B, Cc, logop = columns[:6, index]
                mx -= tile_c[chunk][:, None, 0]
                my -= tile_c[chunk][:, None, 1]
                u, w = A * mx + B * my, Cc * my + B * mx  # conic @ (mx, my)
                at_centre = 0.5 * (mx * u + my * w) - logop  # the quadratic form at the tile's centre
                coeff = torch.stack([0.5 * A, 0.5 * Cc, B, u.neg_(), w.neg_(), at_centre], dim=1)
                q = torch.bmm(monomials.expand(len(chunk), -1, -1), coeff)
                if not differentiable:
                    feat = columns[6:, index].permute(1, 2, 0)  # [t, K, D]
                    out_feat[chunk], out_T[chunk] = _composite_dense(q, feat, median_depth, depth_alpha)
                    continue
                q = q.reshape(-1)
                # Row-major order: each pixel's pairs are contiguous and front to back.
                flat = torch.nonzero(q <= LOG_INV_THRESHOLD).squeeze(1)
                t_i = torch.div(flat, P * k_max, rounding_mode="floor")
                pixel = chunk[t_i] * P + torch.div(flat, k_max, rounding_mode="floor") % P
                alpha = torch.exp(-q[flat]).clamp(max=ALPHA_MAX)
                live = torch.nonzero(_Segments(pixel).cumsum(torch.log1p(-alpha)) > LOG_T_STOP).squeeze(1)
                pair_gauss.append(index.reshape(-1)[(t_i * k_max + flat % k_max)[live]])
                pair_pixel.append(pixel[live])

    if pair_gauss:  # 2. The counted pairs, differentiable: alpha, the transmittance before each, the sum.
        gauss, pixel = torch.cat(pair_gauss), torch.cat(pair_pixel)
        tile = torch.div(pixel, P, rounding_mode="floor")
        centre = tile_c.index_select(0, tile) + pixel_offsets.index_select(0, pixel % P)  # [n, 2]
        n_px = n_tiles * P
        feat, log_t, log_after = _CompositePairs.apply(table, gauss, pixel, centre, _Segments(pixel), n_px)
        if median_depth:  # the depth of the pair where the pixel's alpha first reaches depth_alpha
            with torch.no_grad():
                crossed = torch.nonzero(log_after <= math.log(1.0 - depth_alpha)).squeeze(1)
                first = torch.full((n_px,), len(gauss), device=device, dtype=torch.long)
                first.scatter_reduce_(0, pixel[crossed], crossed, "amin")
                depth = torch.cat([table[gauss, -1].detach(), table.new_zeros(1)])
                feat = torch.cat([feat[:, :-1], depth[first][:, None]], dim=-1)
        out_feat = feat.reshape(n_tiles, P, D)
        out_T = torch.exp(log_t).reshape(n_tiles, P)

    def untile(x: Tensor) -> Tensor:
        x = x.reshape(tiles_y, tiles_x, tile_size, tile_size, -1).permute(0, 2, 1, 3, 4)
        return x.reshape(tiles_y * tile_size, tiles_x * tile_size, -1)[:height, :width]

    return untile(out_feat), 1.0 - untile(out_T)


def rasterize_torch(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D] or SH coefficients [N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,  # [C, D]
    render_mode: str = "RGB",
    depth_alpha: float = 0.5,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    tile_size: int = 8,
    max_pairs: int = 1 << 22,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Same call and outputs as `gsplat.rasterization` (dense mode) for the subset used here.

    Returns renders [C, H, W, D(+1)], alphas [C, H, W, 1] and an info dict with the keys gsplat's
    DefaultStrategy reads ("means2d" [C, N, 2] — call `.retain_grad()` on it —, "radii", "width",
    "height", "n_cameras", "gaussian_ids"). render_mode "RGB+ED" appends the expected depth
    (sum w z / alpha), "RGB+D" the accumulated depth, and "RGB+MD" (ours, not gsplat's) the median
    depth: that of the gaussian where the transmittance crosses 0.5, which is not pulled behind the
    surface by semi-transparent layers the way the expected depth is (used for meshing); `depth_alpha`
    moves that crossing (a lower value finds the first surface of a half-transparent shell).
    """
    C = viewmats.shape[0]
    means2d, conics, depths, radii = project(
        means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane
    )
    if sh_degree is not None:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
        dirs = means[None, :, :] - campos[:, None, :]  # [C, N, 3]
        feats = torch.clamp_min(eval_sh(sh_degree, colors[None].expand(C, *colors.shape), dirs) + 0.5, 0.0)
    else:
        feats = colors[None].expand(C, *colors.shape)
    renders, alphas = [], []
    for ci in range(C):
        f = feats[ci]
        if render_mode in ("RGB+ED", "RGB+D", "RGB+MD"):
            f = torch.cat([f, depths[ci][:, None]], dim=-1)
        img, alpha = _composite_view(
            means2d[ci],
            conics[ci],
            opacities,
            f,
            depths[ci],
            radii[ci],
            width,
            height,
            tile_size,
            max_pairs,
            median_depth=render_mode == "RGB+MD",
            depth_alpha=depth_alpha,
        )
        if backgrounds is not None:
            bg = backgrounds[ci]
            if img.shape[-1] > bg.shape[-1]:
                bg = torch.cat([bg, bg.new_zeros(img.shape[-1] - bg.shape[-1])])
            img = img + (1.0 - alpha) * bg
        if render_mode == "RGB+ED":
            img = torch.cat([img[..., :-1], img[..., -1:] / alpha.clamp_min(1e-10)], dim=-1)
        renders.append(img)
        alphas.append(alpha)
    info = {
        "means2d": means2d,
        "conics": conics,
        "depths": depths,
        "radii": radii,
        "width": width,
        "height": height,
        "n_cameras": C,
        "gaussian_ids": None,
    }
    return torch.stack(renders), torch.stack(alphas), info
