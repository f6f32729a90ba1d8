"""Issue 9: the orbit's camera from the video itself (estimate, CLI, report) and pose refinement."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import replace as dataclasses_replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from recon import synthetic
from recon.errors import ReconError
from recon.orbit_estimate import estimate_orbit
from recon.orbit_mode import plan_orbit
from recon.pose_refine import PoseRefiner, orbit_angles, twist_matrix
from recon.poses import OrbitConfig, orbit_cameras
from recon.raster_torch import rasterize_torch

runner = CliRunner()
ESTIMATE_TOLERANCE = 2.0  # degrees, the target


def tall_orbit(n: int, size: int, elevation: float, fov: float, sign: float = 1.0, step: float | None = None,
               jitter: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:  # fmt: skip
    """Frames of the checker-textured tall figure on white."""
    az = sign * (360.0 / n if step is None else step) * np.arange(n)
    el = np.full(n, elevation)
    if jitter is not None:
        az, el = az + jitter[0], el + jitter[1]
    c2w = np.concatenate([synthetic.orbit_c2w([a], e, 2.0) for a, e in zip(az, el, strict=True)])
    frames, _ = synthetic.render(c2w, fov, size, synthetic.tall_textured_scene(), supersample=2,
                                 background=(1.0, 1.0, 1.0))  # fmt: skip
    return frames


@functools.cache
def shared_orbit(n: int, size: int, elevation: float, fov: float, sign: float) -> np.ndarray:
    """`tall_orbit` rendered once per module run (the estimate and the CLI test use the same frames)."""
    frames = tall_orbit(n, size, elevation, fov, sign)
    frames.flags.writeable = False
    return frames


# The wide lens at low elevation is the hard case (the perspective that tells fov from the object's
# size is weakest there): at 96 px it missed by 2.6 degrees, at 128 px (still a quarter of Droplet3D's
# 512) it lands within 0.7.
@pytest.mark.parametrize(
    ("elevation", "fov", "direction", "size"), [(30.0, 35.0, "cw", 96), (10.0, 48.0, "ccw", 128)]
)
def test_the_estimate_finds_elevation_fov_and_direction(
    elevation: float, fov: float, direction: str, size: int
) -> None:
    frames = shared_orbit(36, size, elevation, fov, 1.0 if direction == "ccw" else -1.0)
    estimate = estimate_orbit(frames, OrbitConfig())
    assert estimate.orbit.direction == direction and estimate.direction_margin > 0
    assert abs(estimate.orbit.elevation - elevation) < ESTIMATE_TOLERANCE, estimate.line()
    assert abs(estimate.orbit.fov - fov) < ESTIMATE_TOLERANCE, estimate.line()
    assert not estimate.orbit.full_turn and estimate.orbit.radius == 2.0  # the gauge
    assert estimate.uncertainty["fov"] < ESTIMATE_TOLERANCE
    assert "elevation" in estimate.line() and "\n" not in estimate.line()


def test_a_full_turn_is_detected_and_given_values_are_held() -> None:
    frames = tall_orbit(25, 80, 20.0, 40.0, step=360.0 / 24)  # the last frame repeats the first
    estimate = estimate_orbit(frames, OrbitConfig(), fixed={"fov": 40.0})
    assert estimate.orbit.full_turn and estimate.orbit.fov == 40.0
    assert abs(estimate.orbit.elevation - 20.0) < ESTIMATE_TOLERANCE
    assert estimate.estimated == ("elevation", "direction", "full_turn")


def test_the_orbit_plan_follows_the_documented_rules() -> None:
    auto = plan_orbit({"mode": None, "refine": None}, {})
    assert (auto.mode, auto.estimates, auto.refine_poses, auto.fixed()) == ("auto", True, True, {})
    given = plan_orbit({"mode": None, "refine": None}, {"elevation": 20.0})
    assert (given.mode, given.estimates, given.refine_poses) == ("fixed", False, False)
    held = plan_orbit({"mode": "auto", "refine": None}, {"elevation": 20.0})
    assert held.estimates and held.fixed() == {"elevation": 20.0} and held.starts() == {}
    start = plan_orbit({"mode": None, "refine": True}, {"elevation": 20.0})
    assert start.estimates and start.starts() == {"elevation": 20.0} and start.fixed() == {}
    assert start.refine_poses
    assert not plan_orbit({"mode": "auto", "refine": False}, {}).refine_poses
    with pytest.raises(ReconError, match="--orbit"):
        plan_orbit({"mode": "guess"}, {})


# --------------------------------------------------------------------------- gradients through viewmats
def _gaussians(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    n = 24
    means = (torch.rand(n, 3, generator=gen, dtype=dtype) - 0.5) * 0.8
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen, dtype=dtype), dim=-1)
    scales = torch.full((n, 3), 0.12, dtype=dtype) * (0.5 + torch.rand(n, 3, generator=gen, dtype=dtype))
    opacities = 0.3 + 0.6 * torch.rand(n, generator=gen, dtype=dtype)
    colors = torch.rand(n, 4, 3, generator=gen, dtype=dtype) - 0.5  # SH degree 1: view-dependent
    return means, quats, scales, opacities, colors


def _loss_of_pose(params: torch.Tensor, dtype: torch.dtype, backend: str = "torch") -> torch.Tensor:
    """A weighted sum of a 20x20 render, its camera moved by the twist params[:6], log-focal params[6]."""
    cams = orbit_cameras(1, OrbitConfig(elevation=20.0, fov=40.0), 20, 20)
    device = "cuda" if backend == "gsplat" else "cpu"
    view = torch.tensor(cams.viewmats(), dtype=dtype, device=device)
    K = torch.tensor(cams.K(), dtype=dtype, device=device)[None]
    moved = (twist_matrix(params[:6]) @ view[0])[None]
    scale = torch.exp(params[6])
    K = K * torch.stack([scale, scale, params.new_ones(())])[None, :, None]
    means, quats, scales, opacities, colors = (t.to(device) for t in _gaussians(dtype))
    if backend == "gsplat":
        from gsplat import rasterization

        img, _, _ = rasterization(means, quats, scales, opacities, colors, moved, K, 20, 20, sh_degree=1)
    else:
        img, _, _ = rasterize_torch(means, quats, scales, opacities, colors, moved, K, 20, 20, sh_degree=1)
    weights = torch.linspace(-1.0, 1.0, img.numel(), dtype=dtype, device=device).reshape(img.shape)
    return (img * weights.sin()).sum()


POSE = [0.01, -0.02, 0.015, 0.02, -0.01, 0.03, 0.02]  # a twist and a log focal scale


def test_cpu_rasteriser_pose_and_focal_gradients_match_finite_differences() -> None:
    params = torch.tensor(POSE, dtype=torch.float64, requires_grad=True)
    _loss_of_pose(params, torch.float64).backward()
    eps = 1e-6
    numeric = []
    for k in range(7):
        step = torch.zeros(7, dtype=torch.float64)
        step[k] = eps
        with torch.no_grad():
            plus = _loss_of_pose(params.detach() + step, torch.float64)
            minus = _loss_of_pose(params.detach() - step, torch.float64)
        numeric.append(float((plus - minus) / (2 * eps)))
    np.testing.assert_allclose(params.grad.numpy(), numeric, rtol=1e-4, atol=1e-6)
    assert np.abs(numeric).min() > 1e-3, "every pose direction moves the render"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's kernels need CUDA; no GPU here")
def test_cpu_and_gsplat_pose_gradients_agree() -> None:
    grads = []
    for backend in ("torch", "gsplat"):
        device = "cuda" if backend == "gsplat" else "cpu"
        params = torch.tensor(POSE, dtype=torch.float32, device=device, requires_grad=True)
        _loss_of_pose(params, torch.float32, backend).backward()
        grads.append(params.grad.cpu().numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=2e-2, atol=1e-3)


def test_a_refiner_correction_round_trips_into_cameras() -> None:
    cams = orbit_cameras(4, OrbitConfig(elevation=20.0, fov=40.0), 32, 32)
    refiner = PoseRefiner(4, torch.device("cpu"), 1e-3, 1e-3, 1e-3, 0, 10)
    with torch.no_grad():
        refiner.twists[2][2] = math.radians(1.0)  # camera 2 turned 1 degree about the orbit's axis (+Z)
        refiner.log_focal[0] = math.log(1.1)
    refined = refiner.refined(cams)
    az0, el0, roll0 = orbit_angles(cams.c2w)
    az, el, roll = orbit_angles(refined.c2w)
    assert (az[2] - az0[2]) % 360.0 == pytest.approx(1.0, abs=1e-6)  # azimuth, not own-axis turn
    np.testing.assert_allclose(az[[0, 1, 3]], az0[[0, 1, 3]], atol=1e-6)
    np.testing.assert_allclose(np.r_[el - el0, roll - roll0], 0.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(refined.c2w[:, :3, 3], axis=1), 2.0)  # still on the orbit
    assert refined.fy == pytest.approx(cams.fy * 1.1, rel=1e-6)
    view, K = refiner.camera(2, torch.tensor(cams.viewmats()[2:3], dtype=torch.float32),
                             torch.tensor(cams.K(), dtype=torch.float32)[None])  # fmt: skip
    np.testing.assert_allclose(view[0].detach().numpy(), refined.viewmats()[2], atol=1e-5)
    assert K[0, 0, 0].item() == pytest.approx(refined.fx, rel=1e-5)


# --------------------------------------------------------------------------- CLI
def test_poses_cli_estimates_the_orbit_and_prints_it_in_one_line(tmp_path: Path) -> None:
    import imageio.v3 as iio

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(shared_orbit(36, 96, 30.0, 35.0, -1.0)):
        iio.imwrite(folder / f"{i:05d}.png", frame)
    out = tmp_path / "posed"
    result = runner.invoke(app, ["poses", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("orbit estimate:")]
    assert len(lines) == 1 and "cw" in lines[0]
    meta = json.loads((out / "transforms.json").read_text())
    assert meta["orbit"]["direction"] == "cw" and abs(meta["orbit"]["elevation"] - 30.0) < ESTIMATE_TOLERANCE
    fov = 2 * math.degrees(math.atan(0.5 * meta["h"] / meta["fl_y"]))
    assert abs(fov - 35.0) < ESTIMATE_TOLERANCE
    fixed = runner.invoke(app, ["poses", str(folder), "--out", str(tmp_path / "fixed"), "--orbit", "fixed"])
    assert fixed.exit_code == 0 and "orbit estimate" not in fixed.output
    assert json.loads((tmp_path / "fixed" / "transforms.json").read_text())["orbit"]["elevation"] == 15.0


def test_a_bad_orbit_mode_is_a_one_line_error(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    result = runner.invoke(app, ["poses", str(frames), "--out", str(tmp_path / "o"), "--orbit", "guess"])
    assert result.exit_code == 2
    assert "--orbit" in result.output and len(result.output.strip().splitlines()) == 1


# --------------------------------------------------------------------------- bundle adjustment
JITTER_DEG = 1.0  # the issue's +-1 degree per-frame jitter
# Worst and mean frame error, the mean elevation's error included (the tracks at 128 px put the mean
# elevation 0.3 degree low): measured 0.50-0.58 / 0.27-0.34 (36 frames, seeds 1 and 2); the circle ~1.9.
BUNDLE_MAX_DEG = 0.8
BUNDLE_MEAN_DEG = 0.6
BUNDLE_FOV_DEG = 1.0  # the adjusted lens: measured 0.34 and 0.15 degree off (the estimate's 0.9 and 1.1)


def _per_frame_error(
    azimuth: np.ndarray, elevation: np.ndarray, az: np.ndarray, el: np.ndarray
) -> np.ndarray:
    """Each frame's worst angle error, after removing the mean azimuth offset (a turn of the whole scene
    about the orbit's axis: a gauge). The mean elevation is no gauge: its error counts."""
    d_az = (azimuth - az + 180.0) % 360.0 - 180.0
    return np.maximum(np.abs(d_az - d_az.mean()), np.abs(elevation - el))


