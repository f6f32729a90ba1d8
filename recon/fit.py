"""Fit 3D Gaussian splats to an orbit with known poses.

The loop follows gsplat's simple_trainer: one random training view per step, L1 + SSIM loss, Adam per
parameter group, and `gsplat.strategy.DefaultStrategy` for densification (clone / split on the 2D
mean-gradient, prune transparent and huge gaussians). It runs unchanged on CUDA (gsplat kernels) and
on CPU (`recon.raster_torch`), because both rasterisers return the info gsplat's strategy reads.

Orbit-specific parts:

* Background (`recon.background`): each frame's background is modelled per pixel (plain or gradient,
  dark or light) or taken from alpha, and renders are composited over it, so gaussians never paint it.
* Visual hull (`recon.hull`): silhouettes carve a hull from the known poses; space too few views see is
  empty. The hull initialises the gaussians on its surface ("hull" init), gaussians that leave it are
  pruned at every refinement and once more at the end, and an alpha penalty applies on pixels that are
  background in the frame *and* outside the hull's footprint, so one doubtful view cannot erase what
  the others support. Its mirror image, a coverage term, asks for full opacity on object pixels the
  hull supports: the object is solid, and a surface left half-transparent lets depth reach its far
  side (the mesh would fuse inner walls, and views from above would see through it).
* Schedules scale with the run, as simple_trainer's `steps_scaler` does: refinement start, stop and
  interval, opacity resets and SH-degree steps are fractions of `iterations`, so a 400-step demo still
  densifies and a long run does not refine more often than gsplat would.
* Optional per-frame appearance (`recon.appearance`, ``appearance``): a gain and an offset per frame
  and channel on the splats' colour, for generated orbits whose exposure drifts; not exported.
* gsplat 1.5.3's DefaultStrategy never resets opacity: it tests ``step % reset_every == 0 & step > 0``,
  which Python parses as ``step % reset_every == (0 & step) > 0`` (always false). We call gsplat's own
  `reset_opa` at the intended steps (harmless if a fixed gsplat also does it).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recon.background import Background, find_background
from recon.constants import MAX_FIT_RESOLUTION, MAX_ITERATIONS, MAX_SH_DEGREE, MIN_FIT_RESOLUTION
from recon.errors import ReconError
from recon.hull import VisualHull, carve_visual_hull, project_points, working_half_size
from recon.overrides import bounded, check_bounds, with_overrides
from recon.poses import Cameras
from recon.raster import rasterize, resolve_device
from recon.raster_torch import SH_C0

# gsplat's simple_trainer refines every 100 of 30k steps; our runs are 100x shorter, and each refinement
# needs gradient statistics from several views, so the interval never drops below this many steps.
MIN_REFINE_EVERY = 10
# Colours and opacities need this many steps from the hull initialisation before their gradients say
# where detail is missing: refining earlier splits gaussians that are merely unsettled.
MIN_REFINE_START = 50
# After an opacity reset (to 0.01) the gaussians need on the order of a hundred steps to become opaque
# again: resets never come closer than this, so an 80-step run has none and still yields a surface.
MIN_RESET_EVERY = 200
HULL_PRUNE_DILATE = 2  # voxels of slack around the hull before a gaussian counts as a floater
FRACTIONS = (
    "refine_start_fraction", "refine_stop_fraction", "refine_every_fraction", "reset_every_fraction",
    "sh_degree_fraction", "hull_min_seen", "hull_tolerance", "pose_start_fraction",
)  # fmt: skip


@dataclass
class FitConfig:
    """Training settings. Presets in `recon/assets/recon_{fast,quality}.json`."""

    iterations: int = bounded(1500, 1, MAX_ITERATIONS)
    sh_degree: int = bounded(1, 0, MAX_SH_DEGREE)
    # Longest side used for training (frames are downscaled, never upscaled).
    resolution: int = bounded(128, MIN_FIT_RESOLUTION, MAX_FIT_RESOLUTION)
    init: str = "hull"  # "hull" (silhouette visual hull surface) or "random" (inside the hull's box)
    init_points: int = bounded(6000, 1, 10_000_000)
    hull_resolution: int = bounded(64, 8, 512)  # voxels per side of the visual-hull grid
    hull_min_seen: float = 0.5  # share of the views that must see a voxel in their frame for it to be kept
    hull_tolerance: float = 0.05  # share of the seeing views that may show background without carving
    init_opacity: float = 0.5
    ssim_lambda: float = 0.2
    mask_lambda: float = 0.5  # weight of the alpha penalty on background pixels outside the hull
    # Weight of the coverage term on object pixels the hull supports: the object is solid, so its
    # render must be opaque there. Without it a surface stays partly transparent wherever colour alone
    # fits, median depth then lands on the far side, and the mesh grows inner walls.
    solid_lambda: float = 0.5
    # Learning rates: gsplat's, except scales 2x faster because our schedules are hundreds of steps,
    # not 30k. (Faster means also fit faster but let gaussians drift into parts of the visual hull no
    # training view constrains, which the mesh then shows.) The quality preset restores gsplat's values.
    lr_means: float = 1.6e-4  # times the scene scale, decayed to 1% over training, as in gsplat
    lr_scales: float = 1e-2
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    # Schedules, as fractions of `iterations` (simple_trainer: 500 / 15k / 100 / 3000 / 1000 of 30k).
    # About ten refinements whatever the length: each may double the gaussians that still have large
    # view-space gradients, and starting once the colours have settled keeps early noise from splitting.
    refine_start_fraction: float = 0.2  # first densification step
    refine_stop_fraction: float = 0.7  # densify until this fraction of the iterations
    refine_every_fraction: float = 0.05  # interval between densification steps (at least 10 steps)
    reset_every_fraction: float = 0.3  # opacity resets at multiples of this (>= 200 steps), before the stop
    sh_degree_fraction: float = 0.1  # raise the active SH degree every this fraction of the run
    grow_grad2d: float = 0.0002
    # Growth stops here (the CPU rasteriser's cost is linear in it).
    max_gaussians: int = bounded(20000, 1, 100_000_000)
    seed: int = 0
    device: str = "auto"
    # Pose refinement (`recon.pose_refine`): every frame's camera and the focal length move with the splats.
    refine_poses: bool = False
    # A frame's pose moves only on the steps that render it (1 in N). Measured (benchmarks/RESULTS.md, 36
    # frames, 300 steps, +-1 degree jitter): 2e-3 rad left 0.66 degree mean per-frame error, 8e-3 0.70 with a
    # 2-degree worst frame and a 1-degree drift of the whole orbit; neither meets 0.3, 2e-3 is the safer.
    lr_pose_rotation: float = 2e-3  # radians per visit (Adam) about the orbit's centre, decayed to 5%
    # World units per visit in camera axes: 20x less than the rotation moves a camera at radius 2, so the
    # two (alike in the image) are not traded at random and the centre follows the rotation.
    lr_pose_translation: float = 2e-4
    lr_focal: float = 1e-3  # log focal scale per step
    pose_start_fraction: float = 0.1  # corrections start once the splats have roughly settled
    # Per-frame exposure and white balance (`recon.appearance`): a gain and an offset per frame and
    # channel, learnt with the splats and not exported, for generated orbits whose exposure drifts.
    appearance: bool = False
    lr_appearance: float = bounded(2e-2, 0.0, 1.0)  # per visit (Adam); a frame is seen once every N steps

    def validate(self) -> FitConfig:
        """Raise ReconError for a field outside its bounds, or a choice or fraction no fit can use."""
        check_bounds(self, "fit")
        if self.init not in ("hull", "random"):
            raise ReconError(f"init must be 'hull' or 'random', got {self.init!r}")
        for name in FRACTIONS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ReconError(f"{name.replace('_', '-')} must be a fraction in [0, 1], got {value!r}")
        return self

    def updated(self, data: dict[str, Any], where: str = "fit") -> FitConfig:
        """A copy with the keys of `data` replaced; unknown keys are an error (typos must not pass)."""
        return with_overrides(self, data, where)

    def schedule(self) -> Schedule:
        return Schedule.for_run(self)


@dataclass
class Schedule:
    """The step numbers of one run, derived from `FitConfig`'s fractions."""

    refine_start: int
    refine_stop: int
    refine_every: int
    reset_every: int
    sh_degree_every: int

    @classmethod
    def for_run(cls, cfg: FitConfig) -> Schedule:
        n = cfg.iterations
        return cls(
            refine_start=max(MIN_REFINE_START, round(cfg.refine_start_fraction * n)),
            refine_stop=round(cfg.refine_stop_fraction * n),
            refine_every=max(MIN_REFINE_EVERY, round(cfg.refine_every_fraction * n)),
            # A fraction of 0 turns resets off.
            reset_every=max(MIN_RESET_EVERY, round(cfg.reset_every_fraction * n))
            if cfg.reset_every_fraction
            else n + 1,
            sh_degree_every=max(1, round(cfg.sh_degree_fraction * n)),
        )

    def refines(self, step: int) -> bool:
        """Whether `step` is a densification step (gsplat's DefaultStrategy rule)."""
        return self.refine_start < step < self.refine_stop and step % self.refine_every == 0

    def resets(self, step: int) -> bool:
        return 0 < step < self.refine_stop and step % self.reset_every == 0

    def sh_degree(self, step: int, max_degree: int) -> int:
        return min(step // self.sh_degree_every, max_degree)


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

    def subset(self, keep: np.ndarray | Tensor) -> Splats:
        """The gaussians where `keep` [N] (bool) is true."""
        mask = torch.as_tensor(keep, dtype=torch.bool, device=self.means.device)
        return dataclasses.replace(
            self, means=self.means[mask], scales=self.scales[mask], quats=self.quats[mask],
            opacities=self.opacities[mask], sh0=self.sh0[mask], shN=self.shN[mask],
        )  # fmt: skip

    def render(
        self,
        cameras: Cameras,
        render_mode: str = "RGB",
        batch: int = 1,
        backend: str = "auto",
        backgrounds: Tensor | None = None,
        depth_alpha: float = 0.5,
    ) -> tuple[Tensor, Tensor]:
        """Images [C, H, W, 3 (+1 depth)] and alphas [C, H, W, 1] for every camera, without gradients.

        Colours are composited over `backgrounds` [C, H, W, 3] (per pixel) when given, else over the
        splats' one background colour.
        """
        device = self.means.device
        viewmats = torch.tensor(cameras.viewmats(), dtype=torch.float32, device=device)
        K = torch.tensor(cameras.K(), dtype=torch.float32, device=device)
        colors = torch.cat([self.sh0, self.shN], dim=1)
        images, alphas = [], []
        with torch.no_grad():
            for s in range(0, len(cameras), batch):
                vm = viewmats[s : s + batch]
                per_pixel = None if backgrounds is None else backgrounds[s : s + batch]
                img, alpha, _ = rasterize(
                    self.means, F.normalize(self.quats, dim=-1), torch.exp(self.scales),
                    torch.sigmoid(self.opacities), colors, vm, K[None].expand(len(vm), 3, 3),
                    cameras.width, cameras.height, sh_degree=self.sh_degree,
                    backgrounds=self.background[None].expand(len(vm), 3) if per_pixel is None else None,
                    render_mode=render_mode, backend=backend, depth_alpha=depth_alpha,
                )  # fmt: skip
                if per_pixel is not None:
                    img = torch.cat([composite(img[..., :3], alpha, per_pixel), img[..., 3:]], dim=-1)
                images.append(img)
                alphas.append(alpha)
        return torch.cat(images), torch.cat(alphas)


@dataclass
class FitResult:
    splats: Splats
    hull: VisualHull
    cameras: Cameras  # at training resolution
    targets: np.ndarray  # [N, h, w, 3] uint8 training frames
    background: Background  # per-frame backgrounds and silhouettes at training resolution
    psnr: list[float]
    ssim: list[float]
    seconds: float
    history: list[dict[str, float]]
    initial_cameras: Cameras | None = None  # before pose refinement (None: `cameras` were not refined)
    appearance: dict[str, Any] | None = None  # per-frame gain and offset (`recon.appearance`), when learnt


def resize_frames(frames: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (antialiased) so the longest side is at most `max_side`; never upscales."""
    n, h, w, _ = frames.shape
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return frames
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    # A copy, not from_numpy's alias: the frames may be a read-only array (torch warns on those), or a
    # view with negative strides, e.g. a reversed video (torch refuses those: made contiguous first).
    t = torch.tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
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
        # The surface that some view sees: the hidden underside would only grow junk seen from below.
        surface = occ & ~ndimage.binary_erosion(occ)
        visible = surface & hull.visible(cameras)
        index = np.argwhere(visible if visible.any() else surface)
        pick = index[rng.integers(0, len(index), size=cfg.init_points)]
        pts = hull.centers(pick) + rng.uniform(-0.5, 0.5, size=(cfg.init_points, 3)) * hull.voxel
    else:
        lo, hi = hull.bounds()
        pts = rng.uniform(lo - hull.voxel, hi + hull.voxel, size=(cfg.init_points, 3))
        inside = hull.contains(pts, dilate=1)
        pts = pts[inside] if inside.any() else pts
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


def _initial_params(pts: np.ndarray, colors: np.ndarray, cfg: FitConfig) -> torch.nn.ParameterDict:
    """gsplat's raw parametrisation: log scales from the 3 nearest neighbours, random rotations."""
    n = len(pts)
    k = (cfg.sh_degree + 1) ** 2
    sh0 = ((colors - 0.5) / SH_C0)[:, None, :]
    return torch.nn.ParameterDict(
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
    )


def _optimizers(
    params: torch.nn.ParameterDict, cfg: FitConfig, scene_scale: float
) -> dict[str, torch.optim.Optimizer]:
    lrs = {
        "means": cfg.lr_means * scene_scale, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
        "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN,
    }  # fmt: skip
    return {
        name: torch.optim.Adam([{"params": params[name], "lr": lr, "name": name}], eps=1e-15)
        for name, lr in lrs.items()
    }


def _prune_outside(
    hull: VisualHull, params: torch.nn.ParameterDict, optimizers: dict, state: dict[str, Any]
) -> None:
    """Remove gaussians whose centres left the (slightly grown) visual hull: floaters, unseen space."""
    from gsplat.strategy.ops import remove

    with torch.no_grad():
        means = params["means"].detach().cpu().numpy()
        outside = ~torch.from_numpy(hull.contains(means, dilate=HULL_PRUNE_DILATE))
        if outside.any() and not outside.all():
            remove(params=params, optimizers=optimizers, state=state, mask=outside.to(params["means"].device))


def composite(colors: Tensor, alphas: Tensor, backgrounds: Tensor) -> Tensor:
    """Premultiplied renders [B, H, W, 3] over per-pixel backgrounds [B, H, W, 3]."""
    return colors + (1.0 - alphas) * backgrounds


def prepare_views(
    frames: np.ndarray, cameras: Cameras, cfg: FitConfig, alpha: np.ndarray | None = None
) -> tuple[np.ndarray, Cameras, Background]:
    """Training frames at `cfg.resolution`, their cameras, and their backgrounds and silhouettes."""
    small = resize_frames(frames, cfg.resolution)
    cams = cameras.scaled(small.shape[2], small.shape[1])
    small_alpha = None if alpha is None else resize_frames(alpha[..., None], cfg.resolution)[..., 0]
    background = find_background(small, small_alpha)
    if background.masks.mean() < 1e-4:
        raise ReconError(
            "no object found: every frame matches its background (is this an orbit of one object on a "
            "plain background?)"
        )
    return small, cams, background


def fit(
    frames: np.ndarray,
    cameras: Cameras,
    cfg: FitConfig,
    progress: bool = True,
    train_index: list[int] | np.ndarray | None = None,
    alpha: np.ndarray | None = None,
) -> FitResult:
    """Fit splats to `frames` [N, H, W, 3] uint8 seen from `cameras` (at the frames' resolution).

    `alpha` [N, H, W] uint8, when the frames had it, gives the silhouettes. `train_index` restricts
    training to some views (the tests hold the others out).
    """
    from gsplat.strategy import DefaultStrategy
    from gsplat.strategy.ops import reset_opa
    from scipy import ndimage
    from tqdm.auto import tqdm

    cfg.validate()
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    schedule = cfg.schedule()

    # 1. Views: training frames, cameras, backgrounds and silhouettes.
    index = np.arange(len(frames)) if train_index is None else np.asarray(train_index)
    small, cams, background = prepare_views(
        frames[index], cameras.subset(index), cfg, None if alpha is None else alpha[index]
    )
    masks = background.masks

    # 2. Visual hull over the space the views see, and the pixels where alpha must be zero: background
    #    in the frame and outside the hull's footprint (what the other views support stays free).
    hull = carve_visual_hull(
        masks, cams, working_half_size(cams), cfg.hull_resolution, cfg.hull_min_seen, cfg.hull_tolerance
    )
    footprints = hull.footprints(cams)
    free = np.stack([~ndimage.binary_dilation(m) for m in masks]) & ~footprints
    # Object pixels away from the outline (anti-aliased there) that the hull also supports: opaque.
    solid = np.stack([ndimage.binary_erosion(m) for m in masks]) & footprints

    # 3. Gaussians on the hull's surface, optimisers and gsplat's densification strategy.
    pts, colors = _init_points(hull, small, masks, cams, cfg, rng)
    params = _initial_params(pts, colors, cfg).to(device)
    scene_scale = 1.1 * float(np.linalg.norm(cams.centers(), axis=1).max())
    optimizers = _optimizers(params, cfg, scene_scale)
    means_decay = torch.optim.lr_scheduler.ExponentialLR(
        optimizers["means"], gamma=0.01 ** (1.0 / cfg.iterations)
    )
    strategy = DefaultStrategy(
        refine_start_iter=schedule.refine_start, refine_stop_iter=schedule.refine_stop,
        refine_every=schedule.refine_every, reset_every=schedule.reset_every, grow_grad2d=cfg.grow_grad2d,
    )  # fmt: skip
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=scene_scale)

    targets = torch.tensor(small, dtype=torch.float32, device=device) / 255.0  # [N, h, w, 3]
    backgrounds = torch.tensor(background.images, device=device)  # [N, h, w, 3]
    free_px = torch.tensor(free, dtype=torch.float32, device=device)  # [N, h, w]
    solid_px = torch.tensor(solid, dtype=torch.float32, device=device)  # [N, h, w]
    viewmats = torch.tensor(cams.viewmats(), dtype=torch.float32, device=device)
    K = torch.tensor(cams.K(), dtype=torch.float32, device=device)[None]
    refiner = _pose_refiner(cfg, len(cams), device)
    appearance = _appearance(cfg, len(cams), device)

    # 4. The loop: one random view per step, L1 + SSIM + alpha on free pixels, then densify / prune.
    history: list[dict[str, float]] = []
    order: list[int] = []
    bar = tqdm(range(cfg.iterations), desc=f"fitting on {device.type}", disable=not progress, leave=False)
    for step in bar:
        if not order:
            order = rng.permutation(len(cams)).tolist()
        i = order.pop()
        view_i, K_i = viewmats[i : i + 1], K
        if refiner is not None:
            view_i, K_i = refiner.camera(i, view_i, K_i)
        colors_i, alpha_i, info = rasterize(
            params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
            torch.cat([params["sh0"], params["shN"]], 1), view_i, K_i, cams.width, cams.height,
            sh_degree=schedule.sh_degree(step, cfg.sh_degree),
        )  # fmt: skip
        if appearance is not None:
            colors_i = appearance.apply(i, colors_i, alpha_i)
        img = composite(colors_i, alpha_i, backgrounds[i : i + 1])
        strategy.step_pre_backward(params, optimizers, state, step, info)
        gt = targets[i : i + 1]
        l1 = torch.abs(img - gt).mean()
        loss = (1 - cfg.ssim_lambda) * l1 + cfg.ssim_lambda * (1 - ssim(img, gt))
        loss = loss + cfg.mask_lambda * (alpha_i[..., 0] * free_px[i : i + 1]).mean()
        loss = loss + cfg.solid_lambda * ((1.0 - alpha_i[..., 0]) * solid_px[i : i + 1]).mean()
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        means_decay.step()
        if refiner is not None:
            refiner.step(step)
        if appearance is not None:
            appearance.step(step)

        growing = len(params["means"]) < cfg.max_gaussians
        strategy.grow_grad2d = cfg.grow_grad2d if growing else float("inf")
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        if schedule.refines(step):
            _prune_outside(hull, params, optimizers, state)
        if schedule.resets(step):
            reset_opa(params=params, optimizers=optimizers, state=state, value=strategy.prune_opa * 2.0)

        if step % 10 == 0 or step == cfg.iterations - 1:
            p = psnr(img.detach(), gt)
            history.append(
                {"step": step, "loss": float(loss.item()), "psnr": p, "gaussians": len(params["means"])}
            )
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{p:.2f}", n=len(params["means"]))
    bar.close()
    # 5. Whatever drifted out of the hull after the last refinement goes too.
    _prune_outside(hull, params, optimizers, state)

    initial_cams = None
    if refiner is not None:
        initial_cams, cams = cams, refiner.refined(cams)
    bg_color = torch.tensor(background.color, dtype=torch.float32, device=device)
    splats = Splats(
        means=params["means"].detach(), scales=params["scales"].detach(), quats=params["quats"].detach(),
        opacities=params["opacities"].detach(), sh0=params["sh0"].detach(), shN=params["shN"].detach(),
        sh_degree=cfg.sh_degree, background=bg_color,
    )  # fmt: skip
    renders, _ = splats.render(cams, backgrounds=backgrounds)
    psnrs = [psnr(renders[j : j + 1], targets[j : j + 1]) for j in range(len(cams))]
    ssims = [float(ssim(renders[j : j + 1], targets[j : j + 1]).item()) for j in range(len(cams))]
    seconds = time.perf_counter() - start
    return FitResult(splats, hull, cams, small, background, psnrs, ssims, seconds, history, initial_cams,
                     None if appearance is None else appearance.report())  # fmt: skip


def _pose_refiner(cfg: FitConfig, n: int, device: torch.device) -> Any:
    """A `recon.pose_refine.PoseRefiner` when the config asks for one, else None."""
    if not cfg.refine_poses:
        return None
    from recon.pose_refine import PoseRefiner

    start = round(cfg.pose_start_fraction * cfg.iterations)
    return PoseRefiner(
        n, device, cfg.lr_pose_rotation, cfg.lr_pose_translation, cfg.lr_focal, start, cfg.iterations
    )


def _appearance(cfg: FitConfig, n: int, device: torch.device) -> Any:
    """A `recon.appearance.AppearanceCorrection` when the config asks for one, else None."""
    if not cfg.appearance:
        return None
    from recon.appearance import AppearanceCorrection

    # Like the pose corrections, it starts once the splats have roughly settled (same fraction).
    return AppearanceCorrection(n, device, cfg.lr_appearance, round(cfg.pose_start_fraction * cfg.iterations))
