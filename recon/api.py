"""The functions the CLI calls: poses, reconstruct and the bundled demo.

Each writes into a folder the caller gives (the CLI passes a staged temporary folder, so nothing is
half-written on failure) and returns a JSON-able summary.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon.bundle import BundleResult, adjust
from recon.config import Settings, asset_path, read_config, resolve_orbit, resolve_settings
from recon.errors import ReconError
from recon.inputs import OrbitFrames, load_orbit
from recon.options import Export, Fit, Orbit, PosesRequest, ReconstructRequest
from recon.orbit_estimate import OrbitEstimate, estimate_orbit, lens_from_silhouettes, wants_silhouettes
from recon.orbit_mode import OrbitPlan, given_values, plan_orbit, split_orbit_options
from recon.poses import Cameras, OrbitConfig, orbit_cameras, write_transforms

NERFSTUDIO_HINT = "pip install 'droplet3d[nerfstudio]' (in its own environment: it pins gsplat 1.4)"


def demo_video() -> Path:
    """The bundled example orbit (made by scripts/make_demo_orbit.py)."""
    path = asset_path("demo_orbit.mp4")
    if not path.is_file():
        raise ReconError(f"the bundled demo orbit {path} is missing (run scripts/make_demo_orbit.py)")
    return path


def write_poses(
    out: Path, frames: OrbitFrames, orbit: OrbitConfig, cameras: Cameras | None = None
) -> Cameras:
    """Write out/images/00000.png... and out/transforms.json (nerfstudio format) for `frames`.

    The cameras are `orbit`'s circle, or `cameras` (per-frame poses, e.g. bundle-adjusted) when given.
    transforms.json is in the asset frame (`recon.frames`: +Y up, frame 0's side toward +Z), as every
    file `reconstruct` writes, so poses alone line up with a mesh made later. Returns the cameras in
    the fitting world frame (+Z up).
    """
    import imageio.v3 as iio

    from recon.frames import asset_transform, cameras_to_asset, front_direction

    if cameras is None:
        cameras = orbit_cameras(frames.count, orbit, frames.width, frames.height)
    images = Path(out) / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = []
    for i, frame in enumerate(frames.frames):
        name = f"images/{i:05d}.png"
        iio.imwrite(Path(out) / name, frame)
        names.append(name)
    transform = asset_transform(front_direction(cameras))
    write_transforms(Path(out) / "transforms.json", cameras_to_asset(cameras, transform), names, orbit)
    return cameras


@dataclass
class OrbitChoice:
    """The orbit of one reconstruction, and how it was chosen (`choose_orbit`)."""

    orbit: OrbitConfig
    estimate: OrbitEstimate | None = None  # when the frames were asked (`recon.orbit_estimate`)
    bundle: BundleResult | None = None  # every frame's pose adjusted to the tracks (`recon.bundle`)

    def cameras(self, frames: OrbitFrames) -> Cameras:
        """The frames' cameras: bundle-adjusted when they were, else the orbit's circle."""
        if self.bundle is not None:
            return self.bundle.cameras(frames.width, frames.height)
        return orbit_cameras(frames.count, self.orbit, frames.width, frames.height)

    def record(self, plan: OrbitPlan, frames: OrbitFrames) -> dict[str, Any]:
        """report.json's record of how the orbit was chosen (and the estimate's line for the CLI)."""
        from recon.pose_refine import corrections

        record: dict[str, Any] = {"plan": plan.report()}
        if self.estimate is not None:
            record.update(self.estimate.report(), summary=self.estimate.line())
        if self.bundle is not None:
            circle = orbit_cameras(frames.count, self.orbit, frames.width, frames.height)
            record["bundle_adjustment"] = {
                **self.bundle.report(), **corrections(circle, self.cameras(frames)),
                "relative_to": "the estimated orbit's circle",
            }  # fmt: skip
        return record


def choose_orbit(frames: OrbitFrames, orbit: OrbitConfig, plan: OrbitPlan, log: Any = print) -> OrbitChoice:
    """The orbit to pose the frames with: `orbit` as resolved, or estimated from the frames (`plan`), and
    when every frame's pose is refined, each adjusted to the estimate's point tracks."""
    if not plan.estimates:
        return OrbitChoice(orbit)
    estimate = estimate_orbit(frames.frames, orbit, plan.fixed(), plan.starts(), frames.alpha)
    log(estimate.line())
    bundle = None
    if plan.refine_poses and estimate.observed is not None and not estimate.note:
        bundle = adjust(estimate.observed, frames.count, estimate.orbit, plan.fixed(),
                        fov_uncertainty=estimate.uncertainty.get("fov"))  # fmt: skip
        log(bundle.line())
    if wants_silhouettes(estimate) and (bundle is None or bundle.choice == "circle"):
        estimate = lens_from_silhouettes(estimate, frames.frames, plan.fixed(), plan.starts(), frames.alpha)
        log(estimate.line())
        bundle = None if bundle is None else bundle.on(estimate.orbit)
    return OrbitChoice(estimate.orbit, estimate, bundle)


def fit_refines_poses(plan: OrbitPlan, engine: str, choice: OrbitChoice) -> bool:
    """Whether the fit refines every frame's pose photometrically (`recon.pose_refine`): asked for by the
    plan, on gsplat, and only where no bundle adjustment placed the frames already. Measured (auto orbit,
    benchmarks/RESULTS.md; 42 frames, 600 iterations at 64 px): polishing the bundle-adjusted poses, even
    at a tenth of the learning rates, cost 1-2 dB of held-out PSNR against keeping them (elevation 20, fov
    40: 22.30 dB polished, 24.48 kept, 24.31 given the true orbit; the polish moved the fov 40.01 -> 40.34).
    """
    return plan.refine_poses and engine == "gsplat" and choice.bundle is None


def poses(request: PosesRequest, out: Path, log: Any = print) -> dict[str, Any]:
    """Stage 2: frames + orbit (given or estimated, `recon.orbit_mode`) -> out/images/ + transforms.json."""
    config = read_config(request.orbit.config) if request.orbit.config is not None else None
    values, controls = split_orbit_options(request.orbit.given())
    # Check the orbit values before reading a possibly long video.
    resolve_orbit(config, None, values)
    plan_orbit(controls, {})
    frames = load_orbit(request.input_path)
    orbit = resolve_orbit(config, frames.orbit_hints, values)
    plan = plan_orbit(controls, given_values(config, frames.orbit_hints, values))
    choice = choose_orbit(frames, orbit, plan, log)
    write_poses(out, frames, choice.orbit, choice.cameras(frames))
    return {
        "frames": frames.count, "width": frames.width, "height": frames.height,
        "orbit": choice.orbit.to_dict(), "orbit_estimate": choice.record(plan, frames),
    }  # fmt: skip


def reconstruct(
    request: ReconstructRequest, out: Path, progress: bool = True, log: Any = print
) -> dict[str, Any]:
    """Stages 2 + 3: poses, splat fit, exports (splats, mesh.glb/.obj/.ply, preview.mp4, report.json).

    The request's groups hold what the caller gave (`recon.options`); every setting is resolved from
    them, the config file (read once), the input's own record and the preset, here, once.
    """
    from recon.raster import resolve_device

    t0 = time.perf_counter()
    engine, config_file = request.fit.engine, request.orbit.config
    if engine not in ("gsplat", "splatfacto"):
        raise ReconError(f"--engine must be gsplat or splatfacto, got {engine!r}")
    if engine == "splatfacto" and shutil.which("ns-train") is None:
        raise ReconError(f"--engine splatfacto needs nerfstudio's ns-train on PATH: {NERFSTUDIO_HINT}")
    # 1. Check: every setting that can be wrong, resolved once (the config file read once) before the
    #    slow parts.
    device = resolve_device(request.device or "auto")
    default_preset = "quality" if device.type == "cuda" else "fast"
    values, controls = split_orbit_options(request.orbit.given())
    config = read_config(config_file) if config_file is not None else {}
    settings = resolve_settings(
        config, None, values, request.fit.given(request.device), request.fit.preset, default_preset,
        request.export.given(),
    )  # fmt: skip
    plan_orbit(controls, {})
    # 2. Load the frames; their own record of the orbit (a generate folder's generation.json) takes its
    #    place in the orbit's precedence, under the config file and the command line.
    frames = load_orbit(request.input_path)
    settings.orbit = resolve_orbit(config, frames.orbit_hints, values)
    plan = plan_orbit(controls, given_values(config, frames.orbit_hints, values))
    # 3. Pose, then 4. fit and export.
    choice = choose_orbit(frames, settings.orbit, plan, log)
    settings.orbit = choice.orbit
    settings.fit = settings.fit.updated({"refine_poses": fit_refines_poses(plan, engine, choice)})
    cameras = write_poses(out, frames, settings.orbit, choice.cameras(frames))
    t_poses = time.perf_counter() - t0
    record = choice.record(plan, frames)
    if engine == "splatfacto":
        return _splatfacto(out, settings, log, record)
    source = str(request.input_path)
    return _fit_and_export(frames, cameras, settings, out, progress, log, t_poses, t0, source, record)


def _fit_and_export(
    frames: OrbitFrames, cameras: Cameras, settings: Settings, out: Path, progress: bool, log: Any,
    t_poses: float, t0: float, source: str, orbit_choice: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    from recon.asset import write_asset
    from recon.constants import VIEWER_FILE
    from recon.fit import fit
    from recon.frames import asset_transform, cameras_to_asset, front_direction
    from recon.mesh import carve_splats, fuse_surface
    from recon.pose_refine import corrections
    from recon.poses import read_transforms, write_transforms
    from recon.preview import turntable_cameras, write_preview
    from recon.viewer import write_viewer

    log(f"fitting {frames.count} frames ({settings.preset} preset, {settings.fit.iterations} iterations)")
    result = fit(frames.frames, cameras, settings.fit, progress=progress, alpha=frames.alpha)
    t1 = time.perf_counter()
    log(f"fitted {len(result.splats)} gaussians, mean training PSNR {np.mean(result.psnr):.2f} dB; meshing")
    train_side = max(result.cameras.width, result.cameras.height)
    settings.mesh = settings.mesh.following(train_side, settings.mesh_given)
    settings.export = settings.export.following(frames.width * frames.height, settings.export_given)
    surface = fuse_surface(result.splats, result.cameras, result.hull, settings.mesh)
    mesh, fitted = surface.mesh, len(result.splats)
    result.splats = carve_splats(result.splats, surface, settings.mesh)
    # Export: every file in the asset frame (recon.frames), transforms.json rewritten to match.
    transform = asset_transform(front_direction(cameras))
    files, asset = write_asset(
        out, mesh, result.splats, result.cameras, settings.export, transform, frames.frames
    )
    _, names = read_transforms(Path(out) / "transforms.json")
    world_cams = cameras
    if result.initial_cameras is not None:  # the refined poses and focal length, at the frames' size
        orbit_choice["pose_refinement"] = {
            **corrections(result.initial_cameras, result.cameras),
            "relative_to": "the fit's starting cameras (the orbit's circle)",
        }
        world_cams = result.cameras.scaled(frames.width, frames.height)
    write_transforms(
        Path(out) / "transforms.json", cameras_to_asset(world_cams, transform), names, settings.orbit
    )
    t2 = time.perf_counter()
    preview_cams = turntable_cameras(
        settings.orbit, result.cameras, 48, max(96, min(256, result.cameras.width))
    )
    write_preview(Path(out) / "preview.mp4", result.splats, preview_cams)
    t3 = time.perf_counter()
    report = {
        "input": source,
        "source": frames.source,
        "frames": frames.count,
        "frame_size": [frames.width, frames.height],
        "train_size": [result.cameras.width, result.cameras.height],
        "device": str(result.splats.means.device),
        "preset": settings.preset,
        "orbit": settings.orbit.to_dict(),
        "orbit_estimate": orbit_choice,
        "fit": asdict(settings.fit),
        "mesh_settings": {**asdict(settings.mesh), **asdict(settings.export)},
        "background": result.background.report(),
        "hull": {"voxels": int(result.hull.occupancy.sum()), "resolution": settings.fit.hull_resolution},
        "gaussians": len(result.splats),
        "gaussians_fitted": fitted,  # before the carve (mesh carve_voxels) of those outside the surface
        "initial_gaussians": settings.fit.init_points,
        "psnr": {"mean": float(np.mean(result.psnr)), "per_view": [round(p, 3) for p in result.psnr]},
        "ssim": {"mean": float(np.mean(result.ssim)), "per_view": [round(s, 4) for s in result.ssim]},
        # Per-frame exposure learnt with the splats (fit "appearance"; not in the asset), or None.
        "appearance": result.appearance,
        "mesh": {
            "vertices": len(asset.mesh.vertices), "faces": len(asset.mesh.faces),
            "tsdf_faces": len(mesh.faces),
            "texture_size": None if asset.texture is None else int(asset.texture.shape[0]),
        },
        "timings_s": {
            "poses": round(t_poses, 2), "orbit_estimate": orbit_choice.get("seconds", 0.0),
            "fit": round(result.seconds, 2), "mesh": round(t2 - t1, 2),
            "preview": round(t3 - t2, 2), "total": round(time.perf_counter() - t0, 2),
        },
        "files": {**files, "preview": "preview.mp4", "transforms": "transforms.json"},
        "frames_of_reference": {
            "asset frame (every file: mesh.glb, mesh.obj, mesh.ply, splats, transforms.json)": (
                "+Y up, the first frame's side of the object facing +Z, object at the origin, world units"
            ),
            "world_to_asset": transform.round(9).tolist(),
            "preview.mp4": "rendered in the orbit's world frame (+Z up); the same views",
        },
    }  # fmt: skip
    t4 = time.perf_counter()
    viewer = viewer_scene(result.splats, transform, Path(out) / "mesh.glb", world_cams, frames, report)
    write_viewer(Path(out) / VIEWER_FILE, viewer)
    report["files"]["viewer"] = VIEWER_FILE
    report["timings_s"]["viewer"] = round(time.perf_counter() - t4, 2)
    (Path(out) / "report.json").write_text(json.dumps(report, indent=2))
    return report


def viewer_scene(
    splats: Any,
    transform: np.ndarray,
    glb: Path,
    cameras: Cameras,
    frames: OrbitFrames,
    report: dict[str, Any],
) -> Any:
    """What viewer.html shows of a finished asset: its splats, mesh and cameras in the asset frame."""
    from recon.frames import cameras_to_asset, splats_to_asset
    from recon.viewer import ViewerScene, ViewerSplats, report_figures, thumbnails

    s = splats_to_asset(splats, transform)
    arrays = [t.detach().cpu().numpy() for t in (s.means, s.scales, s.quats, s.opacities, s.sh0)]
    return ViewerScene(
        ViewerSplats.from_params(*arrays), glb.read_bytes(), cameras_to_asset(cameras, transform),
        thumbnails(frames.frames), report_figures(report),
    )  # fmt: skip


# nerfstudio's dataparser re-centres, re-orients (to the mean camera "up") and rescales the poses to a
# unit box by default, and ns-export writes the splats in that normalised frame. Turning the three off
# (and keeping scale 1) makes its frame exactly our transforms.json frame: +Z up, object at the origin,
# world units, so splats.ply from either engine lines up with mesh.ply and the cameras.
SPLATFACTO_KEEP_OUR_FRAME = [
    "nerfstudio-data", "--orientation-method", "none", "--center-method", "none",
    "--auto-scale-poses", "False", "--scale-factor", "1.0",
]  # fmt: skip
NERFSTUDIO_SPLAT_FILE = "splat.ply"  # what ns-export gaussian-splat writes


def splatfacto_command(data: Path, runs: Path, iterations: int) -> list[str]:
    """The ns-train call: method options first, then the dataparser and its options (ns-train's order)."""
    return [
        "ns-train", "splatfacto", "--data", str(data), "--output-dir", str(runs),
        "--max-num-iterations", str(iterations), "--viewer.quit-on-train-completion", "True",
        "--vis", "tensorboard", *SPLATFACTO_KEEP_OUR_FRAME,
    ]  # fmt: skip


def _splatfacto(out: Path, settings: Settings, log: Any, orbit_choice: dict[str, Any]) -> dict[str, Any]:
    """Train nerfstudio's splatfacto on our transforms.json and export its splats as splats.ply."""
    runs = Path(out) / "nerfstudio"
    cmd = splatfacto_command(Path(out), runs, settings.fit.iterations)
    log("running " + " ".join(cmd))
    if subprocess.run(cmd, check=False).returncode != 0:
        raise ReconError("ns-train splatfacto failed (its output is above)")
    configs = sorted(runs.rglob("config.yml"))
    if not configs:
        raise ReconError(f"ns-train finished but wrote no config.yml under {runs}")
    export = ["ns-export", "gaussian-splat", "--load-config", str(configs[-1]), "--output-dir", str(out)]
    if subprocess.run(export, check=False).returncode != 0:
        raise ReconError("ns-export gaussian-splat failed (its output is above)")
    exported = Path(out) / NERFSTUDIO_SPLAT_FILE
    if not exported.is_file():
        raise ReconError(f"ns-export finished but wrote no {NERFSTUDIO_SPLAT_FILE} in {out}")
    exported.rename(Path(out) / "splats.ply")
    report = {
        "engine": "splatfacto",
        "orbit": settings.orbit.to_dict(),
        "orbit_estimate": orbit_choice,
        "nerfstudio_config": str(configs[-1]),
        "files": {"splats": "splats.ply", "transforms": "transforms.json"},
        "frames_of_reference": {
            "splats.ply, transforms.json": "asset frame: +Y up, frame 0's side toward +Z, object at the "
            "origin (nerfstudio's re-centring, re-orientation and auto-scaling turned off)",
        },
    }
    (Path(out) / "report.json").write_text(json.dumps(report, indent=2))
    return report


# The fast preset, shortened further: the demo must finish in about a minute on two CPU cores.
DEMO_FIT_OPTIONS: dict[str, Any] = {"iterations": 400, "resolution": 96}  # `Fit` fields


def demo(
    out: Path, device: str = "auto", progress: bool = True, log: Any = print, export: Export | None = None
) -> dict[str, Any]:
    """Reconstruct the bundled orbit with a fast preset (no weights, any device); textured glb by default."""
    # The bundled orbit was ray-cast on the preset orbit, so it is known exactly: no estimate needed.
    fit = Fit(preset="fast", **DEMO_FIT_OPTIONS)
    request = ReconstructRequest(
        demo_video(), Orbit(orbit_mode="fixed", refine=False), fit, export or Export(), device
    )
    return reconstruct(request, out, progress=progress, log=log)