def test_bundle_adjustment_recovers_every_frame_of_a_jittered_orbit() -> None:
    from recon.bundle import adjust

    n = 36
    rng = np.random.default_rng(1)
    jitter = rng.uniform(-JITTER_DEG, JITTER_DEG, (2, n))
    frames = tall_orbit(n, 128, 20.0, 40.0, jitter=(jitter[0], jitter[1]))
    az, el = 360.0 / n * np.arange(n) + jitter[0], 20.0 + jitter[1]
    estimate = estimate_orbit(frames, OrbitConfig())
    circle = orbit_angles(orbit_cameras(n, estimate.orbit, 128, 128).c2w)
    assert _per_frame_error(circle[0], circle[1], az, el).max() > BUNDLE_MAX_DEG  # the circle fails the bound
    bundle = adjust(estimate.observed, n, estimate.orbit, fov_uncertainty=estimate.uncertainty["fov"])
    adjusted = orbit_angles(bundle.cameras(128, 128).c2w)
    turned = (adjusted[0] - bundle.azimuth + 180.0) % 360.0 - 180.0
    np.testing.assert_allclose(np.r_[turned, adjusted[1] - bundle.elevation], 0.0, atol=1e-9)  # the cameras
    error = _per_frame_error(bundle.azimuth, bundle.elevation, az, el)
    assert error.max() < BUNDLE_MAX_DEG and error.mean() < BUNDLE_MEAN_DEG, (error.max(), error.mean())
    assert abs(bundle.fov - 40.0) < BUNDLE_FOV_DEG, bundle.line()
    assert bundle.choice == "adjusted" and bundle.held_out_px["adjusted"] < bundle.held_out_px["circle"]
    assert bundle.rms_after_px < bundle.rms_before_px and "\n" not in bundle.line()
    # The gauge: the mean azimuth correction is zero. Given values are held exactly.
    assert abs(np.mean(bundle.azimuth - 360.0 / n * np.arange(n))) < 1e-9
    given = {"elevation": estimate.orbit.elevation, "fov": estimate.orbit.fov}
    held = adjust(estimate.observed, n, estimate.orbit, fixed=given)
    assert held.focal_scale == 1.0 and np.all(held.elevation == estimate.orbit.elevation)


