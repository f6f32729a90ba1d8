"""Fit 3D Gaussian splats to an orbit with known poses.

The loop follows gsplat's simple_trainer: one random training view per step, L1 + SSIM loss, Adam per
parameter group, and `gsplat.strategy.DefaultStrategy` for densification (clone / split on the 2D
mean-gradient, prune transparent and huge gaussians). It runs unchanged on CUDA (gsplat kernels) and
on CPU (`recon.raster_torch`), because both rasterisers return the info gsplat's strategy reads.

Orbit-specific parts:

* Background: generated orbits have a plain light background. Its colour is estimated from the frame
  borders (median) and the render is composited over it, so gaussians never need to paint background.
* Silhouettes (pixels that differ from the background) carve a visual hull from the known poses. The
  hull initialises the gaussians on its surface ("hull" init), gaussians that wander outside it are
  pruned at every refinement, and an alpha penalty on confidently-background pixels keeps floaters away.
* gsplat 1.5.3's DefaultStrategy never resets opacity: it tests ``step % reset_every == 0 & step > 0``,
  which Python parses as ``step % reset_every == (0 & step) > 0`` (always false). We call gsplat's own
  `reset_opa` at the intended steps (harmless if a fixed gsplat also does it).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recon.errors import ReconError
from recon.overrides import with_overrides
from recon.poses import Cameras
from recon.raster import rasterize, resolve_device


@dataclass
class FitConfig:
    """Training settings. Presets in `recon/assets/recon_{fast,quality}.json`."""

    iterations: int = 1500
    sh_degree: int = 1  # 0..3
    sh_degree_interval: int = 400  # raise the active SH degree every this many steps
    resolution: int = 128  # longest side used for training (frames are downscaled, never upscaled)
    init: str = "hull"  # "hull" (silhouette visual hull surface) or "random" (inside the hull's box)
    init_points: int = 6000
    hull_resolution: int = 64  # voxels per side of the visual-hull grid
    init_opacity: float = 0.5
    ssim_lambda: float = 0.2
    mask_lambda: float = 0.5  # weight of the alpha penalty on background pixels
    bg_threshold: float = 0.06  # colour distance (0..1) from the background that counts as object
    # Learning rates: gsplat's, except scales 2x faster because our schedules are hundreds of steps,
    # not 30k. (Faster means also fit faster but let gaussians drift into parts of the visual hull no
    # training view constrains, which the mesh then shows.) The quality preset restores gsplat's values.
    lr_means: float = 1.6e-4  # times the scene scale, decayed to 1% over training, as in gsplat
    lr_scales: float = 1e-2
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    refine_start: int = 300
    refine_stop_fraction: float = 0.8  # densify until this fraction of the iterations
    refine_every: int = 100
    reset_every: int = 1000
    grow_grad2d: float = 0.0002
    max_gaussians: int = 40000
    seed: int = 0
    device: str = "auto"

    def validate(self) -> FitConfig:
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise ReconError(f"iterations must be a positive integer, got {self.iterations!r}")
        if self.sh_degree not in (0, 1, 2, 3):
            raise ReconError(f"sh-degree must be 0, 1, 2 or 3, got {self.sh_degree!r}")
        if self.init not in ("hull", "random"):
            raise ReconError(f"init must be 'hull' or 'random', got {self.init!r}")
        if not isinstance(self.resolution, int) or self.resolution < 16:
            raise ReconError(f"resolution must be an integer >= 16, got {self.resolution!r}")
        if self.init_points < 1 or self.hull_resolution < 8:
            raise ReconError("init-points must be >= 1 and hull-resolution >= 8")
        return self

    def updated(self, data: dict[str, Any], where: str = "fit") -> FitConfig:
        """A copy with the keys of `data` replaced; unknown keys are an error (typos must not pass)."""
        return with_overrides(self, data, where)


# --------------------------------------------------------------------------- background and hull
def estimate_background(frames: np.ndarray, border: int = 2) -> np.ndarray:
    """Median colour of the frame borders, [3] in 0..1 (frames [N, H, W, 3] uint8)."""
    f = frames.astype(np.float32) / 255.0
    edges = np.concatenate(
        [f[:, :border].reshape(-1, 3), f[:, -border:].reshape(-1, 3),
         f[:, :, :border].reshape(-1, 3), f[:, :, -border:].reshape(-1, 3)]
    )  # fmt: skip
    return np.median(edges, axis=0)


def silhouettes(frames: np.ndarray, background: np.ndarray, threshold: float) -> np.ndarray:
    """Object masks [N, H, W] bool: pixels whose colour differs from the background, holes filled."""
    from scipy import ndimage

    diff = np.abs(frames.astype(np.float32) / 255.0 - background[None, None, None]).max(axis=-1)
    masks = diff > threshold
    return np.stack([ndimage.binary_fill_holes(m) for m in masks])


@dataclass
class VisualHull:
    """Occupancy of a voxel grid over the cube [-half, half]^3 carved by the silhouettes."""

    occupancy: np.ndarray  # [R, R, R] bool, indexed [ix, iy, iz]
    half: float

    @property
    def voxel(self) -> float:
        return 2.0 * self.half / self.occupancy.shape[0]

    def centers(self, index: np.ndarray) -> np.ndarray:
        return -self.half + (index + 0.5) * self.voxel

    def contains(self, points: np.ndarray, dilate: int = 1) -> np.ndarray:
        """Whether points [n, 3] fall in an occupied voxel (after `dilate` voxels of growth), [n]."""
        from scipy import ndimage

        occ = ndimage.binary_dilation(self.occupancy, iterations=dilate) if dilate > 0 else self.occupancy
        r = occ.shape[0]
        idx = np.floor((points + self.half) / self.voxel).astype(np.int64)
        ok = np.all((idx >= 0) & (idx < r), axis=1)
        out = np.zeros(len(points), dtype=bool)
        out[ok] = occ[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
        return out


def project_points(points: np.ndarray, cameras: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [C, n, 2] and depths [C, n] of world points [n, 3] in every camera."""
    vm = cameras.viewmats()
    pc = np.einsum("cij,nj->cni", vm[:, :3, :3], points) + vm[:, None, :3, 3]
    z = pc[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack(
            [cameras.fx * pc[..., 0] / z + cameras.cx, cameras.fy * pc[..., 1] / z + cameras.cy], -1
        )
    return uv, z


def carve_visual_hull(masks: np.ndarray, cameras: Cameras, resolution: int, half: float) -> VisualHull:
    """Keep voxels that project inside the (1-px dilated) silhouette of all but ~5% of the views.

    The small tolerance stops one bad mask (a light object part close to the background colour) from
    cutting the object; voxels projecting outside an image are not carved by that view.
    """
    from scipy import ndimage

    masks = np.stack([ndimage.binary_dilation(m, iterations=1) for m in masks])
    grid = -half + (np.arange(resolution) + 0.5) * (2.0 * half / resolution)
    pts = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
    uv, z = project_points(pts, cameras)
    misses = np.zeros(len(pts), dtype=np.int32)
    h, w = masks.shape[1:]
    for c in range(len(cameras)):
        u = np.floor(uv[c, :, 0]).astype(np.int64)
        v = np.floor(uv[c, :, 1]).astype(np.int64)
        inside = (u >= 0) & (u < w) & (v >= 0) & (v < h) & (z[c] > 0)
        hit = np.ones(len(pts), dtype=bool)
        hit[inside] = masks[c][v[inside], u[inside]]
        misses += ~hit
    tolerance = int(0.05 * len(cameras))
    occ = (misses <= tolerance).reshape(resolution, resolution, resolution)
    if not occ.any():
        raise ReconError(
            "the silhouettes carve away everything: the frames do not show one object on a plain "
            "background, or the orbit values (radius / elevation / fov / direction) do not match the video"
        )
    return VisualHull(occ, half)


# --------------------------------------------------------------------------- model
@dataclass
class Splats:
    """Fitted gaussians in gsplat's raw parametrisation (log scales, logit opacities, wxyz quats)."""

    means: Tensor  # [N, 3]
    scales: Tensor  # [N, 3] log
    quats: Tensor  # [N, 4] wxyz, unnormalised
    opacities: Tensor  # [N] logit
    sh0: Tensor  # [N, 1, 3]
    shN: Tensor  # [N, K-1, 3]
    sh_degree: int
    background: Tensor  # [3]

    def __len__(self) -> int:
        return int(self.means.shape[0])

    def render(
        self, cameras: Cameras, render_mode: str = "RGB", batch: int = 1, backend: str = "auto"
    ) -> tuple[Tensor, Tensor]:
        """Images [C, H, W, 3 (+1 depth)] and alphas [C, H, W, 1] for every camera, without gradients."""
        device = self.means.device
        viewmats = torch.tensor(cameras.viewmats(), dtype=torch.float32, device=device)
        K = torch.tensor(cameras.K(), dtype=torch.float32, device=device)
        colors = torch.cat([self.sh0, self.shN], dim=1)
        images, alphas = [], []
        with torch.no_grad():
            for s in range(0, len(cameras), batch):
                vm = viewmats[s : s + batch]
                img, alpha, _ = rasterize(
                    self.means, F.normalize(self.quats, dim=-1), torch.exp(self.scales),
                    torch.sigmoid(self.opacities), colors, vm, K[None].expand(len(vm), 3, 3),
                    cameras.width, cameras.height, sh_degree=self.sh_degree,
                    backgrounds=self.background[None].expand(len(vm), 3), render_mode=render_mode,
                    backend=backend,
                )  # fmt: skip
                images.append(img)
                alphas.append(alpha)
        return torch.cat(images), torch.cat(alphas)


@dataclass
class FitResult:
    splats: Splats
    hull: VisualHull
    cameras: Cameras  # at training resolution
    targets: np.ndarray  # [N, h, w, 3] uint8 training frames
    masks: np.ndarray  # [N, h, w] bool silhouettes
    psnr: list[float]
    ssim: list[float]
    seconds: float
    history: list[dict[str, float]]


def resize_frames(frames: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (antialiased) so the longest side is at most `max_side`; never upscales."""
    n, h, w, _ = frames.shape
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return frames
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    t = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    return t.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def ssim(img: Tensor, ref: Tensor) -> Tensor:
    """Mean SSIM of two [B, H, W, 3] images in 0..1 (11x11 gaussian window, sigma 1.5)."""
    x, y = img.permute(0, 3, 1, 2), ref.permute(0, 3, 1, 2)
    g = torch.exp(-((torch.arange(11, dtype=x.dtype, device=x.device) - 5.0) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(3, 1, 11, 11)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, window, padding=5, groups=3)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean()


def psnr(img: Tensor, ref: Tensor) -> float:
    mse = torch.mean((img - ref) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _init_points(
    hull: VisualHull,
    frames: np.ndarray,
    masks: np.ndarray,
    cameras: Cameras,
    cfg: FitConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Initial means [n, 3] and colours [n, 3] in 0..1."""
    from scipy import ndimage

    occ = hull.occupancy
    if cfg.init == "hull":
        surface = occ & ~ndimage.binary_erosion(occ)
        index = np.argwhere(surface)
        pick = index[rng.integers(0, len(index), size=cfg.init_points)]
        pts = hull.centers(pick) + rng.uniform(-0.5, 0.5, size=(cfg.init_points, 3)) * hull.voxel
    else:
        index = np.argwhere(occ)
        lo, hi = hull.centers(index.min(0)) - hull.voxel, hull.centers(index.max(0)) + hull.voxel
        pts = rng.uniform(lo, hi, size=(cfg.init_points, 3))
    # Colour: median over the views where the point lands on the object.
    uv, _ = project_points(pts, cameras)
    h, w = masks.shape[1:]
    u = np.clip(np.floor(uv[..., 0]), 0, w - 1).astype(np.int64)  # [C, n]
    v = np.clip(np.floor(uv[..., 1]), 0, h - 1).astype(np.int64)
    cam = np.arange(len(cameras))[:, None]
    cols = frames[cam, v, u].astype(np.float32) / 255.0  # [C, n, 3]
    on = masks[cam, v, u]
    cols = np.where(on[..., None], cols, np.nan)
    with warnings.catch_warnings():  # points seen on the object in no view: all-NaN, grey below
        warnings.simplefilter("ignore", RuntimeWarning)
        colors = np.nanmedian(cols, axis=0) if on.any() else np.full((len(pts), 3), 0.5)
    colors = np.where(np.isnan(colors), 0.5, colors)
    return pts, colors


def _knn_scale(pts: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    d, _ = cKDTree(pts).query(pts, k=4)
    return np.sqrt(np.mean(d[:, 1:] ** 2, axis=1)).clip(1e-4)


def fit(
    frames: np.ndarray,
    cameras: Cameras,
    cfg: FitConfig,
    progress: bool = True,
    train_index: list[int] | np.ndarray | None = None,
) -> FitResult:
    """Fit splats to `frames` [N, H, W, 3] uint8 seen from `cameras` (at the frames' resolution).

    `train_index` restricts training to some views (the tests hold the others out).
    """
    from gsplat.strategy import DefaultStrategy
    from gsplat.strategy.ops import remove, reset_opa
    from tqdm.auto import tqdm

    cfg.validate()
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)

    index = np.arange(len(frames)) if train_index is None else np.asarray(train_index)
    small = resize_frames(frames[index], cfg.resolution)
    cams = cameras.subset(index).scaled(small.shape[2], small.shape[1])
    background = estimate_background(small)
    masks = silhouettes(small, background, cfg.bg_threshold)
    if masks.mean() < 1e-4:
        raise ReconError(
            "no object found: every frame matches its border colour (is this an orbit of one object on a "
            "plain background?)"
        )
    # The object must be inside what the cameras see of the origin's neighbourhood.
    distance = np.linalg.norm(cams.centers(), axis=1)
    half = min(0.95 * float(distance.min()), float(distance.max()) * (cams.height / 2) / cams.fy * 1.05)
    hull = carve_visual_hull(masks, cams, cfg.hull_resolution, half)
    pts, colors = _init_points(hull, small, masks, cams, cfg, rng)

    n = len(pts)
    k = (cfg.sh_degree + 1) ** 2
    sh0 = ((colors - 0.5) / 0.28209479177387814)[:, None, :]
    params = torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(torch.tensor(pts, dtype=torch.float32)),
            "scales": torch.nn.Parameter(
                torch.tensor(np.log(_knn_scale(pts)), dtype=torch.float32)[:, None].repeat(1, 3)
            ),
            "quats": torch.nn.Parameter(F.normalize(torch.randn(n, 4), dim=-1)),
            "opacities": torch.nn.Parameter(torch.logit(torch.full((n,), cfg.init_opacity))),
            "sh0": torch.nn.Parameter(torch.tensor(sh0, dtype=torch.float32)),
            "shN": torch.nn.Parameter(torch.zeros(n, k - 1, 3)),
        }
    ).to(device)
    scene_scale = 1.1 * float(np.linalg.norm(cams.centers(), axis=1).max())
    lrs = {
        "means": cfg.lr_means * scene_scale, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
        "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN,
    }  # fmt: skip
    optimizers = {
        name: torch.optim.Adam([{"params": params[name], "lr": lr, "name": name}], eps=1e-15)
        for name, lr in lrs.items()
    }
    means_decay = torch.optim.lr_scheduler.ExponentialLR(
        optimizers["means"], gamma=0.01 ** (1.0 / cfg.iterations)
    )
    refine_stop = int(cfg.refine_stop_fraction * cfg.iterations)
    strategy = DefaultStrategy(
        refine_start_iter=cfg.refine_start, refine_stop_iter=refine_stop, refine_every=cfg.refine_every,
        reset_every=cfg.reset_every, grow_grad2d=cfg.grow_grad2d,
    )  # fmt: skip
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=scene_scale)

    targets = torch.tensor(small, dtype=torch.float32, device=device) / 255.0  # [N, h, w, 3]
    bg_conf = torch.tensor(
        np.abs(small / 255.0 - background).max(-1) < cfg.bg_threshold / 2, dtype=torch.float32, device=device
    )  # [N, h, w]: confidently background
    viewmats = torch.tensor(cams.viewmats(), dtype=torch.float32, device=device)
    K = torch.tensor(cams.K(), dtype=torch.float32, device=device)[None]
    bg = torch.tensor(background, dtype=torch.float32, device=device)[None]

    history: list[dict[str, float]] = []
    order: list[int] = []
    bar = tqdm(range(cfg.iterations), desc=f"fitting on {device.type}", disable=not progress, leave=False)
    for step in bar:
        if not order:
            order = rng.permutation(len(cams)).tolist()
        i = order.pop()
        degree = min(step // cfg.sh_degree_interval, cfg.sh_degree)
        img, alpha, info = rasterize(
            params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
            torch.cat([params["sh0"], params["shN"]], 1), viewmats[i : i + 1], K, cams.width, cams.height,
            sh_degree=degree, backgrounds=bg,
        )  # fmt: skip
        strategy.step_pre_backward(params, optimizers, state, step, info)
        gt = targets[i : i + 1]
        l1 = torch.abs(img - gt).mean()
        loss = (1 - cfg.ssim_lambda) * l1 + cfg.ssim_lambda * (1 - ssim(img, gt))
        loss = loss + cfg.mask_lambda * (alpha[..., 0] * bg_conf[i : i + 1]).mean()
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        means_decay.step()

        growing = len(params["means"]) < cfg.max_gaussians
        strategy.grow_grad2d = cfg.grow_grad2d if growing else float("inf")
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        if step < refine_stop and step > cfg.refine_start and step % cfg.refine_every == 0:
            with torch.no_grad():  # floaters: anything that left the visual hull
                outside = ~torch.from_numpy(hull.contains(params["means"].detach().cpu().numpy(), dilate=2))
                if outside.any() and not outside.all():
                    remove(params=params, optimizers=optimizers, state=state, mask=outside.to(device))
        if step > 0 and step % cfg.reset_every == 0 and step < refine_stop:
            reset_opa(params=params, optimizers=optimizers, state=state, value=strategy.prune_opa * 2.0)

        if step % 10 == 0 or step == cfg.iterations - 1:
            p = psnr(img.detach(), gt)
            history.append(
                {"step": step, "loss": float(loss.item()), "psnr": p, "gaussians": len(params["means"])}
            )
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{p:.2f}", n=len(params["means"]))
    bar.close()

    splats = Splats(
        means=params["means"].detach(), scales=params["scales"].detach(), quats=params["quats"].detach(),
        opacities=params["opacities"].detach(), sh0=params["sh0"].detach(), shN=params["shN"].detach(),
        sh_degree=cfg.sh_degree, background=bg[0],
    )  # fmt: skip
    renders, _ = splats.render(cams)
    psnrs = [psnr(renders[j : j + 1], targets[j : j + 1]) for j in range(len(cams))]
    ssims = [float(ssim(renders[j : j + 1], targets[j : j + 1]).item()) for j in range(len(cams))]
    return FitResult(splats, hull, cams, small, masks, psnrs, ssims, time.perf_counter() - start, history)