def _uneven_turn_tracks(n: int, back_share: float, seed: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """Tracks of points on a sphere of radius 0.6 filmed on an uneven, drifting turn (the generated-like
    benchmark's speed and drift), 0.2 px noise, 128 px; at the back (the quarter of the turn facing away
    from frame 0) only `back_share` of the tracks go on, as where a generated video's back changes from
    frame to frame. Returns the tracks and the true azimuths and elevations (degrees)."""
    from recon.bundle_solve import project
    from recon.tracks import Tracks

    rng = np.random.default_rng(seed)
    t = np.arange(n) / n
    offset = 6.0 * np.sin(2 * np.pi * t) + 3.0 * np.sin(4 * np.pi * t + 1.0)
    az, el = 360.0 * t + offset - offset[0], 20.0 + 3.0 * (t - 0.5)
    points = rng.normal(size=(1500, 3))
    points *= 0.6 / np.linalg.norm(points, axis=1, keepdims=True)
    length, focal = 8, 64.0 / math.tan(math.radians(20.0))
    frames, uv = np.full((len(points), length), -1), np.zeros((len(points), length, 2))
    a, e = np.radians(az), np.radians(el)
    facing = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], 1)  # towards each camera
    for k, point in enumerate(points):
        start = int(rng.integers(0, n))
        for j, f in enumerate(range(start, min(start + length, n))):
            at_back = (1.0 - math.cos(math.radians(az[f]))) / 2.0 > 0.8
            if point @ facing[f] < 0.12 or (at_back and rng.random() > back_share):
                break  # turned away, or lost in the back's changing detail
            pixel = project(point[None], np.radians(az[f : f + 1]), np.radians(el[f : f + 1]), 2.0, focal,
                            (64.0, 64.0))[0]  # fmt: skip
            frames[k, j], uv[k, j] = f, pixel + rng.normal(0.0, 0.2, 2)
    return Tracks(frames, uv, 128, 128), az, el


def test_the_smooth_path_prior_holds_the_frames_the_tracks_barely_see() -> None:
    """Where few tracks see the back of an uneven turn, the second-difference prior lets the back's frames
    wander together; the low-order smooth path through the whole orbit (`BundleConfig.path_deg`) holds
    them to what the rest of the turn draws."""
    from recon.bundle import BundleConfig, adjust

    n = 36
    orbit = OrbitConfig(elevation=20.0, fov=40.0, radius=2.0)

    def worst(tracks: Any, az: np.ndarray, el: np.ndarray, path_deg: float) -> float:
        bundle = adjust(tracks, n, orbit, cfg=BundleConfig(path_deg=path_deg), fov_uncertainty=1.0)
        assert bundle.choice in ("adjusted", "lens held"), bundle.line()
        return float(_per_frame_error(bundle.azimuth, bundle.elevation, az, el).max())

    seen, az, el = _uneven_turn_tracks(n, 1.0, seed=0)
    assert worst(seen, az, el, BundleConfig.path_deg) < BUNDLE_MAX_DEG  # every frame well seen: no harm
    sparse_back, az, el = _uneven_turn_tracks(n, 0.3, seed=0)
    without, with_path = worst(sparse_back, az, el, 0.0), worst(sparse_back, az, el, BundleConfig.path_deg)
    assert with_path < 0.75 * without, (with_path, without)  # measured: 1.25 against 1.93 degrees
    for bad in ({"path_deg": -0.05}, {"path_harmonics": -1}):
        with pytest.raises(ValueError, match="path_deg and path_harmonics"):
            BundleConfig(**bad).validate()


def test_a_lens_the_tracks_push_to_its_bound_is_solved_again_with_room() -> None:
    """The estimate fits one circle, so an uneven turn can bias its lens by more than its spread allows the
    adjustment to move (3 spreads): where the free lens ends at that bound, it is solved again with the lens
    prior widened (`BundleConfig.lens_widen`), and the held-out check still judges it."""
    from recon.bundle import BundleConfig, adjust

    n = 36
    tracks, az, el = _uneven_turn_tracks(n, 1.0, seed=0)
    biased = OrbitConfig(elevation=20.0, fov=48.0, radius=2.0)  # true fov 40; spread 2 (the floor)
    held = adjust(tracks, n, biased, cfg=BundleConfig(lens_widen=1.0), fov_uncertainty=1.0)
    assert held.fov > 42.0  # stopped at the bound, 6 degrees from the estimate
    widened = adjust(tracks, n, biased, fov_uncertainty=1.0)
    assert widened.choice == "adjusted" and abs(widened.fov - 40.0) < BUNDLE_FOV_DEG, widened.line()
    error = _per_frame_error(widened.azimuth, widened.elevation, az, el)
    assert error.max() < BUNDLE_MAX_DEG, error.max()  # measured: 0.15 degree (3.2 without the widening)


def test_the_solves_subset_covers_the_frames_that_few_tracks_see() -> None:
    """A random subset of the tracks starves the frames few tracks see (the back of a generated orbit):
    the subset takes every track that sees a frame still short of observations first."""
    from recon.bundle import BundleConfig
    from recon.bundle_solve import covering
    from recon.tracks import Tracks

    n, length = 12, 3
    starts = np.r_[np.zeros(300, int), np.full(6, 6)]  # 300 tracks on frames 0-2, 6 on frames 6-8
    frames = starts[:, None] + np.arange(length)
    tracks = Tracks(frames, np.zeros((len(frames), length, 2)), 64, 64)
    order = np.random.default_rng(0).permutation(len(frames))
    cfg = BundleConfig(max_tracks=20, min_frame_observations=5)
    picked = covering(tracks, order, n, cfg)
    assert len(picked) == 20 and len(set(picked.tolist())) == 20
    assert (starts[picked] == 6).sum() == 5  # the sparse frames get their quota, not their random share
    plain = covering(tracks, order, n, BundleConfig(max_tracks=20, min_frame_observations=0))
    np.testing.assert_array_equal(plain, order[:20])  # no quota: the random subset it always was


def test_the_fit_keeps_bundle_adjusted_poses() -> None:
    """A photometric polish of bundle-adjusted poses cost 1-2 dB held-out (benchmarks/RESULTS.md): the fit
    refines poses only where no bundle adjustment placed the frames."""
    from recon.api import OrbitChoice, fit_refines_poses
    from recon.bundle import BundleResult

    plan = plan_orbit({"mode": "auto", "refine": None}, {})
    n, orbit = 8, OrbitConfig(elevation=20.0, fov=40.0)
    az = 360.0 / n * np.arange(n)
    bundle = BundleResult(az, np.full(n, 20.0), 1.0, orbit, 0.2, 0.1, 10, 10, 0.1)
    assert not fit_refines_poses(plan, "gsplat", OrbitChoice(orbit, None, bundle))
    assert fit_refines_poses(plan, "gsplat", OrbitChoice(orbit))  # no tracks: refined with the splats
    assert not fit_refines_poses(plan, "splatfacto", OrbitChoice(orbit))
    no_refine = plan_orbit({"mode": "auto", "refine": False}, {})
    assert not fit_refines_poses(no_refine, "gsplat", OrbitChoice(orbit))


def test_backward_tracks_run_from_the_videos_end_in_its_own_frame_numbers() -> None:
    """Backward tracks (for the bundle adjustment) are the reversed video's tracks, renumbered: each step
    goes one frame back, across the seam from the first frame to the last. The frames are larger than the
    tracking size, so they are downscaled on the way (from a reversed view, too)."""
    from recon.tracks import TRACK_SIDE, TrackingVideo, track

    n = 16
    frames = tall_orbit(n, TRACK_SIDE + 16, 20.0, 40.0)
    masks = frames.mean(-1) < 250
    back = track(TrackingVideo.of(frames, masks), wrap_to=0, start_every=1, backward=True)
    assert len(back) >= 10
    steps = [(b - a) % n for row in back.frames for a, b in zip(row, row[1:], strict=False) if b >= 0]
    assert steps and set(steps) == {n - 1}  # always the previous frame
    reversed_video = track(TrackingVideo.of(frames[::-1], masks[::-1]), wrap_to=0, start_every=1)
    assert np.array_equal(back.uv, reversed_video.uv, equal_nan=True)
    assert np.array_equal(back.frames, np.where(reversed_video.valid, n - 1 - reversed_video.frames, -1))


def test_loose_tracks_extend_the_strict_ones_from_one_pass() -> None:
    """The adjustment's tracks (a looser forward-backward check) are the estimate's tracks kept longer:
    one tracking pass gives both, and a strict track is a prefix of a loose one, position for position."""
    from recon.tracks import FORWARD_BACKWARD_PX, TRACK_SIDE, TrackingVideo, track_pair

    frames = shared_orbit(36, TRACK_SIDE, 20.0, 40.0, 1.0)
    video = TrackingVideo.of(frames, frames.mean(-1) < 250)
    strict, loose = track_pair(video, wrap_to=0, start_every=1, loose_px=1.0)
    assert loose.valid.sum() > strict.valid.sum() >= 1000  # measured 9007 and 7123
    starts = {
        (f, *uv): i for i, (f, uv) in enumerate(zip(loose.frames[:, 0], loose.uv[:, 0].tolist(), strict=True))
    }
    for row, uv in zip(strict.frames, strict.uv, strict=True):
        longer = starts[(row[0], *uv[0].tolist())]
        seen = row >= 0
        assert np.array_equal(loose.frames[longer][seen], row[seen])
        assert np.array_equal(loose.uv[longer][seen], uv[seen])
    same = track_pair(video, wrap_to=0, start_every=1, loose_px=FORWARD_BACKWARD_PX)
    for a, b in zip(same, (strict, strict), strict=True):
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.uv, b.uv, equal_nan=True)


def test_a_noisy_short_orbit_is_estimated_from_the_loose_tracks() -> None:
    """21 frames of 128 px whose texture changes from frame to frame (smooth noise, new in every frame):
    fewer tracks than MIN_TRACKS pass the strict forward-backward check, so the estimate takes the loose
    ones rather than falling back to the preset, says so, and lands nearer the truth than the preset."""
    from scipy import ndimage

    from recon.config import default_orbit
    from recon.orbit_estimate import MIN_TRACKS
    from recon.tracks import FORWARD_BACKWARD_LOOSE_PX

    frames = tall_orbit(21, 128, 20.0, 40.0)
    rng = np.random.default_rng(0)
    noise = np.stack([ndimage.gaussian_filter(rng.normal(0.0, 1.0, frames.shape[1:3]), 2.0) for _ in frames])
    noise *= 16.0 / noise.std()  # grey levels
    on_object = frames.mean(-1, keepdims=True) < 250
    frames = np.clip(frames + noise[..., None] * on_object, 0, 255).astype(np.uint8)
    preset = default_orbit()
    estimate = estimate_orbit(frames, preset)
    assert estimate.forward_backward_px == FORWARD_BACKWARD_LOOSE_PX and estimate.tracks >= MIN_TRACKS
    assert (
        "(loose)" in estimate.line() and estimate.report()["forward_backward_px"] == FORWARD_BACKWARD_LOOSE_PX
    )
    # Measured: elevation 17.8, fov 36.6 (the preset: 15 and 45; the truth: 20 and 40).
    assert abs(estimate.orbit.elevation - 20.0) < abs(preset.elevation - 20.0), estimate.line()
    assert abs(estimate.orbit.fov - 40.0) < abs(preset.fov - 40.0), estimate.line()


# --------------------------------------------------------------------------- smooth, texture-poor scenes
SMOOTH_FRAME_DEG = 2.0  # the bounds for the tree's smooth scenes: every frame, and the lens
SMOOTH_FOV_DEG = 1.0


@pytest.mark.parametrize(
    ("scene", "size", "background"),
    [(synthetic.default_scene, 160, synthetic.BACKGROUND), (synthetic.panda_scene, 256, (0.0, 0.0, 0.0))],
)
def test_the_adjustment_cannot_lead_a_smooth_scene_astray(scene: Any, size: int, background: Any) -> None:
    """Few, noisy tracks (tens on the default scene, 0.5 px at the truth) let an unchecked adjustment explain
    their noise: it moved the default scene's fov 40.9 -> 52.2 and frames 12 degrees off, the panda's fov
    40.2 -> 44.2. The held-out tracks catch it and the estimated circle is kept."""
    from recon.bundle import adjust

    n, elevation, fov = 48, 20.0, 40.0
    c2w = synthetic.orbit_c2w(360.0 / n * np.arange(n), elevation, 2.0)
    frames, _ = synthetic.render(c2w, fov, size, scene(), supersample=2, background=background)
    estimate = estimate_orbit(frames, OrbitConfig())
    bundle = adjust(estimate.observed, n, estimate.orbit, fov_uncertainty=estimate.uncertainty["fov"])
    error = _per_frame_error(
        bundle.azimuth, bundle.elevation, 360.0 / n * np.arange(n), np.full(n, elevation)
    )
    assert error.max() < SMOOTH_FRAME_DEG, (bundle.line(), error.max())
    assert abs(bundle.fov - fov) < SMOOTH_FOV_DEG, bundle.line()
    assert set(bundle.held_out_px) == {"adjusted", "lens held", "circle"}
    neighbour_step = np.diff(bundle.azimuth)
    assert np.abs(neighbour_step - 360.0 / n).max() < SMOOTH_FRAME_DEG  # no jump between neighbours


@pytest.mark.parametrize("start", [(18.0, 45.0), (22.0, 35.0)])
def test_silhouettes_set_the_lens_the_tracks_left_unsure(start: tuple[float, float]) -> None:
    """On a smooth, flat-coloured object the tracks' lens can be degrees off (the smooth scene at 85 frames
    of 256 px: 4.5 wide, spread 2.8). Started there, the silhouettes bring elevation and lens back."""
    from recon.orbit_estimate import OrbitEstimate, lens_from_silhouettes, wants_silhouettes

    n, elevation, fov = 48, 20.0, 40.0
    c2w = synthetic.orbit_c2w(360.0 / n * np.arange(n), elevation, 2.0)
    frames, _ = synthetic.render(c2w, fov, 128, synthetic.default_scene(), supersample=2,
                                 background=synthetic.BACKGROUND)  # fmt: skip
    orbit = OrbitConfig().updated(
        {"elevation": start[0], "fov": start[1], "direction": "ccw", "full_turn": False}
    )
    unsure = OrbitEstimate(orbit, ("elevation", "fov", "direction", "full_turn"),
                           {"elevation": 0.4, "fov": 2.8}, 0.5, 0.5, 0.1, 1.0, 100, 1.0)  # fmt: skip
    assert wants_silhouettes(unsure)
    assert not wants_silhouettes(dataclasses_replace(unsure, uncertainty={"elevation": 0.1, "fov": 0.3}))
    refined = lens_from_silhouettes(unsure, frames)
    assert abs(refined.orbit.fov - fov) < SILHOUETTE_FOV_TOLERANCE, refined.silhouettes
    assert abs(refined.orbit.elevation - elevation) < SILHOUETTE_ELEVATION_TOLERANCE, refined.silhouettes
    assert refined.silhouettes["coherence"]["after"] > refined.silhouettes["coherence"]["before"]
    assert "lens from silhouettes" in refined.line()


SILHOUETTE_FOV_TOLERANCE = 2.0  # degrees: measured 0.8 and 1.4 from starts 5 off either way
SILHOUETTE_ELEVATION_TOLERANCE = 1.0  # measured 0.1 and 0.4 from starts 2 off
